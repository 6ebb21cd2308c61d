"""The SSE response: sse-starlette's, with a client that stopped reading dropped quietly, and a
heartbeat that may send nothing at a tick.

sse-starlette raises ``SendTimeoutError`` when one send waits past ``send_timeout``. Raised out of
the response it reaches Starlette's error handling and uvicorn's as two "unhandled" tracebacks,
for what is an expected event on a network: the stream's own code has already aborted the
request and counted it (``ise_requests_aborted_total{reason="send_timeout"}``). Here it ends the
response with one warning. uvicorn then reports the response as incomplete and closes the
connection; ``UnfinishedStreamFilter`` keeps that report out of the error log for these streams.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any

import anyio
from sse_starlette import EventSourceResponse, ServerSentEvent
from sse_starlette.sse import SendTimeoutError
from starlette.types import Receive, Scope, Send

log = logging.getLogger(__name__)

# Set in the request's own task, which is the task uvicorn reports an incomplete response from.
_dropped: ContextVar[bool] = ContextVar("stream_dropped_for_send_timeout", default=False)
_UNFINISHED = "ASGI callable returned without completing response."


class EventStream(EventSourceResponse):
    def __init__(
        self, content: Any, *, heartbeat: Callable[[], ServerSentEvent | None], tick_s: float, **kwargs: Any
    ) -> None:
        """``heartbeat`` is asked every ``tick_s`` seconds (0: never) what to send while nothing else is sent."""
        super().__init__(content, ping=tick_s, **kwargs)
        self.heartbeat = heartbeat

    async def _ping(self, send: Send) -> None:
        """sse-starlette's ping loop (which must send at every tick), sending only what ``heartbeat`` gives."""
        while self.active:
            await anyio.sleep(self.ping_interval)
            event = self.heartbeat()
            if event is None:
                continue
            async with self._send_lock:
                if self.active:
                    message = {"type": "http.response.body", "body": event.encode(), "more_body": True}
                    await self._send_with_timeout(send, message)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        except* SendTimeoutError:
            _dropped.set(True)
            log.warning("The client stopped reading for %s s; its stream was dropped", self.send_timeout)


class UnfinishedStreamFilter(logging.Filter):
    """Drops uvicorn's "incomplete response" error for streams dropped on a send timeout."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (_dropped.get() and record.getMessage() == _UNFINISHED)
