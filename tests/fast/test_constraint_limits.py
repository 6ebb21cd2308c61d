"""Structured-output constraints are bounded work: sizes and nesting are refused while the request is
parsed, and a compile that outlasts its budget is stopped, its request refused with a 400.

The compiles here are real: xgrammar in the server's own worker processes, against the tiny test
tokenizer. Only the engine is the fake, which lets each test see whether a request reached it.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import psutil
import pytest
from fastapi import FastAPI

from server.endpoints.state import ServerState
from server.protocol.constraint_limits import (
    MAX_CHOICE_CHARS,
    MAX_CHOICE_STRINGS,
    MAX_GRAMMAR_CHARS,
    MAX_REGEX_CHARS,
    MAX_SCHEMA_CHARS,
    MAX_SCHEMA_DEPTH,
)
from server.runtime.app import create_app
from server.text.options import ApiArgs
from tests.fast.fake_engine import FakeEngine
from tests.fast.helpers import asgi_call, client, until
from tests.fast.tiny_model import MODEL, TinyModel
from tests.helpers import cpu_seconds

CHAT = "/v1/chat/completions"
HI = [{"role": "user", "content": "hi"}]
# Within MAX_REGEX_CHARS, yet its compile takes ~15 s even against the tiny vocabulary.
SLOW_REGEX = "(ab|cd)*" * 2000
# A tool schema short enough for the tiny model's context, whose compile takes seconds there too.
SLOW_PARAMETERS = {"type": "object", "properties": {"a": {"type": "string", "pattern": "(a|b){1,5000}"}}}
BUDGET_S = 0.5


def _nested(levels: int) -> dict[str, Any]:
    """A valid schema whose JSON nests ``levels`` objects and arrays deep (arrays of arrays of strings)."""
    schema: dict[str, Any] = {"type": "string"}
    for _ in range(levels - 1):
        schema = {"type": "array", "items": schema}
    return schema


def _tool(parameters: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"type": "function", "function": {"name": "f", "parameters": parameters}}]


def _response_format(schema: dict[str, Any]) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}


_DEEP = _nested(MAX_SCHEMA_DEPTH + 1)
_HUGE_PATTERN = {"type": "string", "pattern": "(ab|cd)*" * 20_000}  # the 160,000 characters of the issue
_LARGE = {"type": "string", "enum": ["v" * 1000] * (MAX_SCHEMA_CHARS // 1000)}


@pytest.mark.parametrize(
    ("body", "param", "limit"),
    [
        ({"response_format": _response_format(_DEEP)}, "response_format.json_schema.schema", MAX_SCHEMA_DEPTH),
        ({"response_format": _response_format(_HUGE_PATTERN)}, "response_format.json_schema.schema", MAX_REGEX_CHARS),
        ({"response_format": _response_format(_LARGE)}, "response_format.json_schema.schema", MAX_SCHEMA_CHARS),
        ({"structured_outputs": {"json": _DEEP}}, "structured_outputs.json", MAX_SCHEMA_DEPTH),
        ({"guided_json": json.dumps(_HUGE_PATTERN)}, "guided_json", MAX_REGEX_CHARS),
        ({"guided_json": "[" * 5000 + "]" * 5000}, "guided_json", MAX_SCHEMA_DEPTH),  # too deep to parse
        ({"guided_json": json.dumps(_LARGE)}, "guided_json", MAX_SCHEMA_CHARS),
        ({"guided_json": {"type": "object", "patternProperties": {"a" * (MAX_REGEX_CHARS + 1): {}}}}, "guided_json",
         MAX_REGEX_CHARS),
        ({"tools": _tool(_DEEP), "tool_choice": "required"}, "tools.0.function.parameters", MAX_SCHEMA_DEPTH),
        ({"tools": _tool({"type": "object", "properties": {"a": _HUGE_PATTERN}})}, "tools.0.function.parameters",
         MAX_REGEX_CHARS),
        ({"guided_regex": "a" * (MAX_REGEX_CHARS + 1)}, "guided_regex", MAX_REGEX_CHARS),
        ({"structured_outputs": {"regex": "a" * (MAX_REGEX_CHARS + 1)}}, "structured_outputs.regex", MAX_REGEX_CHARS),
        ({"guided_grammar": "a" * (MAX_GRAMMAR_CHARS + 1)}, "guided_grammar", MAX_GRAMMAR_CHARS),
        ({"structured_outputs": {"grammar": "a" * (MAX_GRAMMAR_CHARS + 1)}}, "structured_outputs.grammar",
         MAX_GRAMMAR_CHARS),
        ({"guided_choice": ["a" * 1000] * (MAX_CHOICE_CHARS // 1000 + 1)}, "guided_choice", MAX_CHOICE_CHARS),
        ({"structured_outputs": {"choice": ["a"] * (MAX_CHOICE_STRINGS + 1)}}, "structured_outputs.choice",
         MAX_CHOICE_STRINGS),
    ],
)  # fmt: skip
async def test_oversized_constraints_are_refused_naming_the_field_and_the_limit(
    http: httpx.AsyncClient, fake: FakeEngine, body: dict[str, Any], param: str, limit: int
) -> None:
    started = time.perf_counter()
    response = await http.post(CHAT, json={"model": MODEL, "messages": HI, "max_tokens": 2, **body})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param
    assert str(limit) in error["message"]
    assert time.perf_counter() - started < 1.0  # a parse and a walk, no compile
    assert fake.requests == []


async def test_constraints_at_their_bounds_are_accepted(http: httpx.AsyncClient, fake: FakeEngine) -> None:
    at_bounds: list[dict[str, Any]] = [
        {"response_format": _response_format(_nested(MAX_SCHEMA_DEPTH))},
        {"guided_regex": "a" * MAX_REGEX_CHARS},
        {"guided_choice": ["a" * (MAX_CHOICE_CHARS // MAX_CHOICE_STRINGS)] * MAX_CHOICE_STRINGS},
    ]
    for body in at_bounds:
        response = await http.post(CHAT, json={"model": MODEL, "messages": HI, "max_tokens": 2, **body})
        assert response.status_code == 200, response.text
    assert len(fake.requests) == len(at_bounds)


@pytest.fixture
async def budgeted(fake: FakeEngine, tiny: TinyModel) -> AsyncIterator[FastAPI]:
    """The app with a compile budget of BUDGET_S, and no room to wait for a busy worker; its context
    fits the slow tools' description (a prompt beyond the context is refused before any compile)."""
    fake.max_model_len = 4096
    api = ApiArgs(grammar_compile_timeout=BUDGET_S, grammar_compile_queue=0)
    state = ServerState(engine=fake, tokenization=tiny.tokenization, model_name=MODEL, api=api)
    app = create_app(state)
    async with app.router.lifespan_context(app):
        yield app


