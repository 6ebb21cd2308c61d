"""The gateway's checks on a completion request, in the order they cost: key, limits, admission.

``charge_request`` runs before the prompt is tokenized (a request over its rate limit costs
nothing more); ``admit`` runs once the job is built and its tokens are known. Both raise the
``APIError`` the client gets, and count every refusal on ``/metrics`` by its code.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

from fastapi import Request

from server.endpoints.generation import Job
from server.endpoints.state import ServerState
from server.gateway.admission import SLO_HEADER, Ticket
from server.gateway.auth import STATE_KEY, APIKey
from server.protocol.errors import APIError, invalid_request


def _key(raw: Request) -> APIKey | None:
    key: APIKey | None = getattr(raw.state, STATE_KEY, None)
    return key


def key_name(raw: Request) -> str:
    """Who sent the request, for limits and logs: the key's name, or the client's address without keys."""
    key = _key(raw)
    if key is not None:
        return key.name
    return raw.client.host if raw.client is not None else "anonymous"


@contextmanager
def _counted(raw: Request, state: ServerState) -> Iterator[None]:
    try:
        yield
    except APIError as exc:
        state.metrics.rejected.labels(exc.code or str(exc.status)).inc()
        raw.state.refused = exc.code  # for the request's log line
        raise


def charge_request(raw: Request, state: ServerState) -> dict[str, str]:
    """Count the request against its key's requests-per-minute; the rate-limit headers to send."""
    key = _key(raw)
    limit = key.requests_per_minute if key is not None else state.gateway.requests_per_minute
    with _counted(raw, state):
        return state.rate_limits.take(key_name(raw), "requests", limit, 1)


def admit(raw: Request, state: ServerState, job: Job) -> tuple[Ticket, dict[str, str]]:
    """Charge the job's tokens and admit it; its ticket and the token rate-limit headers.

    Tokens charged: every prompt token and every token each choice may generate (its
    ``max_tokens``, or the context it has left), as OpenAI counts them against a limit.
    """
    key = _key(raw)
    limit = key.tokens_per_minute if key is not None else state.gateway.tokens_per_minute
    prompt_tokens = sum(len(p) for p in job.prompts) * job.n
    cost = prompt_tokens + job.n * sum(p.max_tokens for p in job.params)
    slo = _slo_header(raw)
    with _counted(raw, state):
        # Admitted first: a request the server cannot take must not use up the key's tokens.
        ticket = state.admission.admit(prompt_tokens, slo, len(job.prompts) * job.n)
        ticket.usage_prompt_tokens = prompt_tokens // job.n
        try:
            headers = state.rate_limits.take(key_name(raw), "tokens", limit, cost)
        except APIError:
            ticket.end()
            raise
        return ticket, headers


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
