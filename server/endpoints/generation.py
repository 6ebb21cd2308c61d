"""From an OpenAI request to text events: sampling settings, context checks, choices, usage.

Both endpoints share this: they differ only in how prompts become token ids and how events are
dressed as JSON (``server/endpoints/chat_completion.py``, ``completion.py``), over one serving loop
(``serving.py``).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from contextlib import aclosing
from dataclasses import dataclass, field, fields, replace

from adapters.engine import (
    ConstraintDeadEndError,
    Engine,
    EngineRequest,
    SamplingParams,
    TokenLogprobs,
    wrap_seed,
)
from adapters.model_info import ModelInfo
from server.gateway.gateway import Demand
from server.protocol.base import new_id
from server.protocol.common import ChoiceFinishReason, PromptTokensDetails, Usage
from server.protocol.errors import invalid_request
from server.protocol.sampling import Constraint, SamplingFields
from server.text.tokenization import Tokenization


@dataclass(frozen=True)
class SamplingDefaults:
    """Values for sampling fields a request leaves out.

    Like vLLM, ise takes them from the model's ``generation_config.json`` where it sets them:
    small models are tuned for a low temperature, and OpenAI's default of 1.0 makes them ramble.
    What the model does not set falls back to OpenAI's defaults.
    """

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    repetition_penalty: float = 1.0

    @classmethod
    def from_model(cls, model: ModelInfo) -> SamplingDefaults:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in model.generation_defaults.items() if k in known and v is not None})


@dataclass(frozen=True)
class ChoiceEvent:
    """New text for one choice; ``finish_reason`` is set on its last event."""

    index: int
    text: str
    num_tokens: int
    finish_reason: ChoiceFinishReason | None = None
    scheduled_at: float | None = None  # the engine's EngineOutput.scheduled_at, where it reports one
    # One entry per token whose text this event carries (a stop token's is left out with its text).
    logprobs: list[TokenLogprobs] = field(default_factory=list)
    # On a choice's first event, where the engine reports them.
    prompt_logprobs: list[TokenLogprobs | None] | None = None
    num_cached_tokens: int | None = None
    stop_string: str | None = None  # on the last event: the stop string that ended the choice, if one did


@dataclass(frozen=True)
class Job:
    """One request, checked and ready for the engine: a prompt per entry, ``n`` choices each."""

    prompts: list[list[int]]
    params: list[SamplingParams]  # one per prompt
    n: int
    stop: list[str]
    include_stop: bool = False  # vLLM's include_stop_str_in_output
    constraint_param: str | None = None  # the field that set the output's constraint, if any

    def constrained(self, constraint: Constraint) -> Job:
        """The job with every choice's output held to ``constraint`` (checked to compile)."""
        return replace(
            self,
            params=[replace(p, structured_output=constraint.output) for p in self.params],
            constraint_param=constraint.param,
        )

    @property
    def num_choices(self) -> int:
        return len(self.prompts) * self.n

    @property
    def prompt_tokens(self) -> int:
        """Prompt tokens as usage counts them: each prompt once, whatever ``n``."""
        return sum(len(p) for p in self.prompts)

    def usage(self, completion_tokens: int, cached_tokens: int = 0) -> Usage:
        """``cached_tokens``: prompt tokens the prefix cache served, summed over the prompts."""
        return Usage(
            prompt_tokens=self.prompt_tokens,
            completion_tokens=completion_tokens,
            total_tokens=self.prompt_tokens + completion_tokens,
            prompt_tokens_details=PromptTokensDetails(cached_tokens=cached_tokens),
        )

    def demand(self) -> Demand:
        """What the job asks of the gateway: each choice reads its prompt and may write its ``max_tokens``."""
        return Demand(
            usage_prompt_tokens=self.prompt_tokens,
            prompt_tokens=self.prompt_tokens * self.n,
            max_new_tokens=self.n * sum(p.max_tokens for p in self.params),
            sequences=self.num_choices,
            n=self.n,
            max_tokens=max(p.max_tokens for p in self.params),
        )


