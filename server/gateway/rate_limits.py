"""Per-key requests- and tokens-per-minute limits, reported with OpenAI's rate-limit headers.

The counting is the ``limits`` library's sliding-window counter: O(1) memory per key and limit
whatever the cost of a hit (a moving window would store one timestamp per token), and a window
that slides instead of letting a burst through at each minute's start. ise adds what clients
read: OpenAI's ``x-ratelimit-{limit,remaining,reset}-{requests,tokens}`` headers on every
completion response, and on a 429 a ``Retry-After`` the openai SDK waits before retrying.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from limits import RateLimitItemPerMinute
from limits.storage import MemoryStorage
from limits.strategies import SlidingWindowCounterRateLimiter

from server.protocol.errors import APIError

_WINDOW_S = 60.0
RATE_LIMIT_HEADERS = tuple(
    f"x-ratelimit-{what}-{unit}" for unit in ("requests", "tokens") for what in ("limit", "remaining", "reset")
)


def duration(seconds: float) -> str:
    """OpenAI's spelling of a reset time: ``20ms``, ``1s``, ``6m0s``."""
    if seconds < 1:
        return f"{max(0, math.ceil(seconds * 1000))}ms"
    whole = math.ceil(seconds)
    minutes, secs = divmod(whole, 60)
    return f"{minutes}m{secs}s" if minutes else f"{secs}s"


@dataclass(frozen=True)
class _Window:
    """One limit's state after a hit (or a refused one), as ``limits``' sliding-window counter holds it.

    That counter weighs the previous fixed minute's count by the share of the current minute
    still to run, plus the current minute's count in full: ``previous * left / 60 + current``.
    So room comes back as the previous minute's weight fades, and the current minute's hits only
    start fading once it has ended.
    """

    limit: int
    previous: int  # hits counted in the previous fixed minute
    current: int  # hits counted in this one
    left_s: float  # seconds until this fixed minute ends

    @property
    def remaining(self) -> int:
        return max(0, self.limit - math.floor(self.previous * self.left_s / _WINDOW_S + self.current))

    def wait_s(self, amount: int) -> float:
        """Seconds until ``amount`` more units fit (assuming no other hits meanwhile)."""
        room = self.limit - amount
        if self.current <= room:  # within this minute, as the previous one's weight fades
            if self.previous == 0:
                return 0.0
            return max(0.0, self.left_s - (room - self.current) * _WINDOW_S / self.previous)
        # After this minute ends, its hits become the fading previous ones.
        return self.left_s + _WINDOW_S * (1 - room / self.current)

    def headers(self, unit: str) -> dict[str, str]:
        return {
            f"x-ratelimit-limit-{unit}": str(self.limit),
            f"x-ratelimit-remaining-{unit}": str(self.remaining),
            f"x-ratelimit-reset-{unit}": duration(self.wait_s(self.limit)),
        }


class RateLimits:
    """Counts each identity's requests and tokens in its own sliding one-minute windows."""

    def __init__(self) -> None:
        self._storage = MemoryStorage()
        self._limiter = SlidingWindowCounterRateLimiter(self._storage)

    def take(self, identity: str, unit: str, limit: int | None, cost: int) -> dict[str, str]:
        """Charge ``cost`` requests or tokens (``unit``) to ``identity``; the headers to send.

        Raises ``APIError`` 429 (``rate_limit_exceeded``) with ``Retry-After`` when the window
        lacks room; a cost above the whole limit can never pass and is marked not retryable.
        """
        if limit is None:
            return {}
        item = RateLimitItemPerMinute(limit)
        allowed = cost <= limit and self._limiter.hit(item, identity, unit, cost=cost)
        previous, _, current, current_ttl = self._storage.get_sliding_window(
            item.key_for(identity, unit), item.get_expiry()
        )
        # The current counter lives one minute past its own: what is left of this minute is the rest.
        window = _Window(limit, previous, current, current_ttl - _WINDOW_S)
        headers = window.headers(unit)
        if allowed:
            return headers
        if cost > limit:
            raise APIError(
                429,
                f"Request too large: it asks for {cost} {unit} and the limit is {limit} {unit} per minute.",
                code="rate_limit_exceeded",
                headers=headers,
                retryable=False,
            )
        wait = window.wait_s(cost)
        raise APIError(
            429,
            f"Rate limit reached: {limit} {unit} per minute, {window.remaining} left. Try again in {duration(wait)}.",
            code="rate_limit_exceeded",
            headers={
                **headers,
                "retry-after": str(max(1, math.ceil(wait))),
                "retry-after-ms": str(math.ceil(wait * 1000)),
            },
        )
