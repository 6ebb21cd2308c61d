"""Every error under ``/v1/messages`` in Anthropic's shape, reshaped in one place.

ise's errors are OpenAI's everywhere they arise: the API-key and body-limit middleware, request
validation, rate limits, admission, the engine. Anthropic's SDKs (and Claude Code) read
``{"type": "error", "error": {"type", "message"}}`` and Anthropic's status codes, retrying 429,
529 and 5xx; so this middleware, outside all of those, rewrites an error response on an
Anthropic route once its body is complete (``anthropic_error`` maps the status and code: an
overloaded server is a 529). Streams are left alone: their own format sends errors as events.
"""

from __future__ import annotations

import json
import logging

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server.protocol.messages_response import anthropic_error

log = logging.getLogger(__name__)

PREFIX = "/v1/messages"


def is_messages_path(path: str) -> bool:
    return path == PREFIX or path.startswith(PREFIX + "/")


def reshape(status: int, body: bytes) -> tuple[int, bytes]:
    """An OpenAI-shaped error body as Anthropic's; any other body as it is."""
    try:
        error = json.loads(body).get("error")
    except (ValueError, AttributeError):
        return status, body
    if not isinstance(error, dict) or not isinstance(error.get("message"), str):
        return status, body
    status, shaped = anthropic_error(status, error.get("code"), error["message"])
    return status, shaped.model_dump_json().encode()


class MessagesErrorsMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not is_messages_path(scope["path"]):
            await self.app(scope, receive, send)
            return
        held: Message | None = None  # an error response's start, until its body is complete
        body: list[bytes] = []
        started = False

        async def reshaping(message: Message) -> None:
            nonlocal held, started
            if message["type"] == "http.response.start":
                content_type = Headers(raw=message.get("headers", [])).get("content-type", "")
                if message["status"] >= 400 and content_type.startswith("application/json"):
                    held = message
                    return
                started = True
            elif message["type"] == "http.response.body" and held is not None:
                body.append(message.get("body", b""))
                if message.get("more_body", False):
                    return
                started = True
                await _send_json(send, held, *reshape(held["status"], b"".join(body)))
                return
            await send(message)

        try:
            await self.app(scope, receive, reshaping)
        except Exception:
            if started:
                raise
            # Starlette would answer this outside every middleware, in OpenAI's shape.
            log.exception("Unhandled error")
            status, shaped = anthropic_error(500, None, "The server had an error while processing your request.")
            start: Message = {"type": "http.response.start", "status": status, "headers": []}
            await _send_json(send, start, status, shaped.model_dump_json().encode())


async def _send_json(send: Send, start: Message, status: int, body: bytes) -> None:
    headers = [(k, v) for k, v in start.get("headers", []) if k.lower() not in (b"content-length", b"content-type")]
    headers += [(b"content-length", str(len(body)).encode()), (b"content-type", b"application/json")]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})
