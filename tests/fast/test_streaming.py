"""Streams as OpenAI clients parse them: exact SSE framing, an opening role chunk sent with the first
token, one chunk per text delta, a finish chunk, the usage chunk when asked for, then ``[DONE]``; no
broken characters."""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

import httpx
import openai
import pytest
from fastapi import FastAPI
from starlette.types import Message

from adapters.engine import EngineRequest
from tests.fast.fake_engine import FakeEngine, Reply
from tests.fast.helpers import asgi_call
from tests.fast.tiny_model import MODEL, TinyModel
from tests.helpers import openai_error, sse_chunks, sse_payloads

HI = [{"role": "user", "content": "hi"}]


# ise's extension in a stream's usage chunk: the request's timings, which differ run to run.
TIMING = re.compile(
    r'"server_timing":\{"queue":[0-9.]+,"prefill":[0-9.]+,"ttft":[0-9.]+,"decode":[0-9.]+,"total":[0-9.]+\}'
)


def _timed(body: str) -> str:
    """``body`` with the usage chunk's timings, checked for their shape, replaced by ``T``."""
    return TIMING.sub('"server_timing":T', body)


@pytest.mark.parametrize("include_usage", [False, True])
async def test_chat_stream_bytes(http: httpx.AsyncClient, include_usage: bool) -> None:
    body: dict[str, Any] = {"model": MODEL, "messages": HI, "stream": True}
    if include_usage:
        body["stream_options"] = {"include_usage": True}
    response = await http.post("/v1/chat/completions", json=body)
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
    first = sse_chunks(response.text)[0]
    head = (
        f'data: {{"id":"{first["id"]}","object":"chat.completion.chunk","created":{first["created"]},'
        '"model":"fake","choices":'
    )
    # OpenAI sends "usage": null on every chunk but the last when usage is asked for, else no usage.
    tail = ',"usage":null,"system_fingerprint":null}\n\n' if include_usage else ',"system_fingerprint":null}\n\n'
    expected = (
        head + '[{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}]' + tail
        + head + '[{"index":0,"delta":{"content":"Hello"},"logprobs":null,"finish_reason":null}]' + tail
        + head + '[{"index":0,"delta":{"content":" wor"},"logprobs":null,"finish_reason":null}]' + tail
        + head + '[{"index":0,"delta":{"content":"ld"},"logprobs":null,"finish_reason":null}]' + tail
        + head + '[{"index":0,"delta":{"content":"!"},"logprobs":null,"finish_reason":null}]' + tail
        + head + '[{"index":0,"delta":{},"logprobs":null,"finish_reason":"stop"}]' + tail
    )  # fmt: skip
    if include_usage:
        expected += (
            head + '[],"usage":{"prompt_tokens":12,"completion_tokens":5,"total_tokens":17,'
            '"prompt_tokens_details":{"cached_tokens":0},"server_timing":T},'
            '"system_fingerprint":null}\n\n'
        )
    assert first["id"].startswith("chatcmpl-")
    assert _timed(response.text) == expected + "data: [DONE]\n\n"


@pytest.mark.parametrize("include_usage", [False, True])
async def test_text_stream_bytes(http: httpx.AsyncClient, include_usage: bool) -> None:
    body: dict[str, Any] = {"model": MODEL, "prompt": "hi", "stream": True}
    if include_usage:
        body["stream_options"] = {"include_usage": True}
    response = await http.post("/v1/completions", json=body)
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
    first = sse_chunks(response.text)[0]
    head = (
        f'data: {{"id":"{first["id"]}","object":"text_completion","created":{first["created"]},'
        '"model":"fake","choices":'
    )
    tail = ',"usage":null,"system_fingerprint":null}\n\n' if include_usage else ',"system_fingerprint":null}\n\n'
    expected = (
        head + '[{"index":0,"text":"Hello","logprobs":null,"finish_reason":null}]' + tail
        + head + '[{"index":0,"text":" wor","logprobs":null,"finish_reason":null}]' + tail
        + head + '[{"index":0,"text":"ld","logprobs":null,"finish_reason":null}]' + tail
        + head + '[{"index":0,"text":"!","logprobs":null,"finish_reason":null}]' + tail
        + head + '[{"index":0,"text":"","logprobs":null,"finish_reason":"stop"}]' + tail
    )  # fmt: skip
    if include_usage:
        expected += (
            head + '[],"usage":{"prompt_tokens":2,"completion_tokens":5,"total_tokens":7,'
            '"prompt_tokens_details":{"cached_tokens":0},"server_timing":T},"system_fingerprint":null}\n\n'
        )
    assert first["id"].startswith("cmpl-")
    assert _timed(response.text) == expected + "data: [DONE]\n\n"