def build_job(
    req: SamplingFields,
    prompts: list[list[int]],
    *,
    max_tokens: int | None,
    max_model_len: int,
    vocab_size: int,
    prompt_param: str,
    defaults: SamplingDefaults,
    prompt_logprobs: int | None = None,
) -> Job:
    """The request checked against the model and turned into engine requests.

    ``prompt_logprobs``: alternatives per prompt token, when the prompt's logprobs are wanted
    (vLLM's field, or an echoed prompt's); raises a 400 ``APIError`` naming the field at fault.
    """
    bad_ids = [t for t in req.stop_token_ids or () if not 0 <= t < vocab_size]
    if bad_ids:
        raise invalid_request(f"stop_token_ids holds ids outside the vocabulary: {bad_ids}", param="stop_token_ids")
    base = _base_params(req, defaults, vocab_size, prompt_logprobs)
    params = []
    for prompt in prompts:
        if not prompt:
            raise invalid_request("The prompt is empty.", param=prompt_param)
        # Its length first: a prompt of token ids can hold a million, and only then is each looked at.
        max_new_tokens = _max_new_tokens(req, len(prompt), max_tokens, max_model_len, prompt_param)
        if any(not 0 <= t < vocab_size for t in prompt):
            raise invalid_request("The prompt holds token ids outside the vocabulary.", param=prompt_param)
        params.append(replace(base, max_tokens=max_new_tokens))
    return Job(
        prompts=prompts, params=params, n=req.n, stop=req.stop_strings(), include_stop=req.include_stop_str_in_output
    )


# A logit_bias key longer than this is no token id (no vocabulary reaches 10**12 tokens), and int()
# refuses keys of 4,300 digits or more: such a key is refused before it is converted.
_MAX_TOKEN_ID_CHARS = 12


def _logit_bias(req: SamplingFields, vocab_size: int) -> tuple[tuple[int, float], ...]:
    """OpenAI's ``{"token id": bias}`` as engine pairs; keys that are not token ids are a 400."""
    pairs = []
    for key, bias in (req.logit_bias or {}).items():
        token_id = int(key) if len(key) <= _MAX_TOKEN_ID_CHARS and key.strip().lstrip("-").isdigit() else None
        if token_id is None or not 0 <= token_id < vocab_size:
            raise invalid_request(
                f"logit_bias keys must be token ids below {vocab_size}; got {key[: _MAX_TOKEN_ID_CHARS + 1]!r}.",
                param="logit_bias",
            )
        pairs.append((token_id, bias))
    return tuple(sorted(pairs))


def _max_new_tokens(
    req: SamplingFields, prompt_len: int, max_tokens: int | None, max_model_len: int, prompt_param: str
) -> int:
    room = max_model_len - prompt_len
    if (max_tokens is None and room < 1) or (max_tokens is not None and max_tokens > room):
        asked = prompt_len + (max_tokens or 1)
        raise invalid_request(
            f"This model's maximum context length is {max_model_len} tokens. However, you requested "
            f"{asked} tokens ({prompt_len} in the {prompt_param}, {max_tokens or 1} in the completion). "
            "Please reduce the length of the prompt or completion.",
            param=prompt_param,
            code="context_length_exceeded",
        )
    max_new_tokens = max_tokens if max_tokens is not None else room
    if req.min_tokens > max_new_tokens:
        limit = f"max_tokens ({max_tokens})" if max_tokens is not None else f"the {room} tokens left in the context"
        raise invalid_request(f"min_tokens ({req.min_tokens}) must not exceed {limit}.", param="min_tokens")
    return max_new_tokens


def _base_params(
    req: SamplingFields,
    defaults: SamplingDefaults,
    vocab_size: int,
    prompt_logprobs: int | None,
) -> SamplingParams:
    """The request's own sampling fields, with the model's defaults where it leaves them out;
    ``max_tokens`` is each prompt's own, set by the caller."""
    top_k = defaults.top_k if req.top_k is None else req.top_k
    # A top_k of the whole vocabulary or more keeps every token, as 0 and -1 do; said as 0 so no
    # engine meets an integer it cannot take (vLLM's engine core failed to serialize 2**70).
    top_k = 0 if top_k >= vocab_size else top_k
    return SamplingParams(
        max_tokens=1,
        temperature=defaults.temperature if req.temperature is None else req.temperature,
        top_p=defaults.top_p if req.top_p is None else req.top_p,
        top_k=max(top_k, 0),
        seed=req.seed,
        presence_penalty=req.presence_penalty,
        frequency_penalty=req.frequency_penalty,
        repetition_penalty=defaults.repetition_penalty if req.repetition_penalty is None else req.repetition_penalty,
        min_tokens=req.min_tokens,
        ignore_eos=req.ignore_eos,
        stop_token_ids=tuple(sorted(set(req.stop_token_ids or ()))),
        min_p=req.min_p,
        logit_bias=_logit_bias(req, vocab_size),
        logprobs=req.num_logprobs(),
        prompt_logprobs=prompt_logprobs if prompt_logprobs is not None else req.prompt_logprobs,
    )


