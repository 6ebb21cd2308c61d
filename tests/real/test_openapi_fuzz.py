"""Property: whatever a client sends, the real server answers as its own ``/openapi.json`` says.

Schemathesis reads ise's schema from the running server and sends each operation requests it derives
from it: valid ones (positive: ``MAX_EXAMPLES_POSITIVE`` Hypothesis draws per operation) and ones
that break the schema in one place (negative: schemathesis's deterministic boundary and type cases,
its coverage phase, then ``MAX_EXAMPLES_NEGATIVE`` draws per operation that takes input). Every
answer, errors included, must be documented: no 5xx, a documented status code and content type, a
body that matches the documented schema (for event streams, each event's ``data`` a documented chunk
or error, and ``[DONE]`` last), and every negative request refused with a 4xx. Afterwards the
server must still answer a plain request.

Why, next to ``tests/fast/test_openapi.py``: that test pins what the schema says; this one checks
that the real server does what it says, over inputs nobody wrote by hand, so the schema and the
server stay honest with each other as either changes.

Bounded in time for CI: each generated request is rewritten before it is sent (``bound_cost``) to
name the served model and ask for at most ``MAX_TOKENS`` tokens, ``MAX_N`` choices and
``MAX_PROMPTS`` prompts. Only values the schema accepts are rewritten, to other values it accepts,
so a negative case stays negative (schemathesis revalidates an edited case, and the checks use its
verdict). The positive coverage phase (~100 engine requests per completions route) is left out:
the sampling edges it would try are ``test_sampling_fuzz.py``'s. Hypothesis runs derandomized, with
no example database and no deadline, so CI repeats the same cases.

The cases sent per operation, mode and phase, and the status codes they got, are printed (``-s``)
and recorded as test-suite properties (``record_testsuite_property``: ``--junitxml`` reports carry
them) by the last test.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any, TypeGuard

import httpx
import jsonschema_rs
import pytest
import schemathesis
from schemathesis import Case, CheckContext, CheckFunction, Response
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.filters import HasAPIOperation
from schemathesis.openapi.checks import JsonSchemaError
from schemathesis.schemas import BaseSchema
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

from tests.helpers import sse_payloads, sse_typed_events
from tests.real.helpers import ServerHandle

MAX_EXAMPLES_POSITIVE = 30  # Hypothesis draws per operation
MAX_EXAMPLES_NEGATIVE = 40  # per operation that takes input, after the coverage phase's cases
MAX_TOKENS = 4
MAX_N = 2
MAX_PROMPTS = 2
REQUEST_TIMEOUT_S = 120

AnyCase = Case[Any]
# Operation label, generation mode, phase, status code -> cases sent.
CaseCounts = Counter[tuple[str, str, str, int]]


# A stream of typed events ends with its API's last event (Anthropic's, or OpenAI's Responses').
TYPED_STREAM_ENDS = {
    "/v1/messages": {"message_stop", "error"},
    "/v1/responses": {"response.completed", "response.incomplete", "response.failed"},
}


def event_stream_ends_with_done(ctx: CheckContext, response: Response, case: AnyCase) -> bool | None:
    """A streamed completion's events end with ``data: [DONE]``, and no earlier event is ``[DONE]``;
    a stream of typed events ends with its API's last event.

    Schemathesis checks each event on its own against the route's ``itemSchema`` (``data`` a JSON
    string matching its ``contentSchema``, a chunk or an error, or ``[DONE]``); the order, which
    the route's description gives, is checked here.
    """
    content_type = (response.headers.get("content-type") or [""])[0]
    if response.status_code != 200 or not content_type.startswith("text/event-stream"):
        return None
    if case.path in TYPED_STREAM_ENDS:
        typed = sse_typed_events(response.text)
        assert typed and typed[-1][0] in TYPED_STREAM_ENDS[case.path], f"The stream ends with {typed[-1:]}"
        return True
    events = sse_payloads(response.text)
    assert events and events[-1] == "[DONE]", f"The stream does not end with `data: [DONE]`: {events[-1:]}"
    assert "[DONE]" not in events[:-1], f"`data: [DONE]` before the stream's end, at event {events.index('[DONE]')}"
    return True


CHECKS: list[CheckFunction] = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    event_stream_ends_with_done,
    negative_data_rejection,
]


def _config(root_url: str, mode: str, max_examples: int, *, coverage: bool) -> schemathesis.Config:
    return schemathesis.Config.from_dict(
        {
            "base-url": root_url,
            "request-timeout": REQUEST_TIMEOUT_S,
            # Hypothesis settings: a fixed number of draws, derandomized, no deadline (schemathesis sets
            # deadline=None itself), no example database to replay earlier runs' cases from.
            "generation": {"mode": mode, "max-examples": max_examples, "deterministic": True, "database": "none"},
            # An invalid body may also be refused for its size (413): Anthropic's Messages route nests
            # content blocks in messages, so a list past its maxItems can pass the body limit first.
            "checks": {
                "negative_data_rejection": {
                    "expected-statuses": [400, 401, 403, 404, 405, 406, 409, 413, 415, 422, 428, 429, "5xx"]
                }
            },
            "phases": {
                "examples": {"enabled": False},  # ise's schema has none
                "coverage": {"enabled": coverage},
                "fuzzing": {"enabled": True},
                "stateful": {"enabled": False},
            },
        }
    )


def _load(server: ServerHandle, config: schemathesis.Config) -> BaseSchema:
    return schemathesis.openapi.from_url(f"{server.root_url}/openapi.json", config=config)


@pytest.fixture(scope="module")
def positive_schema(server: ServerHandle) -> BaseSchema:
    return _load(server, _config(server.root_url, "positive", MAX_EXAMPLES_POSITIVE, coverage=False))


@pytest.fixture(scope="module")
def negative_schema(server: ServerHandle) -> BaseSchema:
    return _load(server, _config(server.root_url, "negative", MAX_EXAMPLES_NEGATIVE, coverage=True))


@pytest.fixture(scope="module")
def case_counts() -> CaseCounts:
    return Counter()


def _is_count(value: object, minimum: int) -> TypeGuard[int | float]:
    """Whether ``value`` is an integer (JSON Schema counts ``2.0`` as one, and ``true`` as none) >= minimum."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return float(value).is_integer() and value >= minimum