def _descendants_cpu() -> dict[int, float]:
    """CPU seconds of each process this one started (the fork server and the compile workers)."""
    return cpu_seconds(psutil.Process().children(recursive=True))


def _spent_since(before: dict[int, float]) -> float:
    """CPU seconds the descendant processes spent since ``before`` (a killed one's earlier time not subtracted)."""
    return sum(cpu - before.get(pid, 0.0) for pid, cpu in _descendants_cpu().items())


async def _cpu_growth(seconds: float) -> float:
    before = _descendants_cpu()
    await asyncio.sleep(seconds)
    return _spent_since(before)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"guided_regex": SLOW_REGEX}, "guided_regex"),
        ({"tools": _tool(SLOW_PARAMETERS), "tool_choice": "required"}, "tools"),
    ],
)  # fmt: skip
async def test_a_compile_past_the_budget_is_stopped_and_refused(
    budgeted: FastAPI, fake: FakeEngine, body: dict[str, Any], param: str
) -> None:
    async with client(budgeted) as http:
        await http.post(CHAT, json={"model": MODEL, "messages": HI, "max_tokens": 2, "guided_regex": "[a-z]+"})
        fake.requests.clear()  # the workers are started: what follows is the compile alone
        started = time.perf_counter()
        response = await http.post(CHAT, json={"model": MODEL, "messages": HI, "max_tokens": 2, **body})
        took = time.perf_counter() - started
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert error["param"] == param
        assert f"{BUDGET_S:g} s" in error["message"] and "--grammar-compile-timeout" in error["message"]
        assert BUDGET_S <= took < BUDGET_S + 2.0
        assert await _cpu_growth(1.0) < 0.3  # no core left compiling (a compiling worker spends ~1.0)
        assert fake.requests == []
        # A new worker took the killed one's place.
        again = await http.post(CHAT, json={"model": MODEL, "messages": HI, "max_tokens": 2, "guided_regex": "[0-9]+"})
        assert again.status_code == 200, again.text


