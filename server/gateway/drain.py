"""SIGTERM drains: new requests get 503, running ones finish, then the server exits 0.

uvicorn's own SIGTERM handling closes the listener and waits for open connections, and
sse-starlette's cancels every stream at once; neither lets a load balancer see the server go
unhealthy while in-flight streams complete. ``DrainingServer`` takes SIGTERM itself: it marks the
server draining (``/health`` answers 503, new requests 503 with ``Retry-After``), waits up to
``--drain-timeout`` for the admitted requests to end, ends any still running with a final error
event (a 503 for non-streamed ones), and only then lets uvicorn shut down. A second SIGTERM, or
SIGINT, stops at once as uvicorn would.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import signal
import socket
from collections.abc import Sequence
from types import FrameType

import uvicorn
from sse_starlette.sse import AppStatus

from server.gateway.gateway import Gateway
from server.protocol.errors import APIError

log = logging.getLogger(__name__)

# Grace for streams ended by the drain to send their error event and [DONE] before uvicorn closes.
_END_GRACE_S = 5.0

# ise drains streams itself; sse-starlette would otherwise cancel them on the first SIGTERM.
AppStatus.disable_automatic_graceful_drain()  # type: ignore[no-untyped-call]  # sse-starlette is untyped


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, gateway: Gateway | Sequence[Gateway]) -> None:
        """``gateway``: the server's, or each model's where it serves several (all drain together)."""
        super().__init__(config)
        self.gateways = [gateway] if isinstance(gateway, Gateway) else list(gateway)
        self.gateway = self.gateways[0]
        self._loop: asyncio.AbstractEventLoop | None = None
        self._drain: asyncio.Task[None] | None = None

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().startup(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if sig != signal.SIGTERM or self._loop is None or self.gateway.admission.draining:
            super().handle_exit(sig, frame)
            return
        for gateway in self.gateways:
            gateway.admission.draining = True
        # A signal handler runs between two bytecodes of the loop's thread: hand the work to the loop,
        # in a context of its own (not the interrupted request's, whose id the log lines would carry).
        self._loop.call_soon_threadsafe(self._start_drain, context=contextvars.Context())

    def _start_drain(self) -> None:
        self._drain = asyncio.get_running_loop().create_task(self._run_drain())

    async def _run_drain(self) -> None:
        await asyncio.gather(*(self._drain_one(gateway) for gateway in self.gateways))
        log.info("Drained; shutting down")
        self.should_exit = True

    async def _drain_one(self, gateway: Gateway) -> None:
        admission, timeout = gateway.admission, gateway.options.drain_timeout
        log.info("SIGTERM: draining %d in-flight requests (up to %.1f s)", len(admission.tickets), timeout)
        if not await admission.wait_idle(timeout):
            ended = admission.end_all(
                APIError(503, "The server shut down before the request finished.", code="server_shutting_down")
            )
            gateway.metrics.aborted.labels("shutdown").inc(ended)
            log.warning("Drain timeout: ended %d requests still running", ended)
            await admission.wait_idle(_END_GRACE_S)
