"""A decode batch for timing the CPU engine's steps in process, and one step run as the engine runs it.

Shared by ``ise bench step`` (its timings) and its ``--profile`` (the per-op breakdown).
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import TypedDict

import torch

from adapters.cpu.block_manager import BlockManager
from adapters.cpu.model_runner import ModelRunner
from adapters.cpu.scheduler import Scheduler
from adapters.cpu.sequence import Sequence
from adapters.engine import EngineRequest, SamplingParams

BLOCK_SIZE = 16


class StepRun(TypedDict):
    """What a timed run of engine steps is: the same for the timings and the per-op profile."""

    dtype: torch.dtype
    batches: list[int]  # decode batch sizes, each timed on its own
    prompt_len: int  # tokens per prompt
    steps: int  # decode steps timed per batch size
    kernel_dir: Path  # where ise's C++ kernels are built
    seed: int
    repeats: int  # passes, alternating; each figure is the median


def engine_step(runner: ModelRunner, scheduler: Scheduler) -> None:
    """One engine step, as ``EngineCore.step`` runs it: schedule, execute, update."""
    scheduler_output = scheduler.schedule()
    scheduler.update_from_output(scheduler_output, runner.execute_model(scheduler_output))


def decode_batch(runner: ModelRunner, batch: int, prompt_len: int, steps: int, seed: int) -> Scheduler:
    """A scheduler holding ``batch`` random prompts of ``prompt_len`` tokens, each allowed ``steps`` more."""
    scheduler = Scheduler(
        BlockManager(runner.cache.num_blocks, BLOCK_SIZE, prefix_caching=False),
        max_num_seqs=batch,
        max_num_batched_tokens=batch * prompt_len,
        prompt_tokens_per_step=batch * prompt_len,  # every prompt in the first step, then only decodes
        prefill_chunk_tokens=prompt_len,
        long_prefill_token_threshold=prompt_len,
        max_model_len=prompt_len + steps + 10,
        eos_token_ids=frozenset(),
    )
    rng = random.Random(seed)
    params = SamplingParams(max_tokens=steps + 10, temperature=0.0, ignore_eos=True)
    for i in range(batch):
        prompt = [rng.randrange(1000, 40000) for _ in range(prompt_len)]
        scheduler.add_request(Sequence(EngineRequest(f"step{i}", prompt, params)))
    return scheduler
