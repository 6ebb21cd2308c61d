"""``x-request-id`` on every response, and on ise's log lines, so operators can correlate them.

OpenAI sends the header on every response and the openai SDK exposes it (``_request_id``); a
client that sends its own (a gateway's trace id, say) gets that value back. The middleware sits
on the raw ASGI messages, so streamed responses and error responses carry it as well.
"""

from __future__ import annotations

import logging
import uuid
from contextvars import ContextVar

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

HEADER = "x-request-id"
_HEADER_BYTES = HEADER.encode()

# Each request runs in its own asyncio task, so the value never leaks between requests. It is
# left set after the request so that the outermost error handler (Starlette runs it outside every
# middleware) still sees it.
current_request_id: ContextVar[str | None] = ContextVar("current_request_id", default=None)


class RequestIdMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = Headers(scope=scope).get(HEADER, "").strip() or uuid.uuid4().hex
        current_request_id.set(request_id)
        header = (_HEADER_BYTES, request_id.encode("latin-1"))

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [h for h in message.get("headers", []) if h[0].lower() != _HEADER_BYTES]
                message = {**message, "headers": [*headers, header]}
            await send(message)

        await self.app(scope, receive, send_with_id)


class RequestIdLogFilter(logging.Filter):
    """Adds ``request_id`` to every log record: the current request's, or ``-`` outside one."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = current_request_id.get() or "-"
        return True
