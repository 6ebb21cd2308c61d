"""Where an engine step's time goes, per op class: ``ise bench step --profile``.

Decides what to make faster next. The CPU engine's ops are synchronous calls on the engine
thread, so wrapping each with a clock measures it exactly: the linear layers (each projection and
the LM head), paged attention, the rotary embedding with its cache write, the norms and SiLU, and
sampling, each timed as the engine calls it. What the clocks do not cover is Python: the
scheduler's ``schedule`` and ``update_from_output``, the runner packing a step's inputs, and the
forward pass's own glue (embedding, rotary tables, slicing), reported as such. Only ise's own
Llama-family forward is wrapped; the wrappers cost a few microseconds per call, which lands in
the op's own share.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from adapters.cpu.llama import LlamaForward
from adapters.cpu.model_runner import ModelRunner
from adapters.cpu.scheduler import Scheduler
from benchmarks.engine_batch import BLOCK_SIZE, decode_batch, engine_step
from benchmarks.save import save_result

# Which op class each of ise's kernels counts in.
KERNEL_CLASSES = {
    "paged_attention": "attention",
    "rotary_cache_write": "rotary + KV-cache write",
    "rms_norm": "norms and elementwise",
    "silu_mul": "norms and elementwise",
    "linear": None,  # timed by the layer that calls it, which knows which projection it is
}


class Clock:
    """Seconds spent per op class, summed over the calls it wrapped, read off ``timer``."""

    def __init__(self, timer: Callable[[], float] = time.perf_counter) -> None:
        self.timer = timer
        self.seconds: defaultdict[str, float] = defaultdict(float)

    def timed(self, category: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            started = self.timer()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[category] += self.timer() - started

        return call

    def reset(self) -> None:
        self.seconds.clear()


class _TimedKernels:
    """ise's kernel module, each call timed under its op class."""

    def __init__(self, kernels: object, clock: Clock) -> None:
        self._kernels, self._clock = kernels, clock

    def __getattr__(self, name: str) -> Any:
        fn = getattr(self._kernels, name)
        category = KERNEL_CLASSES.get(name)
        return self._clock.timed(category, fn) if category else fn


