"""A sweep of load levels over one endpoint, with the workload identical for every target measured.

``ise bench run`` sweeps one endpoint; ``ise bench compare`` sweeps each target in turn.
"""

from __future__ import annotations

import argparse
from dataclasses import replace

from transformers import PreTrainedTokenizerBase

from benchmarks.clients import Client
from benchmarks.flags import Flag
from benchmarks.loadgen import LoadShape, run_load, warm_up
from benchmarks.metrics import SLO, summarize
from benchmarks.quiet import WINDOW_S, until_quiet
from benchmarks.report import Run
from benchmarks.workloads import RequestSpec, copy_workload, random_workload, shared_prefix_workload

# The shared flags a sweep takes (benchmarks.flags declares them).
FLAGS: tuple[Flag, ...] = (
    "model-dir", "input-len", "output-len", "prompts-per-stream", "min-prompts", "warmup", "max-duration",
    "slo-ttft", "slo-tpot", "seed", "out",
)  # fmt: skip


def add_workload_args(parser: argparse.ArgumentParser) -> None:
    """The sweep's own flags: the workload's shape and the load levels."""
    parser.add_argument(
        "--workload",
        choices=["random", "shared-prefix", "copy"],
        default="random",
        help="copy: chats asking for a paragraph back word for word (prompts of about 100 tokens)",
    )
    parser.add_argument("--prefix-len", type=int, default=1000, help="shared system prompt tokens (shared-prefix)")
    parser.add_argument(
        "--temperature", type=float, default=0.0, help="sampling temperature of every request (0: greedy)"
    )
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16, 32])
    parser.add_argument("--rate", type=float, nargs="+", help="Poisson arrival rates (req/s) instead of concurrency")


class Sweep:
    """The workload and load levels of one invocation, identical for every target."""

    def __init__(self, args: argparse.Namespace, tokenizer: PreTrainedTokenizerBase) -> None:
        self.args = args
        self.tokenizer = tokenizer
        self.slo = SLO(ttft_s=args.slo_ttft, tpot_s=args.slo_tpot)
        rates: list[float] | None = args.rate
        self.levels: list[tuple[int | None, float | None]] = (
            [(None, r) for r in rates] if rates else [(c, None) for c in args.concurrency]
        )

    def specs(self, count: int, seed: int, output_len: int | None = None) -> list[RequestSpec]:
        a = self.args
        out = output_len or a.output_len
        if a.workload == "shared-prefix":
            specs = shared_prefix_workload(
                self.tokenizer, count=count, prefix_len=a.prefix_len, input_len=a.input_len, output_len=out, seed=seed
            )
        elif a.workload == "copy":
            specs = copy_workload(count=count, output_len=out)
        else:
            specs = random_workload(self.tokenizer, count=count, input_len=a.input_len, output_len=out, seed=seed)
        return [replace(spec, temperature=a.temperature) for spec in specs]

    async def measure(self, target: str, label: str, client: Client, repeat: int = 0) -> list[Run]:
        a = self.args
        if a.warmup and not repeat:
            await warm_up(client, self.specs(a.warmup, seed=a.seed + 10_000, output_len=16), a.warmup)
        runs = []
        for index, (concurrency, rate) in enumerate(self.levels):
            width = concurrency or max(int((rate or 1) * 4), 1)
            count = max(a.min_prompts, a.prompts_per_stream * width)
            # Every target gets the same prompts in a pass; each pass new ones, or a repeat would
            # be served from the prefix cache the pass before filled.
            specs = self.specs(count, seed=a.seed + index + 1000 * repeat)
            shape = LoadShape(concurrency=concurrency, rate=rate, max_duration_s=a.max_duration, seed=a.seed)
            waited, busy = await until_quiet()
            if waited > 2 * WINDOW_S:
                print(f"{target} {shape.label()}: waited {waited:.1f} s for the cores to go quiet ({busy:.0f}% busy)")
            result = await run_load(client, specs, shape, desc=f"{target} {shape.label()}")
            summary = summarize(result.records, result.duration_s, self.slo)
            runs.append(Run(target, label, concurrency, rate, summary, result.records, repeat))
            print(
                f"{label:45s} {shape.label():16s} {summary.output_throughput:8.1f} tok/s  "
                f"TTFT p50 {summary.ttft.p50 * 1e3:7.0f} ms  ITL p50 {summary.itl.p50 * 1e3:6.1f} ms  "
                f"ok {summary.completed} failed {summary.failed}",
                flush=True,
            )
        return runs
