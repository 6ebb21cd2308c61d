"""The fast tier's helpers: the app started with the gateway's settings, clients of it, requests
whose cost admission knows and the refusal it answers, what ``/metrics`` says, raw ASGI calls for
what httpx would rewrite, and a clock for rate limits.

The fixtures that build on them live in conftest.py.
"""

from __future__ import annotations

import asyncio
import json
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import httpx2
import openai
from fastapi import FastAPI
from starlette.types import Message

from adapters.engine import EngineRequest
from server.endpoints.state import ServerState
from server.gateway.options import GatewayArgs
from server.runtime.app import create_app
from tests.fast.fake_engine import FakeEngine, Reply
from tests.fast.tiny_model import MODEL, TinyModel
from tests.helpers import assert_openai_error, metric_sample


@asynccontextmanager
async def serving(
    engine: FakeEngine, tiny: TinyModel, *, batch_slots: int | None = None, **gateway: Any
) -> AsyncIterator[FastAPI]:
    """The app over ``engine`` with the gateway's settings ``gateway`` (``GatewayArgs``' fields), started.

    ``batch_slots``: the engine's batch size as ``ise serve`` tells the admission (``--max-num-seqs``).
    """
    state = ServerState(
        engine=engine,
        tokenization=tiny.tokenization,
        model_name=MODEL,
        gateway_args=GatewayArgs(**gateway),
        batch_slots=batch_slots,
    )
    app = create_app(state)
    async with app.router.lifespan_context(app):
        yield app


TOKEN = 74  # a token id of the tiny vocabulary: prompts of n of them cost exactly n prompt tokens


def text_request(prompt_tokens: int = 2, **extra: Any) -> dict[str, Any]:
    """A text completion whose prompt costs exactly ``prompt_tokens``: what admission counts."""
    return {"model": MODEL, "prompt": [TOKEN] * prompt_tokens, "max_tokens": 4, **extra}


def chat_request(**extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, **extra}


def assert_refused(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """The gateway's refusal: an OpenAI error with ``status`` and ``code``, a plain JSON answer
    (never an event stream) whose type the SDK maps to its retried exceptions."""
    error = assert_openai_error(response, status, code)
    assert response.headers["content-type"] == "application/json"
    assert error["type"] == ("rate_limit_error" if status == 429 else "service_unavailable")
    return error


async def until(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    """Wait until ``condition()`` holds: state the app changes on its own tasks, polled."""
    async with asyncio.timeout(timeout_s):
        while not condition():  # noqa: ASYNC110  (no event to wait on: the state is the app's)
            await asyncio.sleep(0.002)


WINDOW_START = 1_800_000_000.0  # a multiple of 60: the start of one of the ``limits`` library's minutes


class Clock:
    """``time.time`` for the ``limits`` library's in-memory rate-limit windows, moved only by the test."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def state_of(app: FastAPI) -> ServerState:
    state: ServerState = app.state.ise
    return state


def client(app: FastAPI, key: str | None = None, **headers: str) -> httpx.AsyncClient:
    """An httpx client of ``app`` sending ``Authorization: Bearer key`` when ``key`` is given."""
    if key is not None:
        headers["authorization"] = f"Bearer {key}"
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test", headers=headers)


def sdk_client(app: FastAPI, key: str = "x", max_retries: int = 0) -> openai.AsyncOpenAI:
    """The openai SDK as a client of ``app``; it (pinned in requirements/constraints.txt) runs on
    httpx2, httpx's successor."""
    http_client = httpx2.AsyncClient(transport=httpx2.ASGITransport(app=app), base_url="http://test")
    return openai.AsyncOpenAI(base_url="http://test/v1", api_key=key, http_client=http_client, max_retries=max_retries)


async def metric(http: httpx.AsyncClient, name: str, **labels: str) -> float:
    """A sample's value as ``GET /metrics`` shows it (see ``metric_sample``)."""
    response = await http.get("/metrics")
    assert response.status_code == 200, response.text
    return metric_sample(response.text, name, **labels)


@dataclass
class Exchange:
    """What an ASGI app sent for one request: the response's status, headers and body."""

    messages: list[Message]

    @property
    def status(self) -> int:
        [start] = [m for m in self.messages if m["type"] == "http.response.start"]
        status: int = start["status"]
        return status

    @property
    def headers(self) -> httpx.Headers:
        [start] = [m for m in self.messages if m["type"] == "http.response.start"]
        return httpx.Headers([(k.decode("latin-1"), v.decode("latin-1")) for k, v in start.get("headers", [])])

    @property
    def body(self) -> bytes:
        return b"".join(m.get("body", b"") for m in self.messages if m["type"] == "http.response.body")

    def json(self) -> Any:
        return json.loads(self.body)


async def asgi_call(
    app: FastAPI,
    method: str,
    raw_path: bytes,
    *,
    query: bytes = b"",
    headers: Sequence[tuple[bytes, bytes]] = ((b"host", b"test"),),
    chunks: Sequence[bytes] = (),
    send: Callable[[Message], Awaitable[None]] | None = None,
    hang_up: asyncio.Event | None = None,
    timeout_s: float = 5.0,
) -> Exchange:
    """One request to ``app`` as uvicorn hands it over: ``raw_path`` as the client sent it, ``path``
    percent-decoded from it; the body in ``chunks`` (several: a chunked upload); ``send`` sees each
    message before it is recorded (to stall it, or to set ``hang_up``). The client disconnects once
    the response is complete, or once ``hang_up`` is set."""
    path = raw_path.decode("ascii")
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": urllib.parse.unquote(path) if "%" in path else path,
        "raw_path": raw_path,
        "root_path": "",
        "query_string": query,
        "headers": list(headers),
        "server": ("test", 80),
        "client": ("127.0.0.1", 50000),
    }
    pending: list[Message] = [
        {"type": "http.request", "body": chunk, "more_body": i < len(chunks) - 1} for i, chunk in enumerate(chunks)
    ] or [{"type": "http.request", "body": b"", "more_body": False}]
    sent: list[Message] = []
    done = asyncio.Event()

    async def receive() -> Message:
        if pending:
            return pending.pop(0)
        waits = [asyncio.ensure_future(event.wait()) for event in (done, hang_up) if event is not None]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for wait in waits:
                wait.cancel()
        return {"type": "http.disconnect"}

    async def record(message: Message) -> None:
        if send is not None:
            await send(message)
        sent.append(message)
        if message["type"] == "http.response.body" and not message.get("more_body", False):
            done.set()

    async with asyncio.timeout(timeout_s):
        await app(scope, receive, record)
    return Exchange(sent)


class Gated:
    """Scripts the fake so each request waits for its first token until the test opens the gates;
    requests that come after that are not held."""

    def __init__(self, fake: FakeEngine, tiny: TinyModel) -> None:
        self.tiny = tiny
        self.gates: list[asyncio.Event] = []
        self.opened = False
        fake.script = self._reply

    def _reply(self, request: EngineRequest) -> Reply:
        gate = asyncio.Event()
        if self.opened:
            gate.set()
        self.gates.append(gate)
        return self.tiny.reply("Hello", " world", gates={0: gate})

    def open_all(self, *, stay_open: bool = True) -> None:
        self.opened = stay_open
        for gate in self.gates:
            gate.set()
