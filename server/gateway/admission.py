"""Admission: which requests the server takes on, and what it knows of each while it runs.

Every refusal happens here, before the response starts, so a streaming client's 429 or 503 is
its HTTP status and never an error inside a 200 stream. A request is refused when the server is
draining (503), when the waiting queue is full (``--max-waiting-requests``,
``--max-waiting-prompt-tokens``: 429), or when its predicted time to first token misses its
target (``--slo-ttft-ms`` or the ``x-slo-ttft-ms`` header: 429), predicted from the prompt
tokens queued ahead, the batch slots it must wait for, and rates measured on the requests served
(``predict_ttft``); a request that would be scheduled at once is always admitted. No peer does
the last: vLLM, TGI and llama.cpp accept the work and let it miss its deadline, which under
overload makes every request late. Refusing at once, with an honest ``Retry-After``, keeps admitted requests on time
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
from dataclasses import dataclass
from typing import Protocol, TypeVar

from adapters.engine import FinishReason
from server.gateway.options import GatewayArgs
from server.gateway.request_record import RequestContext, RequestObserver, RequestRecord
from server.gateway.ttft_model import TTFTModel
from server.gateway.vllm_metrics import RequestMetrics
from server.protocol.common import ServerTiming
from server.protocol.errors import APIError, retry_after

SLO_HEADER = "x-slo-ttft-ms"


class Progress(Protocol):
    """What a request's output events tell admission and the metrics: tokens generated, when the
    engine began, prompt tokens the prefix cache served, and how a choice finished."""

    @property
    def index(self) -> int: ...
    @property
    def num_tokens(self) -> int: ...
    @property
    def scheduled_at(self) -> float | None: ...
    @property
    def num_cached_tokens(self) -> int | None: ...
    @property
    def finish_reason(self) -> str | None: ...


E = TypeVar("E", bound=Progress)
_DECODE_EMA = 0.1  # weight of each finished request in the decode-time average


class Ticket:
    """One admitted request: its place in the waiting queue, its timings, and its event inbox.

    ``inbox`` is the queue the request's choices put their events into (``Generation.run``); a
    drain puts an error there to end the request with that error.
    """

    def __init__(
        self, admission: Admission, prompt_tokens: int, tokens_ahead: int, sequences: int, slots_short: int
    ) -> None:
        self._admission = admission
        self.prompt_tokens = prompt_tokens
        self.tokens_ahead = tokens_ahead  # waiting prompt tokens before this one, its own included
        self.sequences = sequences  # batch slots it takes: one per prompt and choice
        self.usage_prompt_tokens = prompt_tokens  # as the response's usage counts them (once per prompt)
        self.slots_short = slots_short  # sequences that had to end before it could be scheduled
        self.inbox: asyncio.Queue[object] = asyncio.Queue()
        self.admitted_at = time.monotonic()
        self.first_token_at: float | None = None
        self.scheduled_at: float | None = None  # when the engine first scheduled it, if it says
        self.ended_at: float | None = None
        self.completion_tokens = 0
        self.cached_tokens = 0
        self.client_gone = False  # the client disconnected (rather than stopped reading)
        self.aborted: str | None = None  # why the request ended unfinished: client_disconnect, send_timeout
        self.failed = False  # its events ended in an error
        self.closed_early = False  # its events were closed before they ended (an abort)
        self.finish_reason: FinishReason | None = None  # "length" if any choice ran out, else "stop"
        self.metrics: RequestMetrics | None = None  # set by the gateway: where its tokens are timed
        self.observers: tuple[RequestObserver, ...] = ()  # set by the gateway: who reads its record as it ends
        self.context = RequestContext()  # set by the gateway: who sent it, its targets, its trace
        self.number = admission.admitted  # its place in the order of admission (queue positions)
        self.n = 1
        self.max_tokens = 0
        self.last_token_at: float | None = None
        self._last_token_at: dict[int, float] = {}  # each choice's, by index

    @property
    def waiting(self) -> bool:
        return self.first_token_at is None and self.ended_at is None

    def first_token(self) -> None:
        """The first token arrived: the request leaves the waiting queue and teaches the TTFT model."""
        if not self.waiting:
            return
        self.first_token_at = time.monotonic()
        self._admission.leave_waiting(self)
        if self.slots_short == 0:  # a pure prefill wait: what the TTFT model describes
            self._admission.ttft.observe(self.tokens_ahead, self.first_token_at - self.admitted_at)

    def end(self) -> None:
        if self.ended_at is not None:
            return
        if self.waiting:
            self._admission.leave_waiting(self)
        self.ended_at = time.monotonic()
        self._admission.release(self)
        if self.observers:
            record = self.record()
            for observe in self.observers:
                observe(record)

    def queue_position(self) -> QueuePosition:
        """Where the request stands while it waits for its first token."""
        return self._admission.queue_position(self)

    def server_timing(self) -> ServerTiming:
        """Where the request's time went, in milliseconds (ends now if the request has not ended)."""
        r = self.record()
        return ServerTiming(
            queue=_ms(r.queued), prefill=_ms(r.prefill), ttft=_ms(r.ttft), decode=_ms(r.decode), total=_ms(r.e2e)
        )

    def record(self) -> RequestRecord:
        """The request as it is (as it ended, once it has), for the metrics and Server-Timing."""
        ended = self.ended_at or time.monotonic()
        scheduled, first, last = self.scheduled_at, self.first_token_at, self.last_token_at
        reason: FinishReason | None = (
            "abort" if self.aborted or self.closed_early else None if self.failed else self.finish_reason
        )
        return RequestRecord(
            finish_reason=reason,
            prompt_tokens=self.usage_prompt_tokens,
            generation_tokens=self.completion_tokens,
            cached_tokens=self.cached_tokens,
            n=self.n,
            max_tokens=self.max_tokens,
            e2e=ended - self.admitted_at,
            queued=None if scheduled is None else max(0.0, scheduled - self.admitted_at),
            ttft=None if first is None else first - self.admitted_at,
            prefill=None if scheduled is None or first is None else max(0.0, first - scheduled),
            decode=None if first is None or last is None else last - first,
            inference=None if scheduled is None or last is None else max(0.0, last - scheduled),
            sequences=self.sequences,
            context=self.context,
        )

    async def track(self, events: AsyncGenerator[E, None]) -> AsyncGenerator[E, None]:
        """``events``, noting the first and counting tokens; the ticket ends when they do (or are closed)."""
        finished = False
        try:
            async with aclosing(events):
                async for event in events:
                    self.scheduled_at = self.scheduled_at or event.scheduled_at
                    self._tokens(event)
                    yield event
            finished = True
        except Exception:
            finished = self.failed = True
            raise
        finally:
            self.closed_early = not finished  # closed by its response: the client left or stopped reading
            self.end()

    def _tokens(self, event: E) -> None:
        """Count an event's tokens and time them: the first token's wait, then each choice's gaps between tokens.

        An event carries several tokens where their text was held back (a partial character, a
        possible stop string): the gap since the choice's last event is split evenly among them,
        so a choice of N tokens always shows N - 1 gaps, summing to its decode time.
        """
        now = time.monotonic()
        if self.waiting:
            self.first_token()
            if self.metrics is not None:
                self.metrics.first_token(now - self.admitted_at)
        tokens = event.num_tokens
        if tokens:
            last = self._last_token_at.get(event.index)
            gaps, gap = (tokens - 1, 0.0) if last is None else (tokens, (now - last) / tokens)
            if self.metrics is not None:
                for _ in range(gaps):
                    self.metrics.token_gap(gap)
            self._last_token_at[event.index] = self.last_token_at = now
        self.completion_tokens += tokens
        self.cached_tokens += event.num_cached_tokens or 0
        if event.finish_reason is not None and self.finish_reason != "length":
            self.finish_reason = "length" if event.finish_reason == "length" else "stop"


