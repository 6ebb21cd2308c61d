"""Waiting for the machine to go quiet before a measured run.

``ise bench compare`` keeps every target up and lets them take turns; a target that goes on
computing after its last answer (a peer's engine finishing its bookkeeping, a client post-processing
its results) would otherwise slow the next target's first requests and be charged to it.
"""

from __future__ import annotations

import asyncio
import time

import psutil

# The machine counts as quiet when its cores are this busy or less over one window (percent of
# all cores: background daemons and an idle target's housekeeping stay under it).
QUIET_PERCENT = 15.0
WINDOW_S = 0.5


async def until_quiet(max_wait_s: float = 30.0) -> tuple[float, float]:
    """Wait until a window of ``WINDOW_S`` seconds finds the cores at most ``QUIET_PERCENT`` busy, or
    ``max_wait_s`` passed; returns (seconds waited, busy percent of the first window)."""
    started = time.monotonic()
    first: float | None = None
    while True:
        busy = await asyncio.to_thread(psutil.cpu_percent, WINDOW_S)
        first = busy if first is None else first
        if busy <= QUIET_PERCENT or time.monotonic() - started >= max_wait_s:
            return time.monotonic() - started, first
