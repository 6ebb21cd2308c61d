"""A client that hangs up stops its generation: the engine is told to abort the request, streamed
or not, so a closed tab or a timed-out client does not keep a batch slot and its KV cache busy.

httpx's ``ASGITransport`` only reports a disconnect after the response is complete, so these tests
call the ASGI app directly, with a ``receive`` that says ``http.disconnect`` when the test decides.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from fastapi import FastAPI
from starlette.types import Message

from adapters.engine import EngineRequest
from tests.fast.fake_engine import FakeEngine, Reply
from tests.fast.helpers import state_of
from tests.fast.tiny_model import MODEL, TinyModel

CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 50}
VLLM_LABELS = {"model_name": MODEL, "engine": "0"}
NEVER = 3600.0  # the fake's wait before the last tokens: the request cannot finish during a test


async def _call(
    app: FastAPI, body: dict[str, Any], hang_up: asyncio.Event, hang_up_on: bytes | None = None
) -> list[Message]:
    """POST ``body`` to chat completions and return what the app sent.

    The client disconnects once ``hang_up`` is set, which it does itself on reading ``hang_up_on``.
    """
    payload = json.dumps(body).encode()
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/chat/completions",
        "raw_path": b"/v1/chat/completions",
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"test"), (b"content-type", b"application/json")],
        "server": ("test", 80),
        "client": ("127.0.0.1", 50000),
    }
    pending: list[Message] = [{"type": "http.request", "body": payload, "more_body": False}]
    sent: list[Message] = []

    async def receive() -> Message:
        if pending:
            return pending.pop()
        await hang_up.wait()
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)
        if hang_up_on is not None and hang_up_on in message.get("body", b""):
            hang_up.set()

    async with asyncio.timeout(5):
        await app(scope, receive, send)
    return sent


async def test_disconnect_aborts_a_stream(app: FastAPI, fake: FakeEngine, tiny: TinyModel) -> None:
    fake.script = lambda _: tiny.reply("Hello", " world", delays=[0.0, NEVER])
    sent = await _call(app, {**CHAT, "stream": True}, asyncio.Event(), hang_up_on=b'"content":"Hello"')
    body = b"".join(m.get("body", b"") for m in sent)
    assert b'"content":"Hello"' in body and b"[DONE]" not in body
    assert fake.aborted == [fake.requests[0].request_id]
    assert fake.stats().running == 0
    # vLLM's finish-reason counter names it an abort, and it is observed once, as any request.
    metrics = state_of(app).gateway.metrics.registry
    assert metrics.get_sample_value("vllm:request_success_total", {**VLLM_LABELS, "finished_reason": "abort"}) == 1
    assert metrics.get_sample_value("vllm:e2e_request_latency_seconds_count", VLLM_LABELS) == 1


async def test_disconnect_aborts_a_whole_response(app: FastAPI, fake: FakeEngine, tiny: TinyModel) -> None:
    hang_up = asyncio.Event()

    def script(request: EngineRequest) -> Reply:
        hang_up.set()  # the engine has the request: now the client gives up waiting
        return tiny.reply("Hello", " world", delays=[0.0, NEVER])

    fake.script = script
    sent = await _call(app, CHAT, hang_up)
    assert fake.aborted == [fake.requests[0].request_id]
    assert fake.stats().running == 0
    assert [m["status"] for m in sent if m["type"] == "http.response.start"] == [499]
