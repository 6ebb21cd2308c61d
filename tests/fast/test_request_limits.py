"""Oversized requests are refused at the edge with a 400 that names the field, before any work.

Each bound here (server/protocol/) is checked while the body is parsed, so a request with a
million choices or a megabyte of stop strings costs the server a parse, not a fan-out, a
tokenization or a stop-string scan on every token. What cannot be bounded while parsing (a
prompt's length in tokens, which depends on the model) is bounded before the work it would cost.
Structured-output constraints have their own tests (test_constraint_limits.py).
"""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest

from server.endpoints.state import ServerState
from server.protocol.base import (
    MAX_CHOICES,
    MAX_CONTENT_PARTS,
    MAX_LOGIT_BIAS,
    MAX_LOGPROBS,
    MAX_MESSAGES,
    MAX_NAME_CHARS,
    MAX_PROMPTS,
    MAX_STOP_CHARS,
    MAX_STOP_STRINGS,
    MAX_STOP_TOKEN_IDS,
    MAX_TOOLS,
)
from server.runtime.app import create_app
from server.text.tokenization import Tokenization
from tests.fast.fake_engine import FakeEngine
from tests.fast.helpers import client
from tests.fast.tiny_model import CONTEXT_LENGTH, HERMES_TEMPLATE, MODEL, TinyModel
from tests.helpers import assert_openai_error

HI = [{"role": "user", "content": "hi"}]
CHAT = "/v1/chat/completions"
TEXT = "/v1/completions"
TOOL = {"type": "function", "function": {"name": "f"}}
CALL = {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}


def _param(response: httpx.Response) -> str | None:
    param: str | None = assert_openai_error(response, 400)["param"]
    return param


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        (CHAT, {"messages": HI, "n": 10**6}, "n"),
        (CHAT, {"messages": HI, "stop": ["x"] * (MAX_STOP_STRINGS + 1)}, "stop"),
        (CHAT, {"messages": HI, "stop": "x" * (MAX_STOP_CHARS + 1)}, "stop"),
        (CHAT, {"messages": HI, "stop": ["x" * (MAX_STOP_CHARS + 1)]}, "stop"),
        (CHAT, {"messages": HI, "stop_token_ids": [1] * (MAX_STOP_TOKEN_IDS + 1)}, "stop_token_ids"),
        (CHAT, {"messages": HI * (MAX_MESSAGES + 1)}, "messages"),
        (CHAT, {"messages": [{"role": "user", "content": [{"type": "text", "text": "a"}] * (MAX_CONTENT_PARTS + 1)}]},
         "messages"),
        (CHAT, {"messages": [{"role": "user", "content": "hi", "name": "n" * (MAX_NAME_CHARS + 1)}]}, "messages"),
        (CHAT, {"messages": HI, "user": "u" * (MAX_NAME_CHARS + 1)}, "user"),
        (CHAT, {"messages": HI, "max_tokens": 10**18}, "messages"),
        (TEXT, {"prompt": ["a"] * (MAX_PROMPTS + 1)}, "prompt"),
        (TEXT, {"prompt": ["a", "b"], "n": MAX_CHOICES // 2 + 1}, "n"),
        (TEXT, {"prompt": "hi", "max_tokens": 10**18}, "prompt"),
        (TEXT, {"prompt": [1] * (CONTEXT_LENGTH + 1)}, "prompt"),
        (CHAT, {"messages": HI, "logit_bias": {str(i): 1 for i in range(MAX_LOGIT_BIAS + 1)}}, "logit_bias"),
        (CHAT, {"messages": HI, "logit_bias": {"1" * 5000: 1}}, "logit_bias"),  # int() refuses it: was a 500
        (CHAT, {"messages": HI, "tools": [TOOL] * (MAX_TOOLS + 1)}, "tools"),
        (CHAT, {"messages": [{"role": "assistant", "tool_calls": [CALL] * (MAX_TOOLS + 1)}]}, "messages"),
        (CHAT, {"messages": HI, "logprobs": True, "top_logprobs": MAX_LOGPROBS + 1}, "top_logprobs"),
        (TEXT, {"prompt": "hi", "logprobs": MAX_LOGPROBS + 1}, "logprobs"),
        (TEXT, {"prompt": "hi", "prompt_logprobs": MAX_LOGPROBS + 1}, "prompt_logprobs"),
    ],
)  # fmt: skip
async def test_oversized_parts_are_refused_naming_the_field(
    http: httpx.AsyncClient, path: str, body: dict[str, Any], param: str
) -> None:
    response = await http.post(path, json={"model": MODEL, **body})
    named = _param(response)
    assert named is not None and named.split(".")[0] == param, response.json()


