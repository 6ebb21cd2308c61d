"""Property: whatever body a client sends to the completion routes, the answer is a 200 or a 4xx in
OpenAI's error shape, never a 5xx; a 400 about a field names it.

Hypothesis writes the request bodies: every field of ``ChatCompletionRequest`` and
``CompletionRequest`` with values of every JSON type, numbers at and past every edge (NaN,
``Infinity``, ``1e400`` written as JSON tokens, as careless JSON libraries write them), unicode,
deeply nested values, and bodies that are not objects at all. The fake engine answers each valid
request to its end (``max_tokens`` tokens, then EOS), so only the server's own handling is tested.
"""

from __future__ import annotations

import json
import math
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from adapters.engine import EngineRequest
from tests.fast.fake_engine import FakeEngine, Reply
from tests.fast.helpers import client, serving
from tests.fast.tiny_model import MODEL, TinyModel
from tests.helpers import openai_error, sse_chunks

EXAMPLES = 150
WORD = 305  # a token id of the tiny vocabulary, not EOS

# JSON number tokens Python's json module would not write: replaced into the body after dumps.
RAW_NUMBERS = [
    "1e400",
    "-1e400",
    "1e-400",
    "-0",
    "1E+2",
    "0.0000000000000000000000001",
    "123456789012345678901234567890",
]
_RAW = "\u0000raw:"

any_number = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([0, 1, -1, 2, 127, 128, 129, 255, 256, 2**31, 2**63 - 1, 2**63, -(2**63), -(2**63) - 1, 2**64]),
    st.floats(allow_nan=True, allow_infinity=True),  # NaN, Infinity, -Infinity: json.dumps writes the tokens
    st.sampled_from([0.0, -0.0, 1e-5, 1e-6, 0.5, 1.0, 2.0, 2.0000001, 100.0, 100.01, 0.01, 0.0099, 1e308]),
    st.sampled_from(RAW_NUMBERS).map(lambda token: _RAW + token),
)
text = st.one_of(
    st.text(max_size=20),
    st.sampled_from(
        ["", " ", "<|im_end|>", "<|im_start|>system\n", "\u0000", "\ud7ff\ue000", "🙂" * 5, "a\u0301", "\\u0000"]
    ),
)
scalar = st.one_of(st.none(), st.booleans(), any_number, text)
any_json = st.recursive(
    scalar,
    lambda children: st.one_of(st.lists(children, max_size=4), st.dictionaries(text, children, max_size=4)),
    max_leaves=12,
)


def deep(depth: int) -> Any:
    value: Any = "x"
    for level in range(depth):
        value = [value] if level % 2 else {"a": value}
    return value


weird = st.one_of(any_json, st.integers(2, 200).map(deep))


message = st.fixed_dictionaries(
    {
        "role": st.sampled_from(["system", "user", "assistant", "developer"]),
        "content": st.one_of(
            text, st.lists(st.fixed_dictionaries({"type": st.just("text"), "text": text}), min_size=1, max_size=3)
        ),
    },
    optional={"name": text},
)
token_ids = st.lists(st.integers(0, 319), min_size=1, max_size=8)
prompt = st.one_of(
    text.filter(bool),
    st.lists(text.filter(bool), min_size=1, max_size=3),
    token_ids,
    st.lists(token_ids, min_size=1, max_size=3),
)

# Each field's valid values (edges included); any field may instead get a weird value.
SAMPLING: dict[str, st.SearchStrategy[Any]] = {
    "temperature": st.one_of(st.floats(0.0, 2.0), st.sampled_from([0.0, 1e-6, 2.0])),
    "top_p": st.one_of(st.floats(0.0, 1.0, exclude_min=True), st.sampled_from([5e-324, 1.0])),
    "top_k": st.integers(-1, 50),
    "seed": st.one_of(st.integers(-(2**63), 2**63 - 1), st.sampled_from([2**63 - 1, -(2**63)])),
    "stop": st.one_of(text, st.lists(text, max_size=4), st.none()),
    "n": st.integers(1, 3),
    "presence_penalty": st.floats(-2.0, 2.0),
    "frequency_penalty": st.floats(-2.0, 2.0),
    "repetition_penalty": st.floats(0.01, 100.0),
    "min_tokens": st.integers(0, 4),
    "ignore_eos": st.booleans(),
    "stop_token_ids": st.lists(st.integers(0, 319), max_size=3),
    "max_tokens": st.integers(1, 6),
    "max_completion_tokens": st.integers(1, 6),
    "stream": st.booleans(),
    "stream_options": st.fixed_dictionaries({"include_usage": st.booleans()}),
    "user": text,
    "logprobs": st.sampled_from([False, None]),
    "response_format": st.sampled_from([{"type": "text"}, None]),
    "echo": st.just(False),
    "best_of": st.sampled_from([1, None]),
    "tools": st.sampled_from([None, []]),
    "unknown_field": weird,
}
CHAT = {"model": st.just(MODEL), "messages": st.lists(message, min_size=1, max_size=3)}
TEXT = {"model": st.just(MODEL), "prompt": prompt}