async def test_a_client_that_leaves_during_its_compile_frees_the_worker(app: FastAPI, fake: FakeEngine) -> None:
    """The default budget is 5 s; the slow compile must end when its client leaves, not then."""
    headers = ((b"host", b"test"), (b"content-type", b"application/json"))
    hang_up = asyncio.Event()
    slow = {"model": MODEL, "messages": HI, "max_tokens": 2, "guided_regex": SLOW_REGEX}
    async with client(app) as http:
        await http.post(CHAT, json={"model": MODEL, "messages": HI, "max_tokens": 2, "guided_regex": "[a-z]+"})
        leaving = asyncio.create_task(
            asgi_call(app, "POST", CHAT.encode(), headers=headers, chunks=[json.dumps(slow).encode()], hang_up=hang_up)
        )
        before = _descendants_cpu()
        await until(lambda: _spent_since(before) >= 0.3, timeout_s=10)  # the worker has compiled it a while
        hang_up.set()
        await leaving
        started = time.perf_counter()
        response = await http.post(CHAT, json={"model": MODEL, "messages": HI, "max_tokens": 2, "guided_regex": "a(b"})
        assert response.status_code == 400 and "parenthesis" in response.json()["error"]["message"]
        assert time.perf_counter() - started < 2.0  # not queued behind the 15 s compile, nor its 5 s budget
    assert await _cpu_growth(1.0) < 0.3
    assert len(fake.requests) == 1  # the first request's alone


async def test_constraints_beyond_the_compile_queue_are_refused_at_once(budgeted: FastAPI, fake: FakeEngine) -> None:
    """A flood of slow constraints cannot queue without bound behind the workers (here no room at all)."""
    async with client(budgeted) as http:
        await http.post(CHAT, json={"model": MODEL, "messages": HI, "max_tokens": 2, "guided_regex": "[a-z]+"})
        slow = asyncio.create_task(
            http.post(CHAT, json={"model": MODEL, "messages": HI, "max_tokens": 2, "guided_regex": SLOW_REGEX})
        )
        before = _descendants_cpu()
        await until(lambda: _spent_since(before) >= 0.1, timeout_s=10)  # the one worker is busy with it
        started = time.perf_counter()
        refused = await http.post(CHAT, json={"model": MODEL, "messages": HI, "max_tokens": 2, "guided_regex": "b+"})
        assert time.perf_counter() - started < 0.4  # refused, not queued behind the budget
        assert refused.status_code == 429, refused.text
        assert refused.json()["error"]["code"] == "server_overloaded"
        assert refused.json()["error"]["param"] == "guided_regex"
        assert int(refused.headers["retry-after"]) >= 1
        assert (await slow).status_code == 400  # the slow one still got its budget
        # A constraint compiled before needs no worker: never refused for a busy queue.
        again = await http.post(CHAT, json={"model": MODEL, "messages": HI, "max_tokens": 2, "guided_regex": "[a-z]+"})
        assert again.status_code == 200, again.text


async def test_requests_with_the_same_constraint_share_one_compile(budgeted: FastAPI, fake: FakeEngine) -> None:
    """A flood of one schema is one compile: none of its requests is refused for a full queue."""
    body = {"model": MODEL, "messages": HI, "max_tokens": 2, "guided_regex": SLOW_REGEX}
    async with client(budgeted) as http:
        await http.post(CHAT, json={"model": MODEL, "messages": HI, "max_tokens": 2, "guided_regex": "[a-z]+"})
        before = _descendants_cpu()
        responses = await asyncio.gather(*[http.post(CHAT, json=body) for _ in range(6)])
        assert [r.status_code for r in responses] == [400] * 6, [r.text for r in responses]
        assert all("--grammar-compile-timeout" in r.json()["error"]["message"] for r in responses)
        assert _spent_since(before) < BUDGET_S + 0.5  # one compile's worth of CPU, not six
