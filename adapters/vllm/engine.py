"""ise's engine interface over vLLM's ``AsyncLLM``: vLLM schedules and computes, ise speaks the API.

Requests go in as token ids (a ``TokensPrompt``) with vLLM's ``SamplingParams`` built from ise's,
asking for deltas and no detokenization: text, stop strings and chat templates stay in
``server/``, so the API is byte-identical whichever engine runs. Statistics come from vLLM's own
scheduler and iteration stats, through a stat logger it calls after every step.

Import this module only when the vLLM engine is chosen: importing vLLM takes seconds.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator
from contextlib import aclosing
from dataclasses import replace
from typing import Any

from vllm import SamplingParams as VLLMSamplingParams
from vllm.engine.arg_utils import AsyncEngineArgs
from vllm.inputs import TokensPrompt
from vllm.sampling_params import RequestOutputKind
from vllm.v1.engine.async_llm import AsyncLLM
from vllm.v1.engine.exceptions import EngineDeadError as VLLMEngineDeadError
from vllm.v1.metrics.loggers import StatLoggerBase

from adapters.engine import (
    EngineDeadError,
    EngineOutput,
    EngineRequest,
    EngineStats,
    FinishReason,
    RequestFailedError,
    SamplingParams,
)
from adapters.model_info import ModelInfo

log = logging.getLogger(__name__)

_FINISH_REASONS: dict[str, FinishReason] = {"stop": "stop", "length": "length", "abort": "abort"}


class _StatsRecorder(StatLoggerBase):  # type: ignore[misc]  # vLLM is not type-checked here (pyproject)
    """Keeps the latest of vLLM's scheduler stats and sums its counters, for ``/metrics``."""

    def __init__(self, vllm_config: Any, engine_index: int = 0) -> None:
        self.kv_blocks_total = int(vllm_config.cache_config.num_gpu_blocks or 0)
        self.stats = EngineStats(kv_blocks_total=self.kv_blocks_total)

    def record(
        self, scheduler_stats: Any, iteration_stats: Any, mm_cache_stats: Any = None, engine_idx: int = 0
    ) -> None:
        stats = self.stats
        if scheduler_stats is not None:
            prefix = scheduler_stats.prefix_cache_stats
            stats = replace(
                stats,
                running=scheduler_stats.num_running_reqs,
                waiting=scheduler_stats.num_waiting_reqs,
                kv_blocks_used=round(scheduler_stats.kv_cache_usage * self.kv_blocks_total),
                steps=stats.steps + 1,
                prefix_cache_queried_tokens=stats.prefix_cache_queried_tokens + prefix.queries,
                prefix_cache_hit_tokens=stats.prefix_cache_hit_tokens + prefix.hits,
            )
        if iteration_stats is not None:
            stats = replace(
                stats,
                tokens_computed=stats.tokens_computed
                + iteration_stats.num_prompt_tokens
                + iteration_stats.num_generation_tokens,
                preemptions=stats.preemptions + iteration_stats.num_preempted_reqs,
            )
        self.stats = stats

    def record_abort(self, seconds: float) -> None:
        """An abort took ``seconds`` until vLLM's engine core had it (it frees the blocks on taking it)."""
        self.stats = replace(
            self.stats,
            aborts_released=self.stats.aborts_released + 1,
            abort_release_seconds=self.stats.abort_release_seconds + seconds,
        )

    def log_engine_initialized(self) -> None:
        pass


def vllm_sampling_params(params: SamplingParams) -> VLLMSamplingParams:
    """ise's sampling settings as vLLM's, every field mapped; vLLM validates them again."""
    return VLLMSamplingParams(
        n=1,
        temperature=params.temperature,
        top_p=params.top_p,
        top_k=params.top_k,
        seed=params.seed,
        presence_penalty=params.presence_penalty,
        frequency_penalty=params.frequency_penalty,
        repetition_penalty=params.repetition_penalty,
        min_tokens=params.min_tokens,
        ignore_eos=params.ignore_eos,
        stop_token_ids=list(params.stop_token_ids),
        max_tokens=params.max_tokens,
        output_kind=RequestOutputKind.DELTA,
        detokenize=False,
    )


class VLLMEngine:
    def __init__(self, engine_args: AsyncEngineArgs, model: ModelInfo) -> None:
        self.engine_args = engine_args
        self.model = model
        self._llm: AsyncLLM | None = None
        self._recorder: _StatsRecorder | None = None
        self._aborts: set[asyncio.Task[None]] = set()

    @property
    def max_model_len(self) -> int:
        assert self._llm is not None, "start() the engine first"
        return int(self._llm.model_config.max_model_len)

    @property
    def eos_token_ids(self) -> frozenset[int]:
        return self.model.eos_token_ids

    @property
    def is_alive(self) -> bool:
        return self._llm is not None and not self._llm.errored

    async def start(self) -> None:
        started = time.monotonic()

        def recorder(vllm_config: Any, engine_index: int = 0) -> StatLoggerBase:
            self._recorder = _StatsRecorder(vllm_config, engine_index)
            return self._recorder

        self._llm = AsyncLLM.from_engine_args(self.engine_args, stat_loggers=[recorder])
        log.info(
            "vLLM engine ready in %.1f s: %s on %s, max_model_len %d",
            time.monotonic() - started,
            self.model.path,
            self._llm.vllm_config.device_config.device_type,
            self.max_model_len,
        )

    async def shutdown(self) -> None:
        if self._llm is not None:
            self._llm.shutdown()

    def stats(self) -> EngineStats:
        return self._recorder.stats if self._recorder is not None else EngineStats()

    async def generate(self, request: EngineRequest) -> AsyncGenerator[EngineOutput, None]:
        llm = self._llm
        if llm is None or llm.errored:
            raise EngineDeadError("The engine is not running")
        try:
            params = vllm_sampling_params(request.params)
        except Exception as exc:  # vLLM refused a value the API let through: this request alone fails
            raise RequestFailedError(f"The request could not be set up: {exc}") from exc
        prompt = TokensPrompt(prompt_token_ids=request.prompt_token_ids)
        closed_at: float | None = None
        try:
            # Closing this generator early closes vLLM's, which aborts the request there (and
            # awaits the abort reaching vLLM's engine core): that wait is the release time.
            async with aclosing(llm.generate(prompt, params, request.request_id)) as outputs:
                try:
                    async for out in outputs:
                        completion = out.outputs[0]
                        # vLLM's reasons are ise's; any other it may add ends the request as a stop.
                        reason = _FINISH_REASONS.get(completion.finish_reason, "stop") if out.finished else None
                        stats = getattr(out, "metrics", None)  # vLLM's times are time.monotonic(), as ise's
                        scheduled = getattr(stats, "scheduled_ts", 0.0) or None
                        yield EngineOutput(list(completion.token_ids), reason, scheduled)
                except (GeneratorExit, asyncio.CancelledError):
                    closed_at = time.monotonic()
                    raise
        except VLLMEngineDeadError as exc:
            raise EngineDeadError(f"The vLLM engine failed: {exc}") from exc
        except Exception as exc:
            if llm.errored:
                raise EngineDeadError(f"The vLLM engine failed: {exc!r}") from exc
            raise RequestFailedError(f"The request failed in vLLM: {exc}") from exc
        finally:
            if closed_at is not None and self._recorder is not None:
                self._recorder.record_abort(time.monotonic() - closed_at)

    def abort(self, request_id: str) -> None:
        if self._llm is not None:
            task = asyncio.get_running_loop().create_task(self._llm.abort(request_id))
            self._aborts.add(task)
            task.add_done_callback(self._aborts.discard)