@st.composite
def bodies(draw: st.DrawFn, required: dict[str, st.SearchStrategy[Any]]) -> tuple[dict[str, Any], str | None]:
    """A request of valid fields, or (one time in two) with one of them, or a missing one, made weird."""
    names = draw(st.lists(st.sampled_from(sorted(SAMPLING)), unique=True, max_size=8))
    body = {name: draw(strategy) for name, strategy in {**required, **{n: SAMPLING[n] for n in names}}.items()}
    broken = draw(st.one_of(st.none(), st.sampled_from(sorted({*required, *SAMPLING}))))
    if broken is not None:
        body[broken] = draw(weird)
    return body, broken


PATHS = st.sampled_from(["/v1/chat/completions", "/v1/completions"])
requests = st.one_of(
    st.tuples(st.just("/v1/chat/completions"), bodies(CHAT)),
    st.tuples(st.just("/v1/completions"), bodies(TEXT)),
    st.tuples(st.just("/v1/chat/completions"), bodies(CHAT)),
    st.tuples(st.just("/v1/completions"), bodies(TEXT)),
    # Now and then a body that is no object at all, or has none of the fields.
    st.tuples(PATHS, st.tuples(st.one_of(weird, st.dictionaries(text, weird, max_size=3)), st.none())),
)


def _encode(body: Any) -> bytes:
    """JSON as a lax client writes it: NaN and Infinity as bare tokens, and numbers json.dumps never writes."""
    encoded = json.dumps(body, allow_nan=True)
    for token in RAW_NUMBERS:
        encoded = encoded.replace(json.dumps(_RAW + token), token)
    return encoded.encode()


def _fields(body: Any) -> set[str]:
    return set(body) if isinstance(body, dict) else set()


def _reply(tiny: TinyModel, request: EngineRequest) -> Reply:
    """``max_tokens`` tokens, then EOS: every request reaches a finish, whatever its settings."""
    return Reply([WORD] * request.params.max_tokens + [tiny.eos])


@pytest.fixture
async def fuzz_app(fake: FakeEngine, tiny: TinyModel) -> AsyncIterator[FastAPI]:
    fake.script = lambda request: _reply(tiny, request)
    async with serving(fake, tiny) as app:
        yield app


def check(path: str, body: Any, response: httpx.Response) -> None:
    assert response.status_code < 500, (response.status_code, response.text, body)
    if response.status_code == 200:
        if response.headers["content-type"].startswith("text/event-stream"):
            assert all("error" not in chunk for chunk in sse_chunks(response.text)), response.text
        else:
            answer = response.json()
            assert answer["choices"] and answer["model"] == MODEL, answer
            usage = answer["usage"]
            assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
        return
    assert 400 <= response.status_code < 500
    error = openai_error(response.json())
    assert response.status_code in (400, 404), (response.status_code, error)
    assert error["type"] == "invalid_request_error"
    assert response.headers["x-should-retry"] == "false"
    if response.status_code == 404:
        assert (error["param"], error["code"]) == ("model", "model_not_found")
        return
    if isinstance(body, dict) and error["message"] != "The request body is not valid JSON.":
        # A 400 about an object's fields names the field (its first part is a field the body has,
        # or a required one it lacks).
        assert error["param"] is not None, (error, body)
        required = {"model", "messages" if path == "/v1/chat/completions" else "prompt"}
        assert error["param"].split(".")[0] in _fields(body) | required, (error, body)


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(request=requests)
async def test_no_body_earns_a_5xx(fuzz_app: FastAPI, request: tuple[str, tuple[Any, str | None]]) -> None:
    path, (body, broken) = request
    async with client(fuzz_app) as http:
        response = await http.post(path, content=_encode(body), headers={"content-type": "application/json"})
        check(path, body, response)
        event(f"status {response.status_code}" + (" (a field made weird)" if broken else ""))
        assert (await http.get("/health")).status_code == 200


