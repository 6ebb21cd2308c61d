"""The machine's ceiling for a model: what no engine can beat here, and how close a run came.

Decode reads every weight once per step and the context's keys and values once per token, and
multiplies each weight twice per token. So a step is bound by memory bandwidth at small batches
and by arithmetic at large ones; a prompt is bound by arithmetic. Both rates are measured here,
on this machine, with all the cores the engine gets: memory by reading a 1 GiB tensor, arithmetic
by the faster of a large matrix product and ise's own GEMM at a 32-row decode step. The model's
sizes come from its config. A roofline (the slower of the two bounds per step, summed over a
benchmark run's prefill and decode steps) then gives the throughput ceiling of that run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from transformers import AutoConfig

from adapters.cpu.kernels import cpu_kernels
from adapters.cpu.numerics import default_threads, resolve_dtype
from benchmarks import flags
from benchmarks.save import meta, save_result
from server.config.settings import Settings


@dataclass(frozen=True)
class ModelCost:
    weight_bytes: float  # read once per decode step
    flops_per_token: float  # every layer and the vocabulary projection
    prompt_flops_per_token: float  # a prompt token skips the vocabulary projection
    kv_bytes_per_token: float  # of context, read by every decode token
    attention_flops_per_context_token: float  # per query token, per token of its context

    @classmethod
    def of(cls, model_dir: Path, dtype: torch.dtype) -> ModelCost:
        c = AutoConfig.from_pretrained(model_dir)
        hidden, layers, heads = c.hidden_size, c.num_hidden_layers, c.num_attention_heads
        kv_heads = getattr(c, "num_key_value_heads", heads)
        head_dim = getattr(c, "head_dim", None) or hidden // heads
        per_layer = hidden * (heads + 2 * kv_heads) * head_dim + heads * head_dim * hidden
        per_layer += 3 * hidden * c.intermediate_size
        vocab = c.vocab_size * hidden
        size = dtype.itemsize
        return cls(
            weight_bytes=(layers * per_layer + vocab) * size,
            flops_per_token=2.0 * (layers * per_layer + vocab),
            prompt_flops_per_token=2.0 * layers * per_layer,
            kv_bytes_per_token=2.0 * layers * kv_heads * head_dim * size,
            attention_flops_per_context_token=4.0 * layers * heads * head_dim,
        )


@dataclass(frozen=True)
class Limits:
    threads: int
    memory_gb_s: float
    gemm_gflop_s: float
    gemm_source: str
    cost: ModelCost

    def decode_step_s(self, batch: int, context: float) -> float:
        """Roofline time of one decode step: ``batch`` tokens, each over ``context`` tokens."""
        memory = (self.cost.weight_bytes + batch * context * self.cost.kv_bytes_per_token) / (self.memory_gb_s * 1e9)
        flops = batch * (self.cost.flops_per_token + context * self.cost.attention_flops_per_context_token)
        return max(memory, flops / (self.gemm_gflop_s * 1e9))

    def run_throughput(self, streams: int, input_len: int, output_len: int) -> float:
        """Ceiling in output tokens/s of ``streams`` requests at once, ``input_len`` in, ``output_len`` out."""
        prefill = streams * input_len * self.cost.prompt_flops_per_token
        prefill += streams * input_len * input_len / 2 * self.cost.attention_flops_per_context_token
        seconds = prefill / (self.gemm_gflop_s * 1e9)
        seconds += sum(self.decode_step_s(streams, input_len + step) for step in range(1, output_len))
        return streams * output_len / seconds


def _best_seconds(fn: Callable[[], object], repeats: int) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    return best


def measure(model_dir: Path, dtype: torch.dtype, kernel_dir: Path) -> Limits:
    threads = default_threads()
    torch.set_num_threads(threads)
    data = torch.ones(2**28)  # 1 GiB of float32, far beyond any cache
    memory = data.numel() * 4 / _best_seconds(data.sum, 5) / 1e9
    del data
    n = 2048
    a, b = torch.randn(n, n), torch.randn(n, n)
    candidates = {f"torch.mm {n}x{n}x{n}": 2 * n**3 / _best_seconds(lambda: a @ b, 5) / 1e9}
    kernels = cpu_kernels(kernel_dir)
    hidden = AutoConfig.from_pretrained(model_dir).hidden_size
    width = 4 * hidden
    packed, scales = kernels.pack_linear_weight(torch.randn(width, hidden), False)
    x = torch.randn(32, hidden)
    seconds = _best_seconds(lambda: [kernels.linear(x, packed, scales, None, width) for _ in range(50)], 5) / 50
    candidates[f"ise GEMM 32x{hidden}x{width}"] = 2 * 32 * hidden * width / seconds / 1e9
    source, gflops = max(candidates.items(), key=lambda item: item[1])
    return Limits(threads, memory, gflops, source, ModelCost.of(model_dir, dtype))


def save(limits: Limits, meta: Mapping[str, object], measured: Mapping[int, float], input_len: int,
         output_len: int, out: Path) -> str:  # fmt: skip
    """Write limits.json and limits.md; ``measured`` maps streams to a run's output tokens/s."""
    ceilings = {
        streams: limits.run_throughput(streams, input_len, output_len) for streams in sorted({*measured, 1, 32})
    }
    rows = []
    for streams, ceiling in ceilings.items():
        got = measured.get(streams)
        share = f"{got:.1f} ({got / ceiling:.0%})" if got else "—"
        rows.append(f"| {streams} | {ceiling:.0f} | {share} |")
    c = limits.cost
    lines = [
        f"- Memory read bandwidth: {limits.memory_gb_s:.1f} GB/s; GEMM: {limits.gemm_gflop_s:.0f} GFLOP/s "
        f"({limits.gemm_source}); {limits.threads} threads",
        f"- Model: {c.weight_bytes / 1e6:.0f} MB of weights read per decode step, {c.flops_per_token / 1e9:.3f} "
        f"GFLOP per generated token, {c.kv_bytes_per_token / 1e3:.1f} KB of keys and values per context token",
        "",
        f"| streams | ceiling output tok/s ({input_len} in, {output_len} out) | measured (share of ceiling) |",
        "|---|---|---|",
        *rows,
    ]
    table = "\n".join(lines)
    payload = {
        **meta,
        "limits": asdict(limits),
        "ceilings": ceilings,
        "measured": measured,
        "input_len": input_len,
        "output_len": output_len,
    }
    save_result(out, "limits", payload, table)
    return table


HELP = "this machine's ceiling for the model, and a run's share of it"
PARENT = flags.parent("model-dir", "dtype", "input-len", "output-len", "out")


def add_cli_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--results", type=Path, help="a compare results.json whose ise runs to rate")


def main(args: argparse.Namespace) -> None:
    dtype = resolve_dtype(args.dtype)
    measured: dict[int, float] = {}
    if args.results:
        passes: dict[int, list[float]] = {}
        for run in json.loads(args.results.read_text())["runs"]:
            if run["target"] == "ise" and run["concurrency"]:
                passes.setdefault(run["concurrency"], []).append(run["summary"]["output_throughput"])
        measured = {level: statistics.median_low(values) for level, values in passes.items()}  # as the table
    found = measure(flags.model_dir(args), dtype, Settings().cache_dir)
    save(found, meta(dtype), measured, args.input_len, args.output_len, args.out)
