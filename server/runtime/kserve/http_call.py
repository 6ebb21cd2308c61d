"""One HTTP request through ise's own app, in process: how gRPC reaches the same gateway.

A gRPC call becomes the HTTP request an OpenAI client would send (``POST /v1/completions`` with
the caller's key), handed straight to the ASGI app with no socket between: API keys, rate limits,
admission, drain, request validation, metrics and the access log all run as for HTTP, and
nothing about them is implemented twice. ``close`` tells the app the client is gone (an ASGI
``http.disconnect``), which aborts the request in the engine exactly as a dropped HTTP client does.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

from starlette.types import ASGIApp, Message

_END = "ise.end"  # the app returned (or failed): nothing more will be sent
_CLOSE_TIMEOUT_S = 30.0  # an aborted request ends within a step or two; this only bounds a stuck one


class HTTPCall:
    """``method path`` (``path`` unescaped) with ``body`` and ``headers`` (lower-case names) through ``app``,
    started by ``start``."""

    def __init__(
        self, app: ASGIApp, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
    ) -> None:
        raw = [(name.encode("latin-1"), value.encode("latin-1")) for name, value in (headers or {}).items()]
        self._scope: dict[str, Any] = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": method,
            "scheme": "http",
            "path": path,
            "raw_path": quote(path).encode(),
            "query_string": b"",
            "root_path": "",
            "headers": [(b"host", b"grpc"), (b"content-type", b"application/json"), *raw],
            "client": ("grpc", 0),
            "server": ("grpc", 0),
            "state": {},
        }
        self._app = app
        self._body = body
        self._body_sent = False
        self._gone = asyncio.Event()
        self._messages: asyncio.Queue[Message] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self.status = 0
        self.headers: dict[str, str] = {}

    async def start(self) -> None:
        """Run the request until its response starts: ``status`` and ``headers`` are then set."""
        self._task = asyncio.create_task(self._run())
        message = await self._messages.get()
        if message["type"] == _END:
            raise RuntimeError("the app answered nothing")
        self.status = message["status"]
        self.headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in message.get("headers", [])}

    async def body(self) -> AsyncIterator[bytes]:
        """The response body, piece by piece as the app sends it."""
        while True:
            message = await self._messages.get()
            if message["type"] == _END:
                return
            if message.get("body"):
                yield message["body"]
            if not message.get("more_body", False):
                return

    async def read(self) -> bytes:
        return b"".join([piece async for piece in self.body()])

    async def close(self) -> None:
        """The client is gone: the app sees ``http.disconnect`` (a running request is aborted) and ends."""
        self._gone.set()
        if self._task is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(self._task), _CLOSE_TIMEOUT_S)

    async def _run(self) -> None:
        try:
            await self._app(self._scope, self._receive, self._send)
        finally:
            self._messages.put_nowait({"type": _END})

    async def _receive(self) -> Message:
        if not self._body_sent:
            self._body_sent = True
            return {"type": "http.request", "body": self._body, "more_body": False}
        await self._gone.wait()
        return {"type": "http.disconnect"}

    async def _send(self, message: Message) -> None:
        if message["type"] in ("http.response.start", "http.response.body"):
            self._messages.put_nowait(message)
