"""The gateway's state and its checks on a request, in the order they cost: key, limits, admission.

``charge_request`` runs before the prompt is tokenized (a request over its rate limit costs
nothing more); ``admit`` runs once the request's token counts are known. Both raise the
``APIError`` the client gets, and count every refusal on ``/metrics`` by its code. The gateway
takes numbers (``Demand``), not an endpoint's request: every endpoint goes through it alike.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from fastapi import Request

from adapters.engine import EngineBase
from server.gateway.admission import SLO_HEADER, Admission, Ticket
from server.gateway.auth import STATE_KEY, APIKey
from server.gateway.metrics import Metrics
from server.gateway.options import GatewayArgs
from server.gateway.rate_limits import RateLimits
from server.gateway.request_id import current_request_id
from server.gateway.request_record import RequestContext
from server.gateway.tracing import TRACE_HEADERS, Tracing
from server.protocol.errors import APIError, invalid_request


@dataclass(frozen=True)
class Demand:
    """What a request asks of the server, in the numbers admission and the limits count."""

    usage_prompt_tokens: int  # its prompt tokens as the response's usage counts them: each prompt once
    prompt_tokens: int  # prompt tokens the engine reads: each prompt once per choice
    max_new_tokens: int  # tokens all its choices together may generate
    sequences: int  # engine requests: one per prompt and choice
    n: int = 1  # choices per prompt
    max_tokens: int = 0  # the most one choice may generate (its max_tokens, or the context it has left)


@dataclass
class Gateway:
    """Options, admission, the keys' rate limits and the metrics, shared by every route."""

    options: GatewayArgs
    engine: EngineBase
    batch_slots: int | None = None  # the engine's --max-num-seqs, for predicting slot waits
    model_name: str = ""  # the served name, which labels vLLM's series
    admission: Admission = field(init=False)
    rate_limits: RateLimits = field(init=False, default_factory=RateLimits)
    metrics: Metrics = field(init=False)
    tracing: Tracing | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        """Raises ValueError where tracing is asked for and cannot be set up."""
        self.admission = Admission(self.options, self.batch_slots)
        self.metrics = Metrics(self.engine, self.admission, self.model_name, self.options)
        if self.options.otlp_traces_endpoint is not None:
            self.tracing = Tracing(self.options.otlp_traces_endpoint, self.model_name)

    def charge_request(self, raw: Request) -> dict[str, str]:
        """Count the request against its key's requests-per-minute; the rate-limit headers to send."""
        key = _key(raw)
        limit = key.requests_per_minute if key is not None else self.options.requests_per_minute
        with self._counted(raw):
            return self.rate_limits.take(key_name(raw), "requests", limit, 1)

    def admit(self, raw: Request, demand: Demand) -> tuple[Ticket, dict[str, str]]:
        """Charge the demand's tokens and admit it; its ticket and the token rate-limit headers.

        Tokens charged: every prompt token the engine reads and every token the choices may
        generate (each one's ``max_tokens``, or the context it has left), as OpenAI counts them
        against a limit.
        """
        key = _key(raw)
        limit = key.tokens_per_minute if key is not None else self.options.tokens_per_minute
        slo = _slo_header(raw)
        with self._counted(raw):
            # Admitted first: a request the server cannot take must not use up the key's tokens.
            ticket = self.admission.admit(demand.prompt_tokens, slo, demand.sequences)
            ticket.usage_prompt_tokens = demand.usage_prompt_tokens
            ticket.n, ticket.max_tokens = demand.n, demand.max_tokens
            try:
                headers = self.rate_limits.take(
                    key_name(raw), "tokens", limit, demand.prompt_tokens + demand.max_new_tokens
                )
            except APIError:
                ticket.end()
                raise
            ticket.metrics = self.metrics.requests  # admitted: from here on the request is observed
            ticket.observers = self.metrics.observers
            trace_headers = {}
            if self.tracing is not None:
                ticket.observers = (*ticket.observers, self.tracing.finished)
                trace_headers = {name: raw.headers[name] for name in TRACE_HEADERS if name in raw.headers}
            ticket.context = RequestContext(
                request_id=current_request_id.get() or "",
                route=raw.scope.get("path", ""),
                api_key_name=key.name if key is not None else None,
                ttft_target=slo if slo is not None else self.admission.slo_ttft_s,
                started_at=time.time(),
                trace_headers=trace_headers,
            )
            return ticket, headers

    async def close(self) -> None:
        """Export the trace spans still queued (off the event loop: the collector may be slow)."""
        if self.tracing is not None:
            await asyncio.to_thread(self.tracing.shutdown)

    def aborted(self, ticket: Ticket, reason: str) -> None:
        """The request ended unfinished (``client_disconnect``, ``send_timeout``): noted and counted."""
        ticket.aborted = reason
        self.metrics.aborted.labels(reason).inc()

    @contextmanager
    def _counted(self, raw: Request) -> Iterator[None]:
        try:
            yield
        except APIError as exc:
            self.metrics.rejected.labels(exc.code or str(exc.status)).inc()
            raw.state.refused = exc.code  # for the request's log line
            raise


def _key(raw: Request) -> APIKey | None:
    key: APIKey | None = getattr(raw.state, STATE_KEY, None)
    return key


def key_name(raw: Request) -> str:
    """Who sent the request, for limits and logs: the key's name, or the client's address without keys."""
    key = _key(raw)
    if key is not None:
        return key.name
    return raw.client.host if raw.client is not None else "anonymous"


def _slo_header(raw: Request) -> float | None:
    """The request's own TTFT target, in seconds, from ``x-slo-ttft-ms``."""
    value = raw.headers.get(SLO_HEADER)
    if value is None:
        return None
    try:
        ms = float(value)
    except ValueError:
        ms = math.nan
    if not math.isfinite(ms) or ms <= 0:
        raise invalid_request(f"The {SLO_HEADER} header must be a positive number of milliseconds.", param=SLO_HEADER)
    return ms / 1000
