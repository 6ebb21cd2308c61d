"""Admission: which requests the server takes on, and what it knows of each while it runs.

Every refusal happens here, before the response starts, so a streaming client's 429 or 503 is
its HTTP status and never an error inside a 200 stream. A request is refused when the server is
draining (503), when the waiting queue is full (``--max-waiting-requests``,
``--max-waiting-prompt-tokens``: 429), or when its predicted time to first token misses its
target (``--slo-ttft-ms`` or the ``x-slo-ttft-ms`` header: 429). No peer does the last: vLLM,
TGI and llama.cpp accept the work and let it miss its deadline, which under overload makes every
request late. Refusing at once, with an honest ``Retry-After``, keeps admitted requests on time
(see the goodput figures in benchmarks/RESULTS.md).

"Waiting" means admitted but without a first token yet: queued in the engine or prefilling. Each
admitted request holds a ``Ticket`` until it ends; the tickets are also how a drain finds and
ends the requests still running.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator
from contextlib import aclosing

from server.errors import APIError
from server.gateway_config import GatewayArgs
from server.generation import ChoiceEvent
from server.rate_limits import retry_after
from server.ttft_model import TTFTModel

SLO_HEADER = "x-slo-ttft-ms"


class Ticket:
    """One admitted request: its place in the waiting queue, its timings, and its event inbox.

    ``inbox`` is the queue the request's choices put their events into (``Generation.run``); a
    drain puts an error there to end the request with that error.
    """

    def __init__(self, admission: Admission, prompt_tokens: int, tokens_ahead: int) -> None:
        self._admission = admission
        self.prompt_tokens = prompt_tokens
        self.tokens_ahead = tokens_ahead  # waiting prompt tokens before this one, its own included
        self.inbox: asyncio.Queue[object] = asyncio.Queue()
        self.admitted_at = time.monotonic()
        self.first_token_at: float | None = None
        self.scheduled_at: float | None = None  # when the engine first scheduled it, if it says
        self.ended_at: float | None = None
        self.completion_tokens = 0
        self.client_gone = False  # the client disconnected (rather than stopped reading)
        self.aborted: str | None = None  # why the request ended unfinished: client_disconnect, send_timeout

    @property
    def waiting(self) -> bool:
        return self.first_token_at is None and self.ended_at is None

    def first_token(self) -> None:
        """The first token arrived: the request leaves the waiting queue and teaches the TTFT model."""
        if not self.waiting:
            return
        self.first_token_at = time.monotonic()
        self._admission.leave_waiting(self)
        self._admission.ttft.observe(self.tokens_ahead, self.first_token_at - self.admitted_at)

    def end(self) -> None:
        if self.ended_at is not None:
            return
        if self.waiting:
            self._admission.leave_waiting(self)
        self.ended_at = time.monotonic()
        self._admission.tickets.discard(self)
        if not self._admission.tickets:
            self._admission._idle.set()

    async def track(self, events: AsyncGenerator[ChoiceEvent, None]) -> AsyncGenerator[ChoiceEvent, None]:
        """``events``, noting the first and counting tokens; the ticket ends when they do (or are closed)."""
        try:
            async with aclosing(events):
                async for event in events:
                    self.scheduled_at = self.scheduled_at or event.scheduled_at
                    self.first_token()
                    self.completion_tokens += event.num_tokens
                    yield event
        finally:
            self.end()


class Admission:
    def __init__(self, args: GatewayArgs | None = None) -> None:
        args = args or GatewayArgs()
        self.max_waiting_requests = args.max_waiting_requests
        self.max_waiting_prompt_tokens = args.max_waiting_prompt_tokens
        self.slo_ttft_s = None if args.slo_ttft_ms is None else args.slo_ttft_ms / 1000
        self.ttft = TTFTModel()
        self.tickets: set[Ticket] = set()
        self.waiting_requests = 0
        self.waiting_tokens = 0
        self.draining = False
        self._idle = asyncio.Event()  # set while no ticket is held
        self._idle.set()

    def admit(self, prompt_tokens: int, slo_ttft_s: float | None = None) -> Ticket:
        """Take the request on, or raise ``APIError`` 503 (draining) or 429 (queue full, SLO missed).

        ``prompt_tokens``: the prompt tokens it will prefill (every prompt, every choice);
        ``slo_ttft_s``: its own TTFT target, else the server's.
        """
        if self.draining:
            raise APIError(
                503,
                "The server is shutting down and takes no new requests.",
                code="server_shutting_down",
                headers={"retry-after": "1"},
            )
        tokens_ahead = self.waiting_tokens + prompt_tokens
        full = (self.max_waiting_requests is not None and self.waiting_requests >= self.max_waiting_requests) or (
            self.max_waiting_prompt_tokens is not None
            and self.waiting_requests
            and tokens_ahead > self.max_waiting_prompt_tokens
        )
        if full:
            raise APIError(
                429,
                f"The server is at capacity ({self.waiting_requests} requests, {self.waiting_tokens} prompt tokens "
                "waiting). Try again shortly.",
                code="server_overloaded",
                headers=retry_after(self.ttft.predict(self.waiting_tokens)),
            )
        target = self.slo_ttft_s if slo_ttft_s is None else slo_ttft_s
        if target is not None:
            self._check_slo(prompt_tokens, tokens_ahead, target)
        ticket = Ticket(self, prompt_tokens, tokens_ahead)
        self.tickets.add(ticket)
        self._idle.clear()
        self.waiting_requests += 1
        self.waiting_tokens += prompt_tokens
        return ticket

    def _check_slo(self, prompt_tokens: int, tokens_ahead: int, target_s: float) -> None:
        predicted = self.ttft.predict(tokens_ahead)
        if predicted is None or predicted <= target_s:
            return  # met, or not yet measured: a server learns its rates from the requests it admits
        idle = self.ttft.predict(prompt_tokens)
        if idle is not None and idle > target_s:
            raise APIError(
                429,
                f"The time-to-first-token target of {target_s * 1000:.0f} ms cannot be met for this request even "
                f"on an idle server (predicted {idle * 1000:.0f} ms for its {prompt_tokens} prompt tokens).",
                code="slo_unattainable",
                retryable=False,
            )
        raise APIError(
            429,
            f"The time-to-first-token target of {target_s * 1000:.0f} ms would be missed: predicted "
            f"{predicted * 1000:.0f} ms behind the {self.waiting_tokens} prompt tokens queued ahead.",
            code="slo_exceeded",
            # The queue ahead drains at the measured rate, so after the excess the target fits again.
            headers=retry_after(predicted - target_s),
        )

    def leave_waiting(self, ticket: Ticket) -> None:
        self.waiting_requests -= 1
        self.waiting_tokens -= ticket.prompt_tokens

    def end_all(self, error: APIError) -> int:
        """End every running request with ``error`` (its stream's last event); how many there were."""
        for ticket in self.tickets:
            ticket.inbox.put_nowait(error)
        return len(self.tickets)

    async def wait_idle(self, timeout_s: float) -> bool:
        """Wait until no request runs, at most ``timeout_s``; whether none does."""
        if self.tickets:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), timeout_s)
        return not self.tickets
