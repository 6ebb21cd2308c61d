"""Static batched ``model.generate``: the throughput bar a serving engine should clear.

A static batch has no streaming and no scheduling: every prompt is left-padded to the longest,
all rows decode together until the last is done. It wastes compute on padding but pays no
per-request bookkeeping, so on a CPU it is a strong baseline for aggregate tokens per second.
The prompts are the same seeded random prompts ``ise bench compare`` sends.

With ``compiled``, each batch is also timed decoding through ``torch.compile`` (inductor) over a
static cache, as transformers compiles it on a GPU, right after the eager run: the side-by-side
measurement behind ise's choice not to compile its engine.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, PreTrainedTokenizerBase
from transformers.generation.configuration_utils import CompileConfig

from adapters.cpu.numerics import default_threads, resolve_dtype
from benchmarks import flags
from benchmarks.save import meta, save_result, subplots
from benchmarks.workloads import random_workload


@dataclass(frozen=True)
class StaticResult:
    batch: int
    input_len: int
    output_len: int
    seconds: float
    output_tokens: int
    compiled: bool

    @property
    def throughput(self) -> float:
        return self.output_tokens / self.seconds


def measure(
    model_dir: Path,
    tokenizer: PreTrainedTokenizerBase,
    *,
    dtype: torch.dtype,
    batches: list[int],
    input_len: int,
    output_len: int,
    seed: int,
    compiled: bool = False,
) -> list[StaticResult]:
    torch.set_num_threads(default_threads())
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype)
    model.eval()
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    modes: dict[bool, dict[str, Any]] = {False: {}}
    if compiled:
        config = CompileConfig()
        # transformers compiles the decoding step by itself only on a GPU; this opts the CPU in.
        config._compile_all_devices = True  # type: ignore[assignment]  # declared None, read as a flag
        modes[True] = {"cache_implementation": "static", "compile_config": config}
    results = []
    for batch in batches:
        prompts = [spec.prompt or "" for spec in random_workload(
            tokenizer, count=batch, input_len=input_len, output_len=output_len, seed=seed
        )]  # fmt: skip
        inputs = tokenizer(prompts, return_tensors="pt", padding=True)
        for mode, options in modes.items():
            label = f"static batch {batch}{', compiled' if mode else ''}"
            # The warm-up has the timed run's shapes, so a compiled step is compiled before timing.
            for timed in (False, True):
                started = time.perf_counter()
                with torch.inference_mode():
                    out: torch.Tensor = model.generate(  # type: ignore[misc,assignment]
                        **inputs,
                        max_new_tokens=output_len,
                        min_new_tokens=output_len,
                        do_sample=False,
                        pad_token_id=tokenizer.pad_token_id,
                        **options,
                    )
                seconds = time.perf_counter() - started
                if not timed:
                    print(f"{label}: warm-up {seconds:.1f} s", flush=True)
            generated = (out.shape[1] - inputs["input_ids"].shape[1]) * batch
            results.append(StaticResult(batch, input_len, output_len, seconds, generated, mode))
            print(f"{label}: {generated} tokens, {seconds:.1f} s, {generated / seconds:.1f} tok/s", flush=True)
    return results


def save(results: list[StaticResult], meta: Mapping[str, object], out: Path) -> str:
    """Write JSON, a Markdown table and a bar plot; return the table."""
    rows = [{**asdict(r), "throughput": r.throughput} for r in results]
    table = "\n".join(
        [
            "| batch | prompt tokens | output tokens each | torch.compile | seconds | output tok/s |",
            "|---|---|---|---|---|---|",
            *[
                f"| {r.batch} | {r.input_len} | {r.output_len} | {'yes' if r.compiled else 'no'} | {r.seconds:.1f}"
                f" | {r.throughput:.1f} |"
                for r in results
            ],
        ]
    )
    fig, ax = subplots(figsize=(5, 3.5))
    ax.bar([f"{r.batch}{' compiled' if r.compiled else ''}" for r in results], [r.throughput for r in results])
    ax.set_xlabel("batch size")
    ax.set_ylabel("output tokens/s")
    ax.set_title("static batched generate")
    save_result(out, "static", {**meta, "results": rows}, table, {"static": fig})
    return table


HELP = "static batched model.generate, the no-scheduling throughput bar"
PARENT = flags.parent("model-dir", "batch", "input-len", "output-len", "dtype", "seed", "out")


def add_cli_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--compile", action="store_true", help="also time each batch decoding through torch.compile over a static cache"
    )


def main(args: argparse.Namespace) -> None:
    model_dir, tokenizer = flags.tokenizer(args)
    dtype = resolve_dtype(args.dtype)
    results = measure(
        model_dir,
        tokenizer,
        dtype=dtype,
        batches=args.batch,
        input_len=args.input_len,
        output_len=args.output_len,
        seed=args.seed,
        compiled=args.compile,
    )
    save(results, meta(dtype), args.out)
