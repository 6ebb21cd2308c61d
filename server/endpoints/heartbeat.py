"""What a stream sends while it has nothing else to send: keep-alives, and where it waits in the queue.

Proxies and load balancers cut connections that carry no bytes for a while (commonly 60 s). A
stream that waits in the queue, reads a long prompt or pauses between tokens sends, every
``--sse-keep-alive-interval`` seconds, vLLM's comment line ``: keep-alive`` (Anthropic's ``ping``
event on Messages streams). Every SSE client skips comment lines. The timer runs beside the
stream, so it costs nothing per token; unlike vLLM's, which sends one only after that many
seconds without a token, it does not watch the tokens go by, so a busy stream gets one per
interval too.

A stream whose request sends ``x-ise-queue-position: true`` also gets, as soon as it opens and
then every second while it waits for its first token, a comment saying where it stands:
``: queue position=2 waiting=5 estimated_wait_ms=1200`` (``estimated_wait_ms`` left out until the
server has measured its rates).
"""

from __future__ import annotations

import time

from sse_starlette import ServerSentEvent

from server.gateway.admission import Ticket
from server.protocol.errors import invalid_request

QUEUE_POSITION_HEADER = "x-ise-queue-position"
POSITION_INTERVAL_S = 1.0
KEEP_ALIVE = ServerSentEvent(comment="keep-alive", sep="\n")  # vLLM's ": keep-alive" line


def wants_queue_position(value: str | None) -> bool:
    """The ``x-ise-queue-position`` header's value: true/1, false/0 or absent; else a 400 naming it."""
    if value is None:
        return False
    match value.strip().lower():
        case "true" | "1":
            return True
        case "false" | "0":
            return False
    raise invalid_request(f"The {QUEUE_POSITION_HEADER} header must be true or false.", param=QUEUE_POSITION_HEADER)


class Heartbeat:
    """Decides, at each tick of the stream's timer (``tick_s``), what to send: a position, a keep-alive, or nothing."""

    def __init__(self, keepalive: ServerSentEvent | None, interval_s: float, ticket: Ticket | None) -> None:
        """``keepalive``: the format's own event (None: the comment line); ``ticket``: report its queue position."""
        self.keepalive = keepalive or KEEP_ALIVE
        self.interval_s = interval_s
        self.ticket = ticket
        self.tick_s = interval_s if ticket is None else min(interval_s or POSITION_INTERVAL_S, POSITION_INTERVAL_S)
        self._last = time.monotonic()

    def position(self) -> ServerSentEvent | None:
        """The queue-position comment, while the request waits for its first token (else None)."""
        if self.ticket is None or not self.ticket.waiting:
            return None
        self._last = time.monotonic()
        where = self.ticket.queue_position()
        text = f"queue position={where.position} waiting={where.waiting}"
        if where.estimated_wait_s is not None:
            text += f" estimated_wait_ms={round(where.estimated_wait_s * 1000)}"
        return ServerSentEvent(comment=text, sep="\n")

    def __call__(self) -> ServerSentEvent | None:
        position = self.position()
        if position is not None:
            return position
        now = time.monotonic()
        if self.interval_s and now - self._last >= self.interval_s - self.tick_s / 2:
            self._last = now
            return self.keepalive
        return None
