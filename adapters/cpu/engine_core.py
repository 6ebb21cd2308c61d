"""The CPU engine's synchronous core: add requests, abort them, step.

A step reads as schedule, execute, update: the scheduler decides which tokens to compute, the
model runner computes them and samples, the scheduler applies the result and says what each
request got (vLLM v1's ``EngineCore.step``, nano-vllm's ``LLMEngine.step``). The core knows
nothing of threads or event loops; ``adapters.cpu.engine.CPUEngine`` drives it from a worker
thread and carries its outputs to the requests' consumers.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import torch

from adapters.config import QUANTIZATIONS, EngineArgs, Quantization
from adapters.cpu.block_manager import BlockManager
from adapters.cpu.model_runner import ModelRunner
from adapters.cpu.numerics import cpu_description, default_threads, resolve_dtype
from adapters.cpu.packed_linear import quantization_problem
from adapters.cpu.scheduler import EngineCoreOutputs, Scheduler
from adapters.cpu.sequence import Sequence
from adapters.cpu.spec_decode import NgramConfig, NgramProposer
from adapters.engine import ITERATION_TOKENS_BUCKETS, EngineStats, iteration_bucket
from adapters.model_info import ModelInfo

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CPUEngineConfig:
    """The engine's options as given, with what they left to ``auto`` decided for this model and CPU."""

    args: EngineArgs
    model: ModelInfo
    dtype: torch.dtype
    max_model_len: int
    threads: int
    quantization: Quantization  # args.quantization, checked to be one the CPU engine has
    kernel_dir: Path  # where ise's CPU kernels are built and cached
    speculation: NgramConfig | None  # args.speculative_config, checked to be one the CPU engine runs

    @classmethod
    def resolve(cls, args: EngineArgs, model: ModelInfo, kernel_dir: Path) -> CPUEngineConfig:
        """Raises ValueError, saying which option to change, where the options cannot run together."""
        if args.quantization not in QUANTIZATIONS:
            raise ValueError(
                f"--quantization {args.quantization}: the CPU engine takes {' or '.join(QUANTIZATIONS)}; "
                "vLLM's methods need --engine vllm"
            )
        quantization = cast(Quantization, args.quantization)
        dtype = resolve_dtype(args.dtype)
        problem = quantization_problem(quantization, dtype)
        if problem:
            raise ValueError(problem)
        max_model_len, why = cls._context(args, model, dtype)
        threads = args.threads or default_threads()
        speculation = None if args.speculative_config is None else NgramConfig.parse(args.speculative_config)
        config = cls(args, model, dtype, max_model_len, threads, quantization, kernel_dir, speculation)
        log.info(
            "CPU engine on %s; dtype %s, %s; %d threads; context %d tokens (%s); speculative decoding: %s",
            cpu_description(),
            str(dtype).removeprefix("torch."),
            "int8 weights" if quantization == "int8" else "weights as dtype",
            config.threads,
            max_model_len,
            why,
            speculation.describe() if speculation else "off",
        )
        return config

    @staticmethod
    def _context(args: EngineArgs, model: ModelInfo, dtype: torch.dtype) -> tuple[int, str]:
        """The served context and why; one request of it must fit the model and the KV cache whole."""
        blocks = model.kv_layout.num_blocks(int(args.kv_cache_gib * 2**30), args.block_size, dtype.itemsize)
        capacity = blocks * args.block_size
        max_model_len, why = args.context_window(model.context_length, capacity)
        if max_model_len > model.context_length:
            raise ValueError(
                f"--max-model-len {max_model_len} exceeds the model's context window of {model.context_length} tokens"
            )
        if capacity < max_model_len:
            raise ValueError(
                f"The KV cache holds {capacity} tokens, fewer than one request of --max-model-len "
                f"{max_model_len}; give it more memory (--kv-cache-gib) or lower --max-model-len"
            )
        return max_model_len, why