async def test_one_prompt_of_token_ids_counts_as_one_prompt(http: httpx.AsyncClient, tiny: TinyModel) -> None:
    """A token-id prompt is one prompt however many tokens it holds: n choices of it, not tokens x n."""
    prompt = tiny.ids("Hello world") * 40  # more tokens than MAX_CHOICES / n
    assert len(prompt) * 2 > MAX_CHOICES
    response = await http.post(TEXT, json={"model": MODEL, "prompt": prompt, "n": 2, "max_tokens": 3})
    assert response.status_code == 200, response.text
    assert len(response.json()["choices"]) == 2


async def test_model_name_length_is_bounded(http: httpx.AsyncClient) -> None:
    assert _param(await http.post(CHAT, json={"model": "m" * (MAX_NAME_CHARS + 1), "messages": HI})) == "model"


async def test_a_million_choices_are_refused_without_fanning_out(http: httpx.AsyncClient, fake: FakeEngine) -> None:
    started = time.perf_counter()
    response = await http.post(CHAT, json={"model": MODEL, "messages": HI, "n": 10**6})
    assert _param(response) == "n"
    assert time.perf_counter() - started < 1.0  # a parse, not a million requests (generous for CI)
    assert fake.requests == []


async def test_a_huge_prompt_is_refused_before_tokenization(
    http: httpx.AsyncClient, tiny: TinyModel, fake: FakeEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Text longer than the context times the longest token cannot fit; it never reaches the tokenizer."""

    def no_tokenizing(*_: object, **__: object) -> list[int]:
        raise AssertionError("the prompt was tokenized")

    monkeypatch.setattr(tiny.tokenization, "encode", no_tokenizing)
    monkeypatch.setattr(tiny.tokenization, "chat_prompt", no_tokenizing)
    huge = "x" * (fake.max_model_len * tiny.tokenization.max_token_chars + 1)
    for path, body, param in (
        (TEXT, {"prompt": huge}, "prompt"),
        (CHAT, {"messages": [{"role": "user", "content": huge}]}, "messages"),
    ):
        response = await http.post(path, json={"model": MODEL, **body})
        assert _param(response) == param
        assert response.json()["error"]["code"] == "context_length_exceeded"


async def test_limits_at_their_bound_are_accepted(http: httpx.AsyncClient) -> None:
    body = {
        "model": MODEL,
        "messages": HI,
        "stop": ["x" * MAX_STOP_CHARS] * MAX_STOP_STRINGS,
        "user": "u" * MAX_NAME_CHARS,
        "max_tokens": 3,
    }
    response = await http.post(CHAT, json=body)
    assert response.status_code == 200, response.text


async def test_what_a_template_renders_beyond_the_messages_counts_before_tokenization(
    fake: FakeEngine, tiny: TinyModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Tools, calls' arguments and template variables reach the prompt through the template, in any
    amount: the rendered prompt is measured before it is tokenized, as the messages' text is."""
    tokenization = Tokenization(tiny.path, tiny.info.vocab_size, chat_template=HERMES_TEMPLATE)

    def no_tokenizing(*_: object, **__: object) -> list[int]:
        raise AssertionError("the prompt was tokenized")

    monkeypatch.setattr(tokenization, "encode", no_tokenizing)
    long = "x" * (CONTEXT_LENGTH * tokenization.max_token_chars + 1)
    tool = {"type": "function", "function": {"name": "f", "description": long}}
    call = {"id": "c", "type": "function", "function": {"name": "f", "arguments": long}}
    app = create_app(ServerState(engine=fake, tokenization=tokenization, model_name=MODEL))
    async with app.router.lifespan_context(app), client(app) as http:
        for body in (
            {"messages": HI, "tools": [tool]},
            {"messages": [*HI, {"role": "assistant", "tool_calls": [call]}]},
        ):
            response = await http.post(CHAT, json={"model": MODEL, **body})
            assert _param(response) == "messages"
            assert response.json()["error"]["code"] == "context_length_exceeded"
    assert fake.requests == []


async def test_many_unknown_fields_are_named_in_time(http: httpx.AsyncClient) -> None:
    """Every message may carry fields of its own that take no effect: naming them stays linear
    (2,000 messages of 40 such fields took 44 s when each name was checked against all)."""
    messages = [{"role": "user", "content": "", **{f"k{i}_{j}": 1 for j in range(2500)}} for i in range(30)]
    started = time.perf_counter()
    response = await http.post(CHAT, json={"model": MODEL, "messages": messages, "max_tokens": 2})
    assert time.perf_counter() - started < 5.0
    assert response.status_code == 200, response.text
    assert response.headers["x-ignored-params"].endswith(f"+{30 * 2500 - 32} more")
