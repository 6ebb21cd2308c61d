"""What a long prompt does to streams already running: their inter-token latency while it is prefilled.

``N`` streams decode; once they are all going, one request with a long prompt arrives. A server
that prefills that prompt in one piece stalls every stream for the whole prefill; one that takes
it in chunks between decode steps keeps their pace. Reported: the streams' median ITL outside
the prefill (their own pace), their median and p99 ITL while the long prompt was prefilled (from
its arrival to its first token), the worst gap then, and the long request's TTFT.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from transformers import PreTrainedTokenizerBase

from benchmarks import flags
from benchmarks.clients import HttpClient
from benchmarks.metrics import RequestRecord
from benchmarks.save import save_result, subplots
from benchmarks.workloads import RequestSpec, random_workload


@dataclass(frozen=True)
class InterferenceResult:
    itl_p50_ms: float  # outside the prefill window: the streams' undisturbed pace
    itl_p50_during_ms: float
    itl_p99_during_ms: float
    worst_gap_during_prefill_ms: float
    long_prompt_ttft_s: float
    long_prompt_tokens: int
    streams: int
    gaps: list[tuple[float, float]]  # (when a gap ended, its length), seconds
    prefill_window: tuple[float, float]  # the long prompt sent, its first token

    @property
    def p99_over_median(self) -> float:
        """p99 ITL while the long prompt is prefilled over the streams' undisturbed median."""
        return self.itl_p99_during_ms / self.itl_p50_ms


async def measure(
    client: HttpClient,
    tokenizer: PreTrainedTokenizerBase,
    *,
    streams: int,
    prompt_len: int,
    stream_output: int,
    seed: int,
) -> InterferenceResult:
    stream_specs = random_workload(tokenizer, count=streams, input_len=64, output_len=stream_output, seed=seed)
    [long_spec] = random_workload(tokenizer, count=1, input_len=prompt_len, output_len=8, seed=seed + 1)
    clock = time.perf_counter()

    async def timed(spec: RequestSpec) -> RequestRecord:
        sent = time.perf_counter()
        record = await client.send(spec)
        record.start = sent - clock
        return record

    running = [asyncio.create_task(timed(spec)) for spec in stream_specs]
    await asyncio.sleep(1.5)  # every stream admitted and decoding
    long_record = await timed(long_spec)
    records = await asyncio.gather(*running)
    failed = [r.error for r in [*records, long_record] if not r.ok]
    if failed:
        raise RuntimeError(f"requests failed: {failed[:3]}")
    assert long_record.ttft is not None
    window = (long_record.start, long_record.start + long_record.ttft)
    gaps = [(r.start + b, b - a) for r in records for a, b in zip(r.chunk_times, r.chunk_times[1:], strict=False)]
    during = np.array([g for end, g in gaps if window[0] < end <= window[1]])
    outside = np.array([g for end, g in gaps if not window[0] < end <= window[1]])
    if not len(during) or not len(outside):
        raise RuntimeError("the streams must decode before, during and after the prefill: raise --stream-output")
    result = InterferenceResult(
        itl_p50_ms=float(np.percentile(outside, 50) * 1e3),
        itl_p50_during_ms=float(np.percentile(during, 50) * 1e3),
        itl_p99_during_ms=float(np.percentile(during, 99) * 1e3),
        worst_gap_during_prefill_ms=float(during.max() * 1e3),
        long_prompt_ttft_s=long_record.ttft,
        long_prompt_tokens=long_record.prompt_tokens,
        streams=streams,
        gaps=gaps,
        prefill_window=window,
    )
    return result


def save(result: InterferenceResult, out: Path) -> None:
    """Write the result as JSON and plot every gap over time, the prefill window shaded."""
    figure = _plot(result.gaps, result.prefill_window)
    save_result(out, "interference", result.__dict__, figures={"interference": figure})


def _plot(gaps: list[tuple[float, float]], window: tuple[float, float]) -> Figure:
    fig, ax = subplots(figsize=(8, 4))
    ax.axvspan(*window, color="orange", alpha=0.25, label="long prompt: sent to first token")
    ax.scatter([t for t, _ in gaps], [g * 1e3 for _, g in gaps], s=4)
    ax.set_xlabel("time since the first stream started (s)")
    ax.set_ylabel("inter-token gap of the running streams (ms)")
    ax.set_yscale("log")
    ax.legend(loc="upper right")
    return fig


def table(result: InterferenceResult) -> str:
    return "\n".join(
        [
            "| streams | long prompt tokens | ITL p50 ms, undisturbed | ITL p50 / p99 ms while prefilling "
            "| p99 while prefilling / undisturbed p50 | worst gap ms | long prompt TTFT s |",
            "|---|---|---|---|---|---|---|",
            f"| {result.streams} | {result.long_prompt_tokens} | {result.itl_p50_ms:.1f} "
            f"| {result.itl_p50_during_ms:.1f} / {result.itl_p99_during_ms:.1f} | {result.p99_over_median:.2f} "
            f"| {result.worst_gap_during_prefill_ms:.0f} | {result.long_prompt_ttft_s:.2f} |",
        ]
    )


HELP = "ITL of running streams while a long prompt arrives"
PARENT = flags.parent("endpoint", "model-dir", "prompt-len", "seed", "out", prompt_len=1500)


def add_cli_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--streams", type=int, default=8, help="streams decoding when the long prompt arrives")
    parser.add_argument("--stream-output", type=int, default=256, help="output tokens of each stream")


def main(args: argparse.Namespace) -> None:
    asyncio.run(_main(args))


async def _main(args: argparse.Namespace) -> None:
    _, tokenizer = flags.tokenizer(args)
    async with flags.endpoint(args) as client:
        result = await measure(
            client,
            tokenizer,
            streams=args.streams,
            prompt_len=args.prompt_len,
            stream_output=args.stream_output,
            seed=args.seed,
        )
    print(table(result))
    save(result, args.out)