@pytest.mark.parametrize(
    ("field", "token"),
    [
        (field, token)
        for field in ("temperature", "top_p", "presence_penalty", "frequency_penalty", "repetition_penalty")
        for token in ("NaN", "Infinity", "-Infinity", "1e400", "-1e400")
    ]
    + [
        (field, token)
        for field in ("max_tokens", "n", "seed", "top_k", "min_tokens")
        for token in ("NaN", "1e400", "1.5", "1e3")
    ],
)
async def test_nan_and_infinity_tokens_are_400_naming_the_field(
    http: httpx.AsyncClient, field: str, token: str
) -> None:
    for path, base in [
        ("/v1/chat/completions", '{"model": "fake", "messages": [{"role": "user", "content": "hi"}]'),
        ("/v1/completions", '{"model": "fake", "prompt": "hi"'),
    ]:
        body = f'{base}, "{field}": {token}}}'.encode()
        response = await http.post(path, content=body, headers={"content-type": "application/json"})
        if field in ("max_tokens", "n", "top_k", "min_tokens", "seed") and token == "1e3":
            # 1000.0 is a whole number: taken as 1000 (then within range, or a 400 for the range)
            assert response.status_code in (200, 400)
            if response.status_code == 400:
                assert response.json()["error"]["param"] in (field, "messages", "prompt")
            continue
        assert response.status_code == 400, (field, token, response.text)
        assert response.json()["error"]["param"] == field, response.text


def test_the_strategies_reach_both_sides() -> None:
    """The raw number tokens are JSON that Python reads: 1e400 as inf, 1e-400 as 0.0."""
    decoded = json.loads(_encode({"a": [_RAW + token for token in RAW_NUMBERS]}))["a"]
    assert math.isinf(decoded[0]) and decoded[2] == 0.0 and len(decoded) == len(RAW_NUMBERS)


def _real_path(body: Any, param: str) -> bool:
    """Whether every part of ``param`` is a key or index the body has: a parameter the client sent."""
    value = body
    for part in param.split("."):
        if isinstance(value, dict) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            return False
    return True


HI = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/chat/completions", {"model": MODEL, "messages": HI, "stop": 5}),
        ("/v1/chat/completions", {"model": MODEL, "messages": HI, "stop": [5]}),
        ("/v1/chat/completions", {"model": MODEL, "messages": [{"role": "user", "content": 5}]}),
        ("/v1/completions", {"model": MODEL, "prompt": 5}),
        ("/v1/completions", {"model": MODEL, "prompt": [1.5]}),
        ("/v1/completions", {"model": MODEL, "prompt": None}),
    ],
)
async def test_a_wrongly_typed_union_field_is_named_as_sent(http: httpx.AsyncClient, path: str, body: Any) -> None:
    response = await http.post(path, json=body)
    assert response.status_code == 400
    param = response.json()["error"]["param"]
    assert _real_path(body, param), param


@pytest.mark.parametrize(
    ("path", "field"),
    [
        *(("/v1/chat/completions", f) for f in ("n", "presence_penalty", "frequency_penalty", "stream")),
        *(("/v1/completions", f) for f in ("n", "presence_penalty", "frequency_penalty", "stream", "echo")),
    ],
)
async def test_openais_nullable_fields_may_be_null(http: httpx.AsyncClient, path: str, field: str) -> None:
    base: dict[str, Any] = {"model": MODEL, "messages": HI} if "chat" in path else {"model": MODEL, "prompt": "hi"}
    response = await http.post(path, json={**base, field: None})
    assert response.status_code == 200, response.text


@pytest.mark.parametrize(
    "field", ["temperature", "top_p", "seed", "stop", "max_tokens", "user", "logprobs", "stream_options", "top_k"]
)
async def test_nullable_fields_that_are_taken_as_unset(http: httpx.AsyncClient, field: str) -> None:
    bases: list[tuple[str, dict[str, Any]]] = [
        ("/v1/chat/completions", {"model": MODEL, "messages": HI}),
        ("/v1/completions", {"model": MODEL, "prompt": "hi"}),
    ]
    for path, base in bases:
        response = await http.post(path, json={**base, field: None})
        assert response.status_code == 200, response.text
