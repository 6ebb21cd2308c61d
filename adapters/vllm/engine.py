"""ise's engine interface over vLLM's ``AsyncLLM``: vLLM schedules and computes, ise speaks the API.

Requests go in as token ids (a ``TokensPrompt``) with vLLM's ``SamplingParams`` built from ise's,
asking for deltas and no detokenization: text, stop strings and chat templates stay in
``server/``, so the API is byte-identical whichever engine runs. Statistics come from vLLM's own
scheduler and iteration stats, through a stat logger it calls after every step.

Import this module only when the vLLM engine is chosen: importing vLLM takes seconds.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncGenerator, Iterable, Mapping
from contextlib import aclosing
from dataclasses import replace
from typing import Any

from vllm import SamplingParams as VLLMSamplingParams
from vllm.engine.arg_utils import AsyncEngineArgs
from vllm.inputs import TokensPrompt
from vllm.sampling_params import RequestOutputKind, StructuredOutputsParams
from vllm.v1.engine.async_llm import AsyncLLM
from vllm.v1.engine.exceptions import EngineDeadError as VLLMEngineDeadError
from vllm.v1.metrics.loggers import StatLoggerBase

from adapters.engine import (
    ITERATION_TOKENS_BUCKETS,
    ConstraintDeadEndError,
    EngineDeadError,
    EngineOutput,
    EngineRequest,
    EngineStats,
    FinishReason,
    RequestFailedError,
    SamplingParams,
    StructuredOutput,
    TokenLogprobs,
    iteration_bucket,
)
from adapters.model_info import ModelInfo

log = logging.getLogger(__name__)

_FINISH_REASONS: dict[str, FinishReason] = {"stop": "stop", "length": "length", "abort": "abort"}


class _StatsRecorder(StatLoggerBase):  # type: ignore[misc]  # vLLM is not type-checked here (pyproject)
    """Keeps the latest of vLLM's scheduler stats and sums its counters, for ``/metrics``."""

    def __init__(self, vllm_config: Any, engine_index: int = 0) -> None:
        cache = vllm_config.cache_config
        self.kv_blocks_total = int(cache.num_gpu_blocks or 0)
        self.iteration_tokens_counts = [0] * (len(ITERATION_TOKENS_BUCKETS) + 1)
        self.stats = EngineStats(kv_blocks_total=self.kv_blocks_total, block_size=int(cache.block_size or 0))

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
            spec = scheduler_stats.spec_decoding_stats
            if spec is not None:
                per_pos = list(stats.spec_decode_num_accepted_tokens_per_pos)
                per_pos += [0] * (len(spec.num_accepted_tokens_per_pos) - len(per_pos))
                for position, accepted in enumerate(spec.num_accepted_tokens_per_pos):
                    per_pos[position] += accepted
                stats = replace(
                    stats,
                    spec_decode_num_drafts=stats.spec_decode_num_drafts + spec.num_drafts,
                    spec_decode_num_draft_tokens=stats.spec_decode_num_draft_tokens + spec.num_draft_tokens,
                    spec_decode_num_accepted_tokens=stats.spec_decode_num_accepted_tokens + spec.num_accepted_tokens,
                    spec_decode_num_accepted_tokens_per_pos=tuple(per_pos),
                )
        if iteration_stats is not None:
            # vLLM's own tokens per step: prompt tokens computed (not those read from the cache) and generated.
            step_tokens = iteration_stats.prompt_token_stats.computed + iteration_stats.num_generation_tokens
            self.iteration_tokens_counts[iteration_bucket(step_tokens)] += 1
            stats = replace(
                stats,
                tokens_computed=stats.tokens_computed + step_tokens,
                preemptions=stats.preemptions + iteration_stats.num_preempted_reqs,
                iteration_tokens_counts=tuple(self.iteration_tokens_counts),
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


def structured_outputs_params(constraint: StructuredOutput) -> StructuredOutputsParams:
    """ise's constraint as vLLM's: a JSON schema as a dict, choices as a list."""
    if constraint.json is not None:
        return StructuredOutputsParams(json=json.loads(constraint.json))
    if constraint.json_object:
        return StructuredOutputsParams(json_object=True)
    if constraint.choice is not None:
        return StructuredOutputsParams(choice=list(constraint.choice))
    return StructuredOutputsParams(regex=constraint.regex, grammar=constraint.grammar)


def vllm_sampling_params(params: SamplingParams) -> VLLMSamplingParams:
    """ise's sampling settings as vLLM's, every field mapped; vLLM validates them again."""
    constraint = params.structured_output
    return VLLMSamplingParams(
        n=1,
        temperature=params.temperature,
        top_p=params.top_p,
        top_k=params.top_k,
        min_p=params.min_p,
        logit_bias=dict(params.logit_bias) or None,
        logprobs=params.logprobs,
        prompt_logprobs=params.prompt_logprobs,
        structured_outputs=None if constraint is None else structured_outputs_params(constraint),
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


def token_logprobs(token_id: int, entries: Mapping[int, Any], num_top: int) -> TokenLogprobs:
    """One position of vLLM's logprobs (token id to ``Logprob``, the token itself included) as ise's.

    vLLM gives the position's token with its rank and the ``num_top`` best by rank; ``top`` keeps
    those, best first, whether or not the token is among them.
    """
    ranked = sorted(entries.items(), key=lambda item: item[1].rank if item[1].rank is not None else len(entries))
    top = tuple((tid, float(entry.logprob)) for tid, entry in ranked[:num_top])
    return TokenLogprobs(token_id, float(entries[token_id].logprob), top)


def sample_logprobs(token_ids: Iterable[int], positions: Any, num_top: int) -> list[TokenLogprobs]:
    """vLLM's logprobs of new tokens (a list, or its ``FlatLogprobs``, of one mapping per token)."""
    return [token_logprobs(token_id, entries, num_top) for token_id, entries in zip(token_ids, positions, strict=True)]


def prompt_logprobs(prompt_token_ids: list[int], positions: Any, num_top: int) -> list[TokenLogprobs | None]:
    """vLLM's prompt logprobs as ise's: None for the first token, as there."""
    return [
        None if entries is None else token_logprobs(token_id, entries, num_top)
        for token_id, entries in zip(prompt_token_ids, positions, strict=True)
    ]


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
                    first, num_output_tokens = True, 0
                    async for out in outputs:
                        if out.finished and out.outputs[0].finish_reason == "error":
                            raise _request_error(request, num_output_tokens + len(out.outputs[0].token_ids) - 1)
                        num_output_tokens += len(out.outputs[0].token_ids)
                        yield self._output(request, out, first)
                        first = False
                except (GeneratorExit, asyncio.CancelledError):
                    closed_at = time.monotonic()
                    raise
        except VLLMEngineDeadError as exc:
            raise EngineDeadError(f"The vLLM engine failed: {exc}") from exc
        except RequestFailedError:
            raise
        except Exception as exc:
            if llm.errored:
                raise EngineDeadError(f"The vLLM engine failed: {exc!r}") from exc
            # vLLM wraps what went wrong in an EngineGenerateError with no message: say the cause.
            cause = exc.__cause__ or exc
            raise RequestFailedError(f"The request failed in vLLM: {type(cause).__name__}: {cause}") from exc
        finally:
            if closed_at is not None and self._recorder is not None:
                self._recorder.record_abort(time.monotonic() - closed_at)

    @staticmethod
    def _output(request: EngineRequest, out: Any, first: bool) -> EngineOutput:
        """One of vLLM's ``RequestOutput`` deltas as ise's; the prompt's fields on the first only."""
        params = request.params
        completion = out.outputs[0]
        token_ids = list(completion.token_ids)
        # vLLM's reasons are ise's ("error" fails the request first); any other it may add ends it as a stop.
        reason = _FINISH_REASONS.get(completion.finish_reason, "stop") if out.finished else None
        stats = getattr(out, "metrics", None)  # vLLM's times are time.monotonic(), as ise's
        logprobs = None
        if params.logprobs is not None:
            logprobs = sample_logprobs(token_ids, completion.logprobs or [], params.logprobs)
        prompt = None
        if first and params.prompt_logprobs is not None:
            prompt = prompt_logprobs(request.prompt_token_ids, out.prompt_logprobs or [], params.prompt_logprobs)
        # vLLM names the stop token id it matched, and None for an EOS (which ends token_ids).
        stop_reason = completion.stop_reason if isinstance(completion.stop_reason, int) else None
        if reason == "stop" and stop_reason is None and token_ids:
            stop_reason = token_ids[-1]
        return EngineOutput(
            token_ids,
            reason,
            stop_reason,
            getattr(stats, "scheduled_ts", 0.0) or None,
            logprobs=logprobs,
            prompt_logprobs=prompt,
            num_cached_tokens=out.num_cached_tokens if first else None,
        )

    def abort(self, request_id: str) -> None:
        if self._llm is not None:
            task = asyncio.get_running_loop().create_task(self._llm.abort(request_id))
            self._aborts.add(task)
            task.add_done_callback(self._aborts.discard)


def _request_error(request: EngineRequest, num_output_tokens: int) -> RequestFailedError:
    """What vLLM's finish reason "error" means for ``request``, which wrote ``num_output_tokens`` tokens.

    vLLM ends a request so when its grammar rejects the token sampled (``Scheduler.update_from_output``).
    That happens where the grammar allowed no token of the vocabulary: every logit was masked and the
    sampler drew one anyway (a dead end, the client's constraint at fault). Any other cause is this
    request's failure alone.
    """
    if request.params.structured_output is not None:
        return ConstraintDeadEndError(num_output_tokens)
    return RequestFailedError("vLLM ended the request with an error (its log says why)")
