"""Engine steps timed directly, below the scheduler's and the server's overheads.

Answers "what did this change buy": the same decode batch and prompt burst through each model
implementation (ise's fused Llama-family forward, transformers' modules on the same paged cache
and kernels) in one process, taking turns several times over, each reported as its median pass,
so the ratios hold on a noisy machine.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from adapters.config import MODEL_IMPLS, ModelImpl
from adapters.cpu.model_runner import ModelRunner
from adapters.cpu.numerics import default_threads, resolve_dtype
from benchmarks import flags, profile
from benchmarks.engine_batch import BLOCK_SIZE, StepRun, decode_batch, engine_step
from benchmarks.save import meta, save_result, subplots
from server.config.settings import Settings


@dataclass(frozen=True)
class StepResult:
    impl: str
    batch: int
    prompt_len: int
    prefill_tokens_per_s: float  # the whole batch's prompts in one step
    decode_step_ms: float  # median step, every request decoding one token
    decode_tokens_per_s: float


def _measure(runner: ModelRunner, impl: str, batch: int, prompt_len: int, steps: int, seed: int) -> StepResult:
    scheduler = decode_batch(runner, batch, prompt_len, steps, seed)
    started = time.perf_counter()
    engine_step(runner, scheduler)
    prefill_s = time.perf_counter() - started
    times = []
    for _ in range(steps):
        started = time.perf_counter()
        engine_step(runner, scheduler)
        times.append(time.perf_counter() - started)
    step_s = statistics.median(times[2:])  # the first steps warm up
    return StepResult(impl, batch, prompt_len, batch * prompt_len / prefill_s, step_s * 1e3, batch / step_s)


def measure(
    model_dir: Path,
    *,
    impls: list[ModelImpl],
    dtype: torch.dtype,
    batches: list[int],
    prompt_len: int,
    steps: int,
    kernel_dir: Path,
    seed: int,
    repeats: int = 3,
) -> list[StepResult]:
    """Each implementation and batch size ``repeats`` times, in alternation; the median of each."""
    torch.set_num_threads(default_threads())
    runners = {
        impl: ModelRunner(
            model_dir, dtype=dtype, kv_cache_bytes=2**30, block_size=BLOCK_SIZE, kernel_dir=kernel_dir, model_impl=impl
        )
        for impl in impls
    }
    passes: dict[tuple[str, int], list[StepResult]] = {}
    for _ in range(repeats):
        for impl, runner in runners.items():
            for batch in batches:
                passes.setdefault((impl, batch), []).append(_measure(runner, impl, batch, prompt_len, steps, seed))
    results = []
    for found in passes.values():
        result = sorted(found, key=lambda r: r.decode_step_ms)[(len(found) - 1) // 2]
        results.append(result)
        print(
            f"{result.impl} batch {result.batch}: prefill {result.prefill_tokens_per_s:.0f} tok/s, "
            f"decode step {result.decode_step_ms:.1f} ms = {result.decode_tokens_per_s:.1f} tok/s "
            f"(median of {len(found)})",
            flush=True,
        )
    return results


def save(results: list[StepResult], meta: Mapping[str, object], out: Path) -> str:
    """Write JSON, a Markdown table (ratios to the first implementation) and a plot; return the table."""
    first = {r.batch: r for r in results if r.impl == results[0].impl}
    rows = [
        f"| {r.impl} | {r.batch} | {r.prompt_len} | {r.prefill_tokens_per_s:.0f} | {r.decode_step_ms:.1f} "
        f"| {r.decode_tokens_per_s:.1f} | {first[r.batch].decode_step_ms / r.decode_step_ms:.2f}x |"
        for r in results
    ]
    header = "| model impl | batch | prompt tokens | prefill tok/s | decode step ms | decode tok/s | speed vs first |"
    table = "\n".join([header, "|---|---|---|---|---|---|---|", *rows])
    fig, ax = subplots(figsize=(6, 3.5))
    impls = list(dict.fromkeys(r.impl for r in results))
    batches = sorted({r.batch for r in results})
    width = 0.8 / len(impls)
    for index, impl in enumerate(impls):
        values = [next(r.decode_tokens_per_s for r in results if r.impl == impl and r.batch == b) for b in batches]
        ax.bar([i + index * width for i in range(len(batches))], values, width, label=impl)
    ax.set_xticks([i + width * (len(impls) - 1) / 2 for i in range(len(batches))], [str(b) for b in batches])
    ax.set_xlabel("decode batch")
    ax.set_ylabel("decode tokens/s (engine step only)")
    ax.legend()
    save_result(out, "step", {**meta, "results": [asdict(r) for r in results]}, table, {"step": fig})
    return table


HELP = "time the CPU engine's steps directly, per model implementation"
PARENT = flags.parent("model-dir", "batch", "prompt-len", "repeats", "dtype", "seed", "out", batch=[1, 32], repeats=3)


def add_cli_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model-impl", nargs="+", default=["ise", "transformers"], choices=MODEL_IMPLS[1:])
    parser.add_argument("--steps", type=int, default=20, help="decode steps timed per batch size")
    parser.add_argument("--profile", action="store_true", help="where each step's time goes, per op class (ise impl)")
    parser.add_argument("--threads", type=int, help="with --profile: 1 reads CPU time, robust on a busy machine")


def main(args: argparse.Namespace) -> None:
    dtype = resolve_dtype(args.dtype)
    run = StepRun(
        dtype=dtype,
        batches=args.batch,
        prompt_len=args.prompt_len,
        steps=args.steps,
        kernel_dir=Settings().cache_dir,
        seed=args.seed,
        repeats=args.repeats,
    )
    if args.profile:
        found = profile.measure(flags.model_dir(args), **run, threads=args.threads or default_threads())
        profile.save(found, meta(dtype), args.out)
        return
    save(measure(flags.model_dir(args), impls=args.model_impl, **run), meta(dtype), args.out)
