"""One log line per request, when it ends, under its ``x-request-id``.

The line has what an operator needs to answer "what happened to request X": method, path,
status, the key's name (never the key), and for completions the tokens and the time spent
queued (until the engine first scheduled it), prefilling (until the first token), decoding, and
in all; an unfinished request says
why it ended (client_disconnect, send_timeout). It is written when the last byte is sent or the
client is gone, so a stream is logged with its real duration. Prompts are not logged here
(``--log-prompts`` logs them when a request is admitted).
"""

from __future__ import annotations

import json
import logging
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server.gateway.admission import Ticket
from server.gateway.auth import STATE_KEY, APIKey

log = logging.getLogger("ise.access")


class AccessLogMiddleware:
    def __init__(self, app: ASGIApp, quiet_paths: frozenset[str] = frozenset()) -> None:
        """``quiet_paths``: paths whose requests get no line (--disable-access-log-for-endpoints)."""
        self.app = app
        self.quiet_paths = quiet_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.quiet_paths:
            await self.app(scope, receive, send)
            return
        started = time.monotonic()
        status = 0

        async def send_and_note(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            log.info("%s", _line(scope, status, time.monotonic() - started))


def _line(scope: Scope, status: int, elapsed_s: float) -> str:
    state = scope.get("state", {})
    key: APIKey | None = state.get(STATE_KEY)
    parts = [scope["method"], scope["path"], str(status or "-"), f"key={key.name if key else '-'}"]
    if state.get("model") is not None:  # set where the server serves several models: which one answered
        parts.append(f"model={state['model']}")
    if state.get("end_user") is not None:
        # OpenAI's ``user``: the client's own id for its end user, so abuse can be traced to one.
        parts.append(f"user={json.dumps(state['end_user'])}")
    ticket: Ticket | None = state.get("ticket")
    if ticket is not None:
        parts += [f"prompt_tokens={ticket.usage_prompt_tokens}", f"completion_tokens={ticket.completion_tokens}"]
        if ticket.first_token_at is not None and ticket.scheduled_at is not None:
            parts.append(f"queue={max(0.0, ticket.scheduled_at - ticket.admitted_at):.3f}s")
            parts.append(f"prefill={max(0.0, ticket.first_token_at - ticket.scheduled_at):.3f}s")
        elif ticket.first_token_at is not None:  # the engine does not say when it scheduled the request
            parts.append(f"queue_prefill={ticket.first_token_at - ticket.admitted_at:.3f}s")
        if ticket.first_token_at is not None:
            parts.append(f"decode={(ticket.ended_at or time.monotonic()) - ticket.first_token_at:.3f}s")
        if ticket.aborted:
            parts.append(f"aborted={ticket.aborted}")
    if state.get("refused"):
        parts.append(f"refused={state['refused']}")
    parts.append(f"total={elapsed_s:.3f}s")
    return " ".join(parts)
