"""What the model runner hands the scheduler after a step (vLLM's ``v1/outputs.py``).

Kept apart from both so the scheduler can be driven without a model (its tests play the runner's
part by building these) and the runner need not know how the scheduler applies them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from adapters.engine import RequestFailedError, TokenLogprobs


@dataclass(frozen=True)
class SampledToken:
    """One request's next token, with its log-probabilities where the request asked for them."""

    token_id: int
    logprobs: TokenLogprobs | None = None


@dataclass(frozen=True)
class ModelRunnerOutput:
    """A step's results: what each sampling request drew, and the prompt logprobs it computed."""

    # One per sampling request, in ``SchedulerOutput.sampling`` order: its new tokens (the drafts
    # the sampler kept, then the token that follows them: one token without drafts), or the error
    # that ended that request alone.
    sampled: list[list[SampledToken] | RequestFailedError]
    # By request id: the prompt positions this step's chunk covered, in order (see
    # ``ScheduledRequest.prompt_logprob_positions``).
    prompt_logprobs: dict[str, list[TokenLogprobs]] = field(default_factory=dict)
