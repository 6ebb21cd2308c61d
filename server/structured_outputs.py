"""A request's structured-output constraint, from any of the fields clients spell it with, checked at the edge.

OpenAI's ``response_format`` (``json_object``, ``json_schema``), vLLM's ``structured_outputs``
(``json``, ``regex``, ``choice``, ``grammar``, ``json_object``) and its older ``guided_*`` names
all become one ``StructuredOutput`` for the engine. Each is compiled here with xgrammar, the
library both engines decode with (vLLM's default backend), so a constraint that cannot be
enforced is a 400 naming the field, never a 500 from inside an engine, and never an answer
that silently ignores it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from functools import lru_cache
from typing import Any

import xgrammar
from jsonschema import SchemaError
from jsonschema.validators import validator_for

from adapters.engine import StructuredOutput
from server.errors import invalid_request
from server.protocol import SamplingFields

# JSON Schema keywords xgrammar accepts but does not enforce: a schema using one would get output
# that may not validate, so it is refused instead (keywords that only annotate are fine).
UNSUPPORTED_KEYWORDS = frozenset(
    {
        "not",
        "if",
        "then",
        "else",
        "dependentSchemas",
        "dependentRequired",
        "dependencies",
        "uniqueItems",
        "contains",
        "minContains",
        "maxContains",
        "propertyNames",
        "unevaluatedProperties",
        "unevaluatedItems",
        "multipleOf",
        "$dynamicRef",
        "$recursiveRef",
    }
)

# Keywords whose value is a map of names to schemas: the names are data, not keywords.
_SCHEMA_MAPS = frozenset({"properties", "patternProperties", "$defs", "definitions"})


def structured_output(req: SamplingFields) -> StructuredOutput | None:
    """The request's constraint, or None; raises a 400 ``APIError`` naming the field when it is
    set twice or cannot be enforced."""
    found = list(_constraints(req))
    if len(found) > 1:
        first, second = found[0][0], found[1][0]
        raise invalid_request(
            f"'{second}' sets a structured-output constraint, and so does '{first}': send only one.", param=second
        )
    if not found:
        return None
    param, constraint = found[0]
    check_constraint(param, constraint)
    return constraint


def _constraints(req: SamplingFields) -> Iterator[tuple[str, StructuredOutput]]:
    fmt = req.response_format
    if fmt is not None and fmt.type == "json_object":
        yield "response_format", StructuredOutput(json_object=True)
    if fmt is not None and fmt.type == "json_schema":
        if fmt.json_schema is None:
            raise invalid_request(
                "response_format of type 'json_schema' needs 'json_schema'.", param="response_format.json_schema"
            )
        yield "response_format", StructuredOutput(json=_schema_text(fmt.json_schema.json_schema))
    so = req.structured_outputs
    if so is not None:
        yield from _vllm_fields(
            "structured_outputs.", so.json_, so.regex, so.choice, so.grammar, json_object=bool(so.json_object)
        )
    yield from _vllm_fields("guided_", req.guided_json, req.guided_regex, req.guided_choice, req.guided_grammar)


def _vllm_fields(
    prefix: str,
    schema: dict[str, Any] | str | None,
    regex: str | None,
    choice: list[str] | None,
    grammar: str | None,
    *,
    json_object: bool = False,
) -> Iterator[tuple[str, StructuredOutput]]:
    if schema is not None:
        yield f"{prefix}json", StructuredOutput(json=_schema_text(schema))
    if regex is not None:
        yield f"{prefix}regex", StructuredOutput(regex=regex)
    if choice is not None:
        yield f"{prefix}choice", StructuredOutput(choice=tuple(choice))
    if grammar is not None:
        yield f"{prefix}grammar", StructuredOutput(grammar=grammar)
    if json_object:
        yield f"{prefix}json_object", StructuredOutput(json_object=True)


def _schema_text(schema: dict[str, Any] | str) -> str:
    """A schema as compact JSON text, its keys in the order given: xgrammar has the model write properties
    in that order, as OpenAI does; equal schemas share one compiled grammar in the caches."""
    if isinstance(schema, str):
        try:
            parsed = json.loads(schema)
        except ValueError:
            return schema  # refused by the check, which names the field
        return json.dumps(parsed, separators=(",", ":"))
    return json.dumps(schema, separators=(",", ":"))


def check_constraint(param: str, constraint: StructuredOutput) -> None:
    """Raise a 400 naming ``param`` when the constraint cannot be enforced."""
    problem = _problem(constraint)
    if problem is not None:
        raise invalid_request(f"'{param}' cannot be enforced: {problem}", param=param)


@lru_cache(maxsize=1024)
def _problem(constraint: StructuredOutput) -> str | None:
    """Why the constraint cannot be enforced, or None; cached, as clients repeat their schemas."""
    if constraint.choice is not None:
        return "choice needs at least one string" if not constraint.choice else None
    if constraint.json is not None:
        return _schema_problem(constraint.json)
    compile_: Callable[[], object]
    if constraint.regex is not None:
        regex = constraint.regex
        compile_ = lambda: xgrammar.Grammar.from_regex(regex)  # noqa: E731
    elif constraint.grammar is not None:
        grammar = constraint.grammar
        compile_ = lambda: xgrammar.Grammar.from_ebnf(grammar)  # noqa: E731
    else:
        return None
    return _compile_problem(compile_)


def _schema_problem(text: str) -> str | None:
    try:
        schema = json.loads(text)
    except ValueError as exc:
        return f"the schema is not JSON ({exc})"
    if not isinstance(schema, dict):
        return "a JSON schema must be an object"
    try:
        validator_for(schema).check_schema(schema)
    except SchemaError as exc:
        return f"the schema is invalid: {exc.message}"
    unsupported = sorted(set(_keywords(schema)) & UNSUPPORTED_KEYWORDS)
    if unsupported:
        return f"the schema uses {', '.join(unsupported)}, which structured decoding does not support"
    return _compile_problem(lambda: xgrammar.Grammar.from_json_schema(text, strict_mode=False))


def _keywords(schema: Any) -> Iterator[str]:
    """Every keyword used anywhere in the schema (property names are not keywords)."""
    if isinstance(schema, list):
        for item in schema:
            yield from _keywords(item)
    elif isinstance(schema, dict):
        for key, value in schema.items():
            yield key
            if key in _SCHEMA_MAPS and isinstance(value, dict):
                for sub in value.values():
                    yield from _keywords(sub)
            elif key not in ("enum", "const", "default", "examples"):
                yield from _keywords(value)


def _compile_problem(compile_: Callable[[], object]) -> str | None:
    try:
        compile_()
    except Exception as exc:  # xgrammar reports every problem as a RuntimeError
        # Its messages start with a time and a C++ source position; the rest is for the user.
        return re.sub(r"^\[[^\]]*\]\s*\S+:\d+:\s*", "", str(exc).strip())
    return None
