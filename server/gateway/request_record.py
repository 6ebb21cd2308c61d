"""One request as it ended, and who and what it was: what every per-request observer reads.

A ticket (``server.gateway.admission``) builds the record once, when its request ends, and hands
it to each observer the gateway registered: vLLM's per-request series, goodput, per-key usage, a
trace span. Nothing here is computed per token.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from adapters.engine import FinishReason


@dataclass(frozen=True)
class RequestContext:
    """Who sent a request and what it asked of the server, fixed when it is admitted."""

    request_id: str = ""  # its x-request-id
    route: str = ""  # the path it was sent to (/v1/chat/completions, ...)
    api_key_name: str | None = None  # the name of the key it came with (None: the server has no keys)
    ttft_target: float | None = None  # seconds: its own x-slo-ttft-ms, else --slo-ttft-ms (None: no target)
    started_at: float = 0.0  # wall-clock seconds since the epoch at admission (a trace span's start)
    trace_headers: Mapping[str, str] = field(default_factory=dict)  # W3C traceparent/tracestate, when traced


@dataclass(frozen=True)
class RequestRecord:
    """One request as it ended, in seconds and tokens (vLLM's ``FinishedRequestStats``, per API request)."""

    finish_reason: FinishReason | None  # None: it failed (vLLM's "error")
    prompt_tokens: int  # as usage counts them
    generation_tokens: int  # as usage counts them, every choice
    cached_tokens: int  # prompt tokens the prefix cache served (usage's cached_tokens)
    n: int
    max_tokens: int
    e2e: float  # admission to the end
    queued: float | None  # admission to the engine's first scheduling (None: the engine does not say)
    ttft: float | None  # admission to first token (None: no token)
    prefill: float | None  # first scheduling to first token
    decode: float | None  # first token to the last (None: no token)
    inference: float | None  # first scheduling to the last token
    sequences: int = 1  # engine requests behind it: prompts times n
    context: RequestContext = field(default_factory=RequestContext)

    @property
    def tpot(self) -> float | None:
        """Seconds per output token after the first, per sequence (None: no sequence made two tokens).

        The sequences of one request decode side by side, so the decode time is divided by one
        sequence's share of the tokens.
        """
        per_sequence = self.generation_tokens / max(1, self.sequences)
        if self.decode is None or per_sequence <= 1:
            return None
        return self.decode / (per_sequence - 1)

    @property
    def served(self) -> bool:
        """It ran to a finish (stop or length), neither failing nor aborted."""
        return self.finish_reason in ("stop", "length")


# What the gateway calls once per request as it ends.
RequestObserver = Callable[[RequestRecord], None]