class _TimedLayer(nn.Module):
    def __init__(self, layer: nn.Module, category: str, clock: Clock) -> None:
        super().__init__()
        self.layer = layer
        self.call = clock.timed(category, layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.call(x)
        return out


def instrument(runner: ModelRunner, scheduler: Scheduler, clock: Clock) -> Callable[[], None]:
    """Wrap the runner's ops and the scheduler's two calls with ``clock``; returns what undoes it."""
    forward = runner.forward
    if not isinstance(forward, LlamaForward):
        raise ValueError("profiling covers ise's own forward (--model-impl ise)")
    layers = [(layer.qkv, layer.o, layer.gate_up, layer.down) for layer in forward.layers]
    saved = (runner.kernels, forward.lm_head, runner.forward_step, runner.sampler.sample)
    timed_kernels: Any = _TimedKernels(runner.kernels, clock)
    runner.kernels = forward.kernels = timed_kernels
    for layer in forward.layers:
        layer.qkv = _TimedLayer(layer.qkv, "linear: qkv", clock)
        layer.o = _TimedLayer(layer.o, "linear: o", clock)
        layer.gate_up = _TimedLayer(layer.gate_up, "linear: gate_up", clock)
        layer.down = _TimedLayer(layer.down, "linear: down", clock)
    forward.lm_head = _TimedLayer(forward.lm_head, "linear: LM head", clock)
    runner.forward = clock.timed("forward", forward)
    runner.forward_step = clock.timed("runner", runner.forward_step)  # type: ignore[method-assign]
    runner.sampler.sample = clock.timed("sampling", runner.sampler.sample)  # type: ignore[method-assign]
    scheduler.schedule = clock.timed("scheduler", scheduler.schedule)  # type: ignore[method-assign]
    scheduler.update_from_output = clock.timed("scheduler", scheduler.update_from_output)  # type: ignore[method-assign]

    def restore() -> None:
        runner.kernels, forward.lm_head, runner.forward_step, runner.sampler.sample = saved  # type: ignore[method-assign]
        forward.kernels = saved[0]
        runner.forward = forward
        for layer, (qkv, o, gate_up, down) in zip(forward.layers, layers, strict=True):
            layer.qkv, layer.o, layer.gate_up, layer.down = qkv, o, gate_up, down

    return restore


def breakdown(clock: Clock, steps: int, step_seconds: float) -> dict[str, float]:
    """Milliseconds per step by op class, the Python between them derived from the enclosing clocks."""
    s = clock.seconds
    ops = {k: v for k, v in s.items() if k not in ("forward", "runner", "scheduler")}
    result = {k: v / steps * 1e3 for k, v in sorted(ops.items())}
    inside_forward = sum(v for k, v in ops.items() if k != "sampling")
    result["python: forward glue"] = (s["forward"] - inside_forward) / steps * 1e3
    result["python: step inputs"] = (s["runner"] - s["forward"]) / steps * 1e3
    result["python: scheduler"] = s["scheduler"] / steps * 1e3
    accounted = s["runner"] + s["sampling"] + s["scheduler"]
    result["python: other (sampling glue)"] = (step_seconds - accounted) / steps * 1e3
    result["step"] = step_seconds / steps * 1e3
    return result


def measure(
    model_dir: Path,
    *,
    dtype: torch.dtype,
    batches: list[int],
    prompt_len: int,
    steps: int,
    kernel_dir: Path,
    seed: int,
    repeats: int,
    threads: int,
) -> dict[str, dict[str, float]]:
    """Per batch size: the prefill step of its prompts, then the decode steps, each broken down.

    Each batch runs ``repeats`` times, and every op class's median over them is reported, so a
    pass that the machine's other tenants slowed does not set the figure.
    """
    torch.set_num_threads(threads)
    # One thread computes everything on this one, so its CPU time is the work done, which other
    # processes on a busy machine do not inflate; with more, wall time is all there is.
    timer = time.thread_time if threads == 1 else time.perf_counter
    runner = ModelRunner(
        model_dir, dtype=dtype, kv_cache_bytes=2**30, block_size=BLOCK_SIZE, kernel_dir=kernel_dir, model_impl="ise"
    )
    found: dict[str, list[dict[str, float]]] = {}
    for _ in range(repeats):
        for batch in batches:
            scheduler = decode_batch(runner, batch, prompt_len, steps, seed)
            clock = Clock(timer)
            restore = instrument(runner, scheduler, clock)
            try:
                started = timer()
                engine_step(runner, scheduler)
                prefill = breakdown(clock, 1, timer() - started)
                for _ in range(2):  # warm-up steps, not counted
                    engine_step(runner, scheduler)
                clock.reset()
                started = timer()
                for _ in range(steps - 2):
                    engine_step(runner, scheduler)
                decode = breakdown(clock, steps - 2, timer() - started)
            finally:
                restore()
            found.setdefault(f"prefill {batch} x {prompt_len}", []).append(prefill)
            found.setdefault(f"decode {batch}", []).append(decode)
    return {
        phase: {k: sorted(p[k] for p in passes)[(len(passes) - 1) // 2] for k in passes[0]}
        for phase, passes in found.items()
    }


def table(results: dict[str, dict[str, float]]) -> str:
    """One column per phase: milliseconds per step, and each class's share of the step."""
    phases = list(results)
    rows = [f"| op class | {' | '.join(phases)} |", "|---|" + "---|" * len(phases)]
    for category in results[phases[0]]:
        cells = []
        for phase in phases:
            ms, step = results[phase].get(category, 0.0), results[phase]["step"]
            cells.append(f"{ms:.2f} ms" if category == "step" else f"{ms:.2f} ms ({ms / step:.0%})")
        rows.append(f"| {category} | {' | '.join(cells)} |")
    return "\n".join(rows)


def save(results: dict[str, dict[str, float]], meta: Mapping[str, object], out: Path) -> str:
    """Write the breakdown as profile.json and profile.md; return the table."""
    text = table(results)
    save_result(out, "profile", {**meta, "results": results}, text)
    return text