class EngineCore:
    """Model runner and scheduler, built together; each ``step`` runs one forward pass.

    Build it on the thread that will step it: torch's OpenMP workers are slow to wake for a
    thread other than the one that last ran a parallel region (a decode step measurably slower
    when the event loop's thread had loaded the model; benchmarks/RESULTS.md).
    """

    def __init__(self, config: CPUEngineConfig) -> None:
        args = config.args
        torch.set_num_threads(config.threads)
        self.runner = ModelRunner(
            config.model.path,
            dtype=config.dtype,
            kv_cache_bytes=int(args.kv_cache_gib * 2**30),
            block_size=args.block_size,
            kernel_dir=config.kernel_dir,
            model_impl=args.model_impl,
            quantization=config.quantization,
            eos_token_ids=config.model.eos_token_ids,
        )
        self.scheduler = Scheduler(
            BlockManager(self.runner.cache.num_blocks, args.block_size, prefix_caching=args.prefix_caching),
            max_num_seqs=args.max_num_seqs,
            max_num_batched_tokens=args.max_num_batched_tokens,
            prefill_chunk_tokens=args.prefill_chunk_tokens,
            long_prefill_token_threshold=args.long_prefill_token_threshold,
            max_model_len=config.max_model_len,
            eos_token_ids=config.model.eos_token_ids,
            proposer=None if config.speculation is None else NgramProposer(config.speculation),
        )
        self.steps = 0
        self.tokens_computed = 0
        self.iteration_tokens_counts = [0] * (len(ITERATION_TOKENS_BUCKETS) + 1)
        self.aborts_released = 0
        self.abort_release_seconds = 0.0

    def add_request(self, seq: Sequence) -> None:
        self.scheduler.add_request(seq)

    def abort_request(self, request_id: str, requested_at: float | None = None) -> None:
        """Abort and free; ``requested_at`` (``time.monotonic()`` of the abort) times the release."""
        if self.scheduler.abort_request(request_id) and requested_at is not None:
            self.aborts_released += 1
            self.abort_release_seconds += time.monotonic() - requested_at

    def has_unfinished_requests(self) -> bool:
        return self.scheduler.has_unfinished_requests()

    def step(self) -> EngineCoreOutputs:
        """Schedule, execute, update; what each request touched got (nothing when idle)."""
        scheduler_output = self.scheduler.schedule()
        if not scheduler_output.requests:
            return []
        self.steps += 1
        self.tokens_computed += scheduler_output.total_num_scheduled_tokens
        self.iteration_tokens_counts[iteration_bucket(scheduler_output.total_num_scheduled_tokens)] += 1
        runner_output = self.runner.execute_model(scheduler_output)
        return self.scheduler.update_from_output(scheduler_output, runner_output)

    def stats(self) -> EngineStats:
        scheduler, blocks = self.scheduler, self.scheduler.blocks
        return EngineStats(
            running=len(scheduler.running),
            waiting=len(scheduler.waiting),
            kv_blocks_used=blocks.num_used,
            kv_blocks_total=blocks.num_blocks,
            steps=self.steps,
            tokens_computed=self.tokens_computed,
            prefix_cache_queried_tokens=blocks.stats.queried_tokens,
            prefix_cache_hit_tokens=blocks.stats.hit_tokens,
            preemptions=scheduler.num_preemptions,
            aborts_released=self.aborts_released,
            abort_release_seconds=self.abort_release_seconds,
            iteration_tokens_counts=tuple(self.iteration_tokens_counts),
            block_size=blocks.block_size,
            spec_decode_num_drafts=scheduler.num_drafts,
            spec_decode_num_draft_tokens=scheduler.num_draft_tokens,
            spec_decode_num_accepted_tokens=sum(scheduler.num_accepted_tokens_per_pos),
            spec_decode_num_accepted_tokens_per_pos=tuple(scheduler.num_accepted_tokens_per_pos),
        )
