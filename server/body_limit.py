"""413 for request bodies over ``--max-request-body-bytes``, before any of the body is parsed.

Neither uvicorn nor Starlette bounds a body: a client could make the server buffer and parse
gigabytes of JSON. The middleware refuses a declared ``Content-Length`` over the limit at once,
and otherwise reads the body itself, counting, so chunked uploads are bounded too; the route
then reads the buffered body as usual.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server.errors import APIError, send_error


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = next((v for k, v in scope["headers"] if k.lower() == b"content-length"), None)
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(send)
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
                await self._refuse(send)
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

    async def _refuse(self, send: Send) -> None:
        message = f"The request body is larger than the server's limit of {self.max_bytes} bytes."
        # The rest of the body is never read: the connection cannot be reused.
        await send_error(send, APIError(413, message, code="request_too_large", headers={"connection": "close"}))
