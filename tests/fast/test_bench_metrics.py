"""The benchmark's arithmetic, on timestamps whose answers are known."""

from __future__ import annotations

import math

import pytest

from benchmarks.limits import Limits, ModelCost
from benchmarks.metrics import SLO, Distribution, RequestRecord, summarize


def _record(start: float, chunk_times: list[float], tokens: int, prompt: int = 10) -> RequestRecord:
    return RequestRecord(
        prompt_tokens=prompt,
        output_tokens=tokens,
        ttft=chunk_times[0],
        latency=chunk_times[-1],
        chunk_times=chunk_times,
        start=start,
    )


def test_ttft_itl_tpot_from_timestamps() -> None:
    record = _record(0.0, [0.5, 0.6, 0.8, 1.1], tokens=4)
    assert record.ttft == 0.5
    assert record.itls == pytest.approx([0.1, 0.2, 0.3])
    # (latency - ttft) / (tokens - 1) = (1.1 - 0.5) / 3
    assert record.tpot == pytest.approx(0.2)
    assert _record(0.0, [0.5], tokens=1).tpot is None


def test_percentiles_interpolate_like_numpy() -> None:
    dist = Distribution.of([float(v) for v in range(1, 101)])
    assert dist.mean == pytest.approx(50.5)
    assert (dist.p50, dist.p90, dist.p99) == pytest.approx((50.5, 90.1, 99.01))
    assert math.isnan(Distribution.of([]).p50)


def test_summary_throughput_and_goodput() -> None:
    fast = _record(0.0, [0.2, 0.25, 0.3], tokens=3)  # TTFT 0.2 s, TPOT 0.05 s: meets the SLO
    slow_start = _record(0.5, [1.5, 1.55, 1.6], tokens=3)  # TTFT 1.5 s: misses it
    slow_decode = _record(1.0, [0.1, 0.4, 0.7], tokens=3)  # TPOT 0.3 s: misses it
    failed = RequestRecord(error="HTTP 500")
    summary = summarize([fast, slow_start, slow_decode, failed], duration_s=2.0, slo=SLO(ttft_s=1.0, tpot_s=0.1))
    assert (summary.completed, summary.failed) == (3, 1)
    assert summary.output_tokens == 9 and summary.prompt_tokens == 30
    assert summary.output_throughput == pytest.approx(4.5)
    assert summary.total_token_throughput == pytest.approx(19.5)
    assert summary.request_throughput == pytest.approx(1.5)
    assert summary.goodput == pytest.approx(0.5)
    assert summary.ttft.p50 == pytest.approx(0.2)
    assert summary.itl.mean == pytest.approx((0.05 * 4 + 0.3 * 2) / 6)


def test_roofline_is_memory_bound_for_one_stream_and_compute_bound_for_many() -> None:
    cost = ModelCost(
        weight_bytes=1e9,
        flops_per_token=1e9,
        prompt_flops_per_token=0.5e9,
        kv_bytes_per_token=1e3,
        attention_flops_per_context_token=1e3,
    )
    limits = Limits(threads=2, memory_gb_s=10.0, gemm_gflop_s=100.0, gemm_source="test", cost=cost)
    assert limits.decode_step_s(1, 0) == pytest.approx(0.1)  # 1 GB of weights at 10 GB/s
    assert limits.decode_step_s(1000, 0) == pytest.approx(10.0)  # 1,000 GFLOP at 100 GFLOP/s
    # One stream, 2 prompt tokens, 3 output tokens: a 1 GFLOP prefill, then two weight-bound steps.
    assert limits.run_throughput(1, 2, 3) == pytest.approx(3 / (0.01 + 0.1 + 0.1), rel=1e-3)