class Generation:
    """Runs a job's choices on the engine and yields their text as it comes."""

    def __init__(self, engine: Engine, tokenization: Tokenization) -> None:
        self.engine = engine
        self.tokenization = tokenization

    def run(self, job: Job, inbox: asyncio.Queue[object]) -> AsyncGenerator[ChoiceEvent, None]:
        """The job's events from all its choices, in arrival order.

        ``inbox`` is where the choices deliver them; an exception put there by anyone else (a
        drain ending the request) is raised to the consumer as the request's last event.
        """
        choices = [
            self._choice(prompt_index * job.n + k, prompt, _choice_params(params, k), job)
            for prompt_index, (prompt, params) in enumerate(zip(job.prompts, job.params, strict=True))
            for k in range(job.n)
        ]
        return _merge(choices, inbox)

    async def _choice(
        self, index: int, prompt: list[int], params: SamplingParams, job: Job
    ) -> AsyncGenerator[ChoiceEvent, None]:
        text = self.tokenization.text_stream(job.stop, params.min_tokens, job.include_stop)
        request = EngineRequest(request_id=new_id("req"), prompt_token_ids=prompt, params=params)
        # Leaving this block early (stop string, client gone) closes the engine's stream, which
        # aborts the request and frees its KV cache blocks.
        first = True
        try:
            async with aclosing(self.engine.generate(request)) as outputs:
                async for out in outputs:
                    ids = out.new_token_ids
                    # The token that stopped the request counts, but is not text (as in vLLM).
                    if out.stop_reason is not None:
                        ids = ids[:-1]
                    delta = text.push(ids)
                    event = ChoiceEvent(
                        index,
                        delta,
                        len(out.new_token_ids),
                        scheduled_at=out.scheduled_at,
                        logprobs=(out.logprobs or [])[: len(ids)],
                        prompt_logprobs=out.prompt_logprobs if first else None,
                        num_cached_tokens=out.num_cached_tokens if first else None,
                    )
                    first = False
                    if text.stopped:
                        yield replace(event, finish_reason="stop", stop_string=text.stop_string)
                        return
                    if out.finish_reason is not None:
                        reason: ChoiceFinishReason = "length" if out.finish_reason == "length" else "stop"
                        yield replace(event, text=delta + text.flush(), finish_reason=reason)
                        return
                    if delta or event.num_tokens:
                        yield event
        except ConstraintDeadEndError as exc:  # the client's constraint at fault: a 400 naming its field
            param = job.constraint_param
            raise invalid_request(f"'{param}' {exc}.", param=param) from exc


def _choice_params(params: SamplingParams, k: int) -> SamplingParams:
    """Choice ``k`` of a seeded request gets its own seed, so ``n`` choices differ but repeat.

    The seed wraps within the signed 64-bit range, so a seed at its top still derives valid seeds.
    """
    if params.seed is None or k == 0:
        return params
    return replace(params, seed=wrap_seed(params.seed + k))


async def _merge(
    streams: list[AsyncGenerator[ChoiceEvent, None]], queue: asyncio.Queue[object]
) -> AsyncGenerator[ChoiceEvent, None]:
    """Interleave the choices' events in arrival order; closing the merge closes them all."""

    async def pump(stream: AsyncGenerator[ChoiceEvent, None]) -> None:
        try:
            async for event in stream:
                queue.put_nowait(event)
        except Exception as exc:
            queue.put_nowait(exc)
        finally:
            queue.put_nowait(None)

    tasks = [asyncio.create_task(pump(s)) for s in streams]
    try:
        remaining = len(tasks)
        while remaining:
            item = await queue.get()
            if item is None:
                remaining -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                assert isinstance(item, ChoiceEvent)
                yield item
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