async def test_the_role_chunk_waits_for_the_first_token(app: FastAPI, fake: FakeEngine, tiny: TinyModel) -> None:
    """Clients time the first token at the first chunk with choices (vllm bench serve's chat backend):
    a role chunk sent before prefill made a long prompt's TTFT read as a few milliseconds."""
    prefilling, first_token = asyncio.Event(), asyncio.Event()

    def script(_: EngineRequest) -> Reply:
        prefilling.set()  # the engine has the request
        return tiny.reply("Hello", gates={0: first_token})

    fake.script = script
    early: list[bytes] = []

    async def watch(message: Message) -> None:
        if message["type"] == "http.response.body" and message.get("body") and not first_token.is_set():
            early.append(message["body"])

    body = json.dumps({"model": MODEL, "messages": HI, "stream": True}).encode()
    headers = ((b"host", b"test"), (b"content-type", b"application/json"))
    call = asyncio.create_task(
        asgi_call(app, "POST", b"/v1/chat/completions", headers=headers, chunks=[body], send=watch)
    )
    await prefilling.wait()
    await asyncio.sleep(0.05)
    first_token.set()
    events = sse_chunks((await call).body.decode())
    assert early == []
    assert [e["choices"][0]["delta"] for e in events] == [
        {"role": "assistant", "content": ""},
        {"content": "Hello"},
        {},
    ]


async def test_a_failure_before_the_first_token_is_the_whole_stream(
    http: httpx.AsyncClient, fake: FakeEngine, tiny: TinyModel
) -> None:
    fake.script = lambda _: tiny.reply("Hello", fail_at=0)
    response = await http.post("/v1/chat/completions", json={"model": MODEL, "messages": HI, "stream": True})
    error, done = sse_payloads(response.text)
    assert openai_error(json.loads(error))["type"] == "server_error"
    assert done == "[DONE]"


async def test_sdk_reads_the_chat_stream(sdk: openai.AsyncOpenAI) -> None:
    whole = await sdk.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
    stream = await sdk.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "hi"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in stream]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello world!"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    usage = chunks[-1].usage
    assert chunks[-1].choices == [] and usage is not None
    # The usage chunk carries ise's timings beside OpenAI's fields; the SDK keeps them as extras.
    timing = (usage.model_extra or {}).pop("server_timing")
    assert set(timing) == {"queue", "prefill", "ttft", "decode", "total"}
    assert timing["ttft"] == pytest.approx(timing["queue"] + timing["prefill"], abs=0.01)
    assert usage == whole.usage
    assert whole.choices[0].message.content == "Hello world!"
    assert whole.choices[0].finish_reason == "stop"


async def test_characters_split_across_tokens_arrive_whole(
    sdk: openai.AsyncOpenAI, fake: FakeEngine, tiny: TinyModel
) -> None:
    text = "café ☕ naïve"
    ids = tiny.ids(text)
    assert any("\ufffd" in tiny.tokenization.decode([i]) for i in ids), "the text must split a character"
    fake.script = lambda _: tiny.reply(text)
    stream = await sdk.completions.create(model=MODEL, prompt="hi", stream=True, max_tokens=50)
    deltas = [c.choices[0].text async for c in stream]
    assert not any("\ufffd" in d for d in deltas)
    assert "".join(deltas) == text
    whole = await sdk.completions.create(model=MODEL, prompt="hi", max_tokens=50)
    assert whole.choices[0].text == text
