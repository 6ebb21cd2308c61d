"""A request's structured-output constraint, from any of the fields clients spell it with, checked at the edge.

OpenAI's ``response_format`` (``json_object``, ``json_schema``), vLLM's ``structured_outputs``
(``json``, ``regex``, ``choice``, ``grammar``, ``json_object``) and its older ``guided_*`` names
all become one ``Constraint`` for the engine, named by its field. Its size was bounded while the
request was parsed (``server/constraint_limits.py``); ``enforceable`` then compiles it with
xgrammar, the library both engines decode with (vLLM's default backend), in a worker process
under the server's time budget. So a constraint that cannot be enforced, or that would take
longer than the budget to compile, is a 400 naming the field, never a 500 from inside an engine,
never a core kept busy, and never an answer that silently ignores it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from adapters.engine import StructuredOutput
from server.protocol.errors import APIError, invalid_request, retry_after
from server.protocol.sampling import SamplingFields
from server.text.grammar_workers import CompileQueueFull, CompileTimeout, GrammarWorkers


@dataclass(frozen=True)
class Constraint:
    """A constraint and the request field that set it (``param`` of its 400s)."""

    param: str
    output: StructuredOutput


def requested_constraint(req: SamplingFields) -> Constraint | None:
    """The request's constraint, or None; raises a 400 ``APIError`` naming the field when it is set twice."""
    found = list(_constraints(req))
    if len(found) > 1:
        first, second = found[0].param, found[1].param
        raise invalid_request(
            f"'{second}' sets a structured-output constraint, and so does '{first}': send only one.", param=second
        )
    return found[0] if found else None


async def enforceable(constraint: Constraint, workers: GrammarWorkers) -> StructuredOutput:
    """The constraint for the engine, once it has compiled within the budget; a 400 ``APIError``
    naming its field otherwise. Cancelling the wait (the client left) stops the compile."""
    try:
        problem = await workers.problem(constraint.output)
    except CompileQueueFull:
        raise APIError(
            429,
            f"{workers.max_waiting} structured-output constraints already wait to be compiled "
            "(--grammar-compile-queue). Try again shortly.",
            param=constraint.param,
            code="server_overloaded",
            headers=retry_after(workers.timeout_s),
        ) from None
    except CompileTimeout:
        raise invalid_request(
            f"'{constraint.param}' did not compile into a grammar within {workers.timeout_s:g} s, this server's "
            "limit (--grammar-compile-timeout): simplify it (fewer or shorter nested repetitions and alternatives).",
            param=constraint.param,
        ) from None
    if problem is not None:
        raise invalid_request(f"'{constraint.param}' cannot be enforced: {problem}", param=constraint.param)
    return constraint.output


def _constraints(req: SamplingFields) -> Iterator[Constraint]:
    fmt = req.response_format
    if fmt is not None and fmt.type == "json_object":
        yield Constraint("response_format", StructuredOutput(json_object=True))
    if fmt is not None and fmt.type == "json_schema":
        if fmt.json_schema is None:
            raise invalid_request(
                "response_format of type 'json_schema' needs 'json_schema'.", param="response_format.json_schema"
            )
        yield Constraint("response_format", StructuredOutput(json=schema_text(fmt.json_schema.json_schema)))
    so = req.structured_outputs
    if so is not None:
        yield from _vllm_fields(
            "structured_outputs.", so.json_, so.regex, so.choice, so.grammar, json_object=bool(so.json_object)
        )
    yield from _vllm_fields("guided_", req.guided_json, req.guided_regex, req.guided_choice, req.guided_grammar)


def _vllm_fields(
    prefix: str,
    schema: dict[str, Any] | None,
    regex: str | None,
    choice: list[str] | None,
    grammar: str | None,
    *,
    json_object: bool = False,
) -> Iterator[Constraint]:
    if schema is not None:
        yield Constraint(f"{prefix}json", StructuredOutput(json=schema_text(schema)))
    if regex is not None:
        yield Constraint(f"{prefix}regex", StructuredOutput(regex=regex))
    if choice is not None:
        yield Constraint(f"{prefix}choice", StructuredOutput(choice=tuple(choice)))
    if grammar is not None:
        yield Constraint(f"{prefix}grammar", StructuredOutput(grammar=grammar))
    if json_object:
        yield Constraint(f"{prefix}json_object", StructuredOutput(json_object=True))


def schema_text(schema: dict[str, Any]) -> str:
    """A schema as compact JSON text, its keys in the order given: xgrammar has the model write properties
    in that order, as OpenAI does; equal schemas share one compiled grammar in the caches."""
    return json.dumps(schema, separators=(",", ":"))