def _is_token_ids(value: object) -> bool:
    return isinstance(value, list) and all(isinstance(t, int) and not isinstance(t, bool) for t in value)


def _request_schema(case: AnyCase) -> tuple[dict[str, Any], dict[str, Any]]:
    """The operation's JSON request body schema, and the components its references point into."""
    spec: dict[str, Any] = case.operation.schema.raw_schema
    operation = spec["paths"][case.operation.path][case.operation.method.lower()]
    ref: str = operation["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    return spec["components"]["schemas"][ref.rsplit("/", 1)[-1]], spec["components"]


def bound_cost(case: AnyCase, model: str) -> None:
    """Rewrite a completion request to name the served model and ask for little work.

    A field changes only where its value (or its absence) is valid, to another valid value, as the
    field's own schema says, so the request stays positive or negative as generated.
    """
    body = case.body
    if not isinstance(body, dict):
        return
    schema, components = _request_schema(case)
    properties: dict[str, Any] = schema.get("properties", {})
    required: list[str] = schema.get("required", [])

    def rewrite(field: str, new: Any) -> None:
        if field not in properties or (field not in body and field in required):
            return
        validator = jsonschema_rs.validator_for({"components": components, **properties[field]})
        if (field not in body or validator.is_valid(body[field])) and validator.is_valid(new):
            body[field] = new

    rewrite("model", model)
    if body.get("max_tokens") is None:  # chat's null or absent means up to the context window
        rewrite("max_tokens", MAX_TOKENS)
    for field in ("max_tokens", "max_completion_tokens", "min_tokens"):
        value = body.get(field)
        if _is_count(value, 0):
            rewrite(field, min(int(value), MAX_TOKENS))
    n = body.get("n")
    if _is_count(n, 1):
        rewrite("n", min(int(n), MAX_N))
        if body.get("best_of") == n:  # completions refuse a best_of other than n
            rewrite("best_of", body["n"])
    # Several prompts are several requests; one list of token ids is one prompt. An empty prompt is
    # refused (400) before the engine, so where the schema allows one, it gets a word instead.
    if body.get("prompt") == "":
        rewrite("prompt", "Hi")
    prompt = body.get("prompt")
    if isinstance(prompt, list) and prompt and not _is_token_ids(prompt):
        rewrite("prompt", prompt[:MAX_PROMPTS])


def _run(case: AnyCase, server: ServerHandle, case_counts: CaseCounts) -> None:
    meta = case.meta
    mode = meta.generation.mode.value if meta is not None else "?"
    phase = meta.phase.name.value if meta is not None else "?"
    bound_cost(case, server.model)
    response = case.call()
    case_counts[(case.operation.label, mode, phase, response.status_code)] += 1
    case.validate_response(response, checks=CHECKS)


def _takes_input(ctx: HasAPIOperation) -> bool:
    """Whether the operation has a body, the only input whose schema can be broken (filters see raw definitions).

    ``/v1/models/{model}``'s one parameter is any string, so no negative case exists for it.
    """
    definition: dict[str, Any] = ctx.operation.definition.raw
    return "requestBody" in definition


@pytest.fixture(autouse=True)
def _node_id_for_schemathesis(request: pytest.FixtureRequest) -> None:
    """Give the test item the ``_nodeid`` attribute schemathesis's lazy schemas read and write.

    schemathesis 4.32's ``from_fixture`` tests rename the item per operation through ``Node._nodeid``,
    which pytest 9 replaced with ``Node._id`` (``nodeid`` is now a read-only property); without the
    attribute each such test fails with an AttributeError before sending a request. Writing it has
    no effect on pytest 9's reports, which name each operation as a subtest anyway.
    """
    request.node._nodeid = request.node.nodeid


positive = schemathesis.pytest.from_fixture("positive_schema")
negative = schemathesis.pytest.from_fixture("negative_schema").include(_takes_input)


@positive.parametrize()
def test_valid_requests_get_documented_answers(case: AnyCase, server: ServerHandle, case_counts: CaseCounts) -> None:
    _run(case, server, case_counts)


@negative.parametrize()
def test_invalid_requests_get_documented_refusals(case: AnyCase, server: ServerHandle, case_counts: CaseCounts) -> None:
    _run(case, server, case_counts)


def test_the_checks_catch_answers_that_break_the_schema(server: ServerHandle) -> None:
    """Against a schema that demands a field ise never sends, the checks fail, whole and streamed.

    Keeps this file from passing by checking nothing (a schemathesis upgrade that stopped
    validating event streams' data against their ``contentSchema``, say).
    """
    spec = httpx.get(f"{server.root_url}/openapi.json", timeout=10).json()
    for name in ("ChatCompletion", "ChatCompletionChunk"):
        spec["components"]["schemas"][name]["required"].append("never_sent")
    config = _config(server.root_url, "positive", 1, coverage=False)
    operation = schemathesis.openapi.from_dict(spec, config=config)["/v1/chat/completions"]["POST"]
    for stream in (False, True):
        body: dict[str, Any] = {"model": server.model, "messages": [{"role": "user", "content": "Hi"}]}
        body |= {"max_tokens": 2, "stream": stream}
        case = operation.Case(body=body, media_type="application/json")
        response = case.call()
        assert response.status_code == 200, response.text
        with pytest.raises(FailureGroup) as caught:
            case.validate_response(response, checks=CHECKS)
        assert [type(failure) for failure in caught.value.exceptions] == [JsonSchemaError], caught.value.exceptions


def summary(case_counts: CaseCounts) -> dict[tuple[str, str], tuple[Counter[str], Counter[int]]]:
    """Per operation and mode: cases sent per phase, and the status codes they got."""
    table: dict[tuple[str, str], tuple[Counter[str], Counter[int]]] = {}
    for (operation, mode, phase, status), count in sorted(case_counts.items()):
        phases, statuses = table.setdefault((operation, mode), (Counter(), Counter()))
        phases[phase] += count
        statuses[status] += count
    return table


def test_server_answers_after_the_fuzzing(
    server: ServerHandle, case_counts: CaseCounts, record_testsuite_property: Callable[[str, object], None]
) -> None:
    """A plain request still succeeds; the cases each operation got are printed and recorded."""
    lines = [f"{'operation':<28} {'mode':<9} {'coverage':>8} {'fuzzing':>8}  status codes"]
    for (operation, mode), (phases, statuses) in summary(case_counts).items():
        codes = " ".join(f"{status}x{count}" for status, count in sorted(statuses.items()))
        lines.append(f"{operation:<28} {mode:<9} {phases['coverage']:>8} {phases['fuzzing']:>8}  {codes}")
        record_testsuite_property(f"schemathesis_cases[{operation} {mode}]", phases.total())
    lines.append(f"{'total':<38} {sum(case_counts.values()):>17}")
    print("\nschemathesis cases per operation and mode:\n" + "\n".join(lines))
    body = {"model": server.model, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": MAX_TOKENS}
    response = httpx.post(f"{server.base_url}/chat/completions", json=body, timeout=60)
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"]
    assert httpx.get(f"{server.root_url}/health", timeout=10).status_code == 200
