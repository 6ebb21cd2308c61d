"""413 for request bodies over ``--max-request-body-bytes``, before any of the body is parsed.

Neither uvicorn nor Starlette bounds a body: a client could make the server buffer and parse
gigabytes of JSON. The middleware refuses a declared ``Content-Length`` over the limit without
buffering any of it, and otherwise reads the body itself, counting, so chunked uploads are bounded
too; the route then reads the buffered body as usual.
"""

from __future__ import annotations

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server.protocol.errors import APIError, api_error_response

# How much of an oversized body is read and dropped before the 413, as a multiple of the limit.
_DRAIN_FACTOR = 4


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client left before sending it all
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await self._refuse(scope, receive, send, more=message.get("more_body", False))
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()  # later: the client's disconnect, as the route expects
            replayed = True
            return {"type": "http.request", "body": b"".join(chunks), "more_body": False}

        await self.app(scope, replay, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, *, more: bool = True) -> None:
        """413, once the rest of the body is read and dropped (up to a bound).

        Closing while the client still sends makes its kernel answer the remaining bytes with a
        reset, which often destroys the 413 before the client reads it: so the body is drained
        first, as nginx's lingering close does. A body past the bound gets the 413 and a close.
        """
        drained = 0
        budget = _DRAIN_FACTOR * self.max_bytes
        while more and drained <= budget:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client is gone: nobody to answer
            drained += len(message.get("body", b""))
            more = message.get("more_body", False)
        text = f"The request body is larger than the server's limit of {self.max_bytes} bytes."
        # With the body not read to its end, the connection cannot carry another request.
        headers = {"connection": "close"} if more else {}
        error = APIError(413, text, code="request_too_large", headers=headers)
        await api_error_response(error)(scope, receive, send)