@dataclass(frozen=True)
class QueuePosition:
    """A waiting request's place: 1 is next. ``estimated_wait_s``: until its first token (None: not yet measured)."""

    position: int
    waiting: int  # requests waiting in all
    estimated_wait_s: float | None


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


class Admission:
    def __init__(self, args: GatewayArgs | None = None, batch_slots: int | None = None) -> None:
        """``batch_slots``: sequences the engine runs at once (``--max-num-seqs``), where known."""
        args = args or GatewayArgs()
        self.max_waiting_requests = args.max_waiting_requests
        self.max_waiting_prompt_tokens = args.max_waiting_prompt_tokens
        self.slo_ttft_s = None if args.slo_ttft_ms is None else args.slo_ttft_ms / 1000
        self.ttft = TTFTModel()
        self.batch_slots = batch_slots
        self.tickets: set[Ticket] = set()
        self.sequences = 0  # batch slots the admitted requests take until they end
        self.waiting_requests = 0
        self.waiting_tokens = 0
        self.decode_s: float | None = None  # moving average of a request's time from first token to end
        self.draining = False
        self.admitted = 0  # requests admitted so far
        self._idle = asyncio.Event()  # set while no ticket is held
        self._idle.set()

    def admit(self, prompt_tokens: int, slo_ttft_s: float | None = None, sequences: int = 1) -> Ticket:
        """Take the request on, or raise ``APIError`` 503 (draining) or 429 (queue full, SLO missed).

        ``prompt_tokens``: the prompt tokens it will prefill (every prompt, every choice);
        ``slo_ttft_s``: its own TTFT target, else the server's; ``sequences``: prompts times n.
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
        slots_short = 0 if self.batch_slots is None else max(0, self.sequences + sequences - self.batch_slots)
        target = self.slo_ttft_s if slo_ttft_s is None else slo_ttft_s
        if target is not None:
            self._check_slo(tokens_ahead, slots_short, target)
        ticket = Ticket(self, prompt_tokens, tokens_ahead, sequences, slots_short)
        self.admitted += 1
        self.tickets.add(ticket)
        self.sequences += sequences
        self._idle.clear()
        self.waiting_requests += 1
        self.waiting_tokens += prompt_tokens
        return ticket

    def predict_ttft(self, tokens_ahead: int, slots_short: int) -> float | None:
        """Seconds to a new request's first token; None until the server has measured enough.

        The prefill part comes from the fitted TTFT model. A request that finds the batch full
        first waits for ``slots_short`` sequences to end; with ``batch_slots`` decoding side by
        side and each taking ``decode_s``, one ends every ``decode_s / batch_slots`` seconds.
        """
        prefill = self.ttft.predict(tokens_ahead)
        if prefill is None or slots_short == 0:
            return prefill
        if self.decode_s is None or not self.batch_slots:
            return None
        return prefill + slots_short * self.decode_s / self.batch_slots

    def queue_position(self, ticket: Ticket) -> QueuePosition:
        """``ticket``'s place among the waiting requests, in order of admission, and its predicted wait:
        the prefill of the prompt tokens waiting ahead of it (its own included), and, if the batch is
        full, the slots that must free first (as ``predict_ttft`` predicts a new request's TTFT).

        O(requests in flight): called about once a second per stream that asked, never per token.
        """
        ahead = [t for t in self.tickets if t.waiting and t.number < ticket.number]
        held = sum(t.sequences for t in self.tickets if t is not ticket and (not t.waiting or t.number < ticket.number))
        slots_short = 0 if self.batch_slots is None else max(0, held + ticket.sequences - self.batch_slots)
        tokens = sum(t.prompt_tokens for t in ahead) + ticket.prompt_tokens
        return QueuePosition(len(ahead) + 1, self.waiting_requests, self.predict_ttft(tokens, slots_short))

    def _check_slo(self, tokens_ahead: int, slots_short: int, target_s: float) -> None:
        if self.waiting_requests == 0 and slots_short == 0:
            # Scheduled at once: refusing it would help no request, and its TTFT keeps the model
            # current (a model that only ever predicts refusals would never learn it was wrong).
            return
        predicted = self.predict_ttft(tokens_ahead, slots_short)
        if predicted is None or predicted <= target_s:
            return  # met, or not yet measured: a server learns its rates from the requests it admits
        raise APIError(
            429,
            f"The time-to-first-token target of {target_s * 1000:.0f} ms would be missed: predicted "
            f"{predicted * 1000:.0f} ms behind {self.waiting_tokens} prompt tokens queued and "
            f"{slots_short} sequences to finish before a batch slot frees.",
            code="slo_exceeded",
            # The queue ahead drains at the measured rates, so after the excess the target fits again.
            headers=retry_after(predicted - target_s),
        )

    def release(self, ticket: Ticket) -> None:
        """The request ended: its batch slots free, and its decode time joins the average."""
        self.tickets.discard(ticket)
        self.sequences -= ticket.sequences
        if ticket.first_token_at is not None and ticket.ended_at is not None:
            decode = ticket.ended_at - ticket.first_token_at
            self.decode_s = decode if self.decode_s is None else self.decode_s + _DECODE_EMA * (decode - self.decode_s)
        if not self.tickets:
            self._idle.set()

    def leave_waiting(self, ticket: Ticket) -> None:
        self.waiting_requests -= 1
        self.waiting_tokens -= ticket.prompt_tokens

    def end_all(self, error: APIError) -> int:
        """End every running request with ``error`` (its stream's last event); how many there were."""
        for ticket in self.tickets:
            ticket.aborted = "shutdown"
            ticket.inbox.put_nowait(error)
        return len(self.tickets)

    async def wait_idle(self, timeout_s: float) -> bool:
        """Wait until no request runs, at most ``timeout_s``; whether none does."""
        if self.tickets:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), timeout_s)
        return not self.tickets
