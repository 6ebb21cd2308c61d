"""What streams send while they have nothing to send: ``: keep-alive`` comments every
``--sse-keep-alive-interval`` seconds on every streaming route, and, when a request asks with
``x-ise-queue-position: true``, where it waits in the queue; clients parse the streams unchanged."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import pytest

from server.endpoints import heartbeat
from tests.fast.fake_engine import FakeEngine
from tests.fast.helpers import Gated, chat_request, client, sdk_client, serving, text_request, until
from tests.fast.tiny_model import MODEL, TinyModel
from tests.helpers import assert_openai_error

ROUTES: dict[str, dict[str, Any]] = {
    "/v1/chat/completions": chat_request(stream=True),
    "/v1/completions": text_request(stream=True),
    "/v1/responses": {"model": MODEL, "input": "hi", "max_output_tokens": 4, "stream": True},
}


def lines_before_first_event(body: str) -> list[str]:
    lines = body.split("\n")
    first = next(i for i, line in enumerate(lines) if line.startswith(("data:", "event:")))
    return [line for line in lines[:first] if line]


@pytest.mark.parametrize("path", ROUTES)
async def test_keep_alive_comments_while_the_first_token_is_awaited(
    fake: FakeEngine, tiny: TinyModel, path: str
) -> None:
    fake.script = lambda _: tiny.reply("Hello", " world", delays=[0.35])
    async with serving(fake, tiny, sse_keep_alive_interval=0.05) as app, client(app) as http:
        body = (await http.post(path, json=ROUTES[path])).text
    first_token = body.index("Hello")
    assert body[:first_token].split("\n").count(": keep-alive") >= 4, body
    async with serving(fake, tiny, sse_keep_alive_interval=0) as app, client(app) as http:
        quiet = (await http.post(path, json=ROUTES[path])).text
    assert not [line for line in quiet.split("\n") if line.startswith(":")]


async def test_the_openai_sdk_parses_a_stream_with_comments(fake: FakeEngine, tiny: TinyModel) -> None:
    fake.script = lambda _: tiny.reply("Hello", " world", "!", delays=[0.2, 0.1, 0.1])
    async with serving(fake, tiny, sse_keep_alive_interval=0.03) as app, sdk_client(app) as sdk:
        stream = await sdk.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "hi"}],
            stream=True,
            extra_headers={"x-ise-queue-position": "true"},
        )
        text = "".join([chunk.choices[0].delta.content or "" async for chunk in stream if chunk.choices])
    assert text == "Hello world!"


async def test_a_waiting_stream_that_asks_hears_its_queue_position(
    fake: FakeEngine, tiny: TinyModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(heartbeat, "POSITION_INTERVAL_S", 0.05)
    gated = Gated(fake, tiny)
    async with serving(fake, tiny, sse_keep_alive_interval=0) as app, client(app) as http:
        ahead = asyncio.create_task(http.post("/v1/chat/completions", json=chat_request()))
        await until(lambda: len(fake.requests) == 1)
        asked = asyncio.create_task(
            http.post("/v1/chat/completions", json=chat_request(stream=True), headers={"x-ise-queue-position": "true"})
        )
        await until(lambda: len(fake.requests) == 2)
        await asyncio.sleep(0.2)
        gated.gates[0].set()  # the request ahead gets its first token: the asking one moves up
        await ahead
        await asyncio.sleep(0.2)
        gated.open_all()
        body = (await asked).text
        # A stream that did not ask gets no position.
        plain = await http.post("/v1/chat/completions", json=chat_request(stream=True))
    comments = lines_before_first_event(body)
    positions = [re.fullmatch(r": queue position=(\d+) waiting=(\d+)( estimated_wait_ms=\d+)?", c) for c in comments]
    assert all(positions), comments
    seen = [(int(m.group(1)), int(m.group(2))) for m in positions if m]
    assert seen[0] == (2, 2) and seen[-1] == (1, 1) and len(seen) >= 4
    assert "queue position" not in plain.text


async def test_a_bad_queue_position_header_is_refused(http: Any) -> None:
    response = await http.post(
        "/v1/chat/completions", json=chat_request(stream=True), headers={"x-ise-queue-position": "maybe"}
    )
    assert assert_openai_error(response, 400, None)["param"] == "x-ise-queue-position"
