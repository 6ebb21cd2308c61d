"""Per-request records and the summary statistics ``vllm bench serve`` reports, defined the same way.

- TTFT: from sending the request to the first chunk that carries text.
- ITL: every gap between consecutive text-carrying chunks, pooled over all requests.
- TPOT: per request, (end-to-end latency - TTFT) / (output tokens - 1); requests of one token
  have none.
- E2EL: from sending the request to its last byte.
- Throughput divides by the run's wall time, from the first request sent to the last answered.
- Goodput counts only requests that met every SLO, per second of wall time.

Where a server streams several tokens in one chunk, ITL (like vLLM's) measures chunks, not
tokens; TPOT is the per-token figure.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

PERCENTILES = (50, 90, 99)


@dataclass
class RequestRecord:
    """What one request did, as timestamps relative to its own start (seconds)."""

    prompt_tokens: int = 0
    output_tokens: int = 0
    ttft: float | None = None
    latency: float = 0.0
    chunk_times: list[float] = field(default_factory=list)  # arrival of each text-carrying chunk
    start: float = 0.0  # absolute, on the run's clock
    error: str | None = None
    status: int | None = None  # HTTP status; None when no response came
    code: str | None = None  # an error response's code (a 429's slo_exceeded, say)
    finish_reason: str | None = None  # the last one a choice reported (stop, length)
    text: str | None = None  # the answer's text, where the client was asked to keep it

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def itls(self) -> list[float]:
        return [b - a for a, b in zip(self.chunk_times, self.chunk_times[1:], strict=False)]

    @property
    def tpot(self) -> float | None:
        if self.ttft is None or self.output_tokens < 2:
            return None
        return (self.latency - self.ttft) / (self.output_tokens - 1)


@dataclass(frozen=True)
class SLO:
    ttft_s: float = 1.0
    tpot_s: float = 0.1

    def met_by(self, record: RequestRecord) -> bool:
        tpot = record.tpot
        return (
            record.ok
            and record.ttft is not None
            and record.ttft <= self.ttft_s
            and (tpot is None or tpot <= self.tpot_s)
        )


@dataclass(frozen=True)
class Distribution:
    mean: float
    p50: float
    p90: float
    p99: float

    @classmethod
    def of(cls, values: list[float]) -> Distribution:
        if not values:
            nan = float("nan")
            return cls(nan, nan, nan, nan)
        array = np.asarray(values, dtype=float)
        p50, p90, p99 = (float(np.percentile(array, p)) for p in PERCENTILES)
        return cls(float(array.mean()), p50, p90, p99)


@dataclass(frozen=True)
class Summary:
    completed: int
    failed: int
    duration_s: float
    prompt_tokens: int
    output_tokens: int
    request_throughput: float
    output_throughput: float
    total_token_throughput: float
    goodput: float
    ttft: Distribution
    tpot: Distribution
    itl: Distribution
    e2el: Distribution

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def summarize(records: list[RequestRecord], duration_s: float, slo: SLO) -> Summary:
    done = [r for r in records if r.ok]
    prompt_tokens = sum(r.prompt_tokens for r in done)
    output_tokens = sum(r.output_tokens for r in done)
    per_s = 1.0 / duration_s if duration_s > 0 else 0.0
    return Summary(
        completed=len(done),
        failed=len(records) - len(done),
        duration_s=duration_s,
        prompt_tokens=prompt_tokens,
        output_tokens=output_tokens,
        request_throughput=len(done) * per_s,
        output_throughput=output_tokens * per_s,
        total_token_throughput=(prompt_tokens + output_tokens) * per_s,
        goodput=sum(slo.met_by(r) for r in done) * per_s,
        ttft=Distribution.of([r.ttft for r in done if r.ttft is not None]),
        tpot=Distribution.of([t for r in done if (t := r.tpot) is not None]),
        itl=Distribution.of([gap for r in done for gap in r.itls]),
        e2el=Distribution.of([r.latency for r in done]),
    )
