"""Speculative decoding from the request's own tokens: vLLM's ``ngram`` method (prompt lookup).

When the last few tokens of a sequence occurred earlier in it (an answer quoting its document,
code being edited, a list repeating its pattern), the tokens that followed them then are a good
guess for what follows now. The guesses (drafts) ride along in the request's next step as extra
rows, the model scores them all in one forward pass, and the sampler keeps the drafts the model
would have produced itself, plus the one token after them. On a CPU a decode step at a few rows is
bound by streaming the weights, not by arithmetic, so the extra rows cost little and every kept
draft is a step saved; at many rows the step is bound by arithmetic, and vLLM's
``num_speculative_tokens_per_batch_size`` says how many drafts each batch size may take.

Greedy output is exactly what the engine would produce without speculation (the kernels give
each row the same result whatever else the step computes); a sampled request's tokens keep
their distribution (rejection sampling against the draft, as in vLLM), not their exact values.
So a request with a seed, whose tokens must not depend on what shares its batch, and a request
whose sampling depends on the tokens it has drawn (penalties, a grammar) are not speculated; a
request below its min_tokens is (the sampler bans its stop tokens at each draft's position).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from adapters.cpu.ngram_index import NgramIndex
from adapters.cpu.sequence import Sequence

# Bounds on what one configuration can make every step do: drafts scored per request, and the
# n-gram lengths looked up after each token (each kept in every request's index).
MAX_SPECULATIVE_TOKENS = 64
MAX_NGRAM = 64
MAX_NGRAM_LENGTHS = 8


class NgramConfig(BaseModel):
    """``--speculative-config`` on the CPU engine, in vLLM's keys; vLLM's defaults for what is left out."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    method: Literal["ngram", "[ngram]"] | None = None
    model: Literal["ngram", "[ngram]"] | None = None  # vLLM's older way to name the method
    num_speculative_tokens: int = Field(gt=0, le=MAX_SPECULATIVE_TOKENS)
    prompt_lookup_max: int | None = Field(None, ge=1, le=MAX_NGRAM)
    prompt_lookup_min: int | None = Field(None, ge=1, le=MAX_NGRAM)
    # (first batch size, last batch size, drafts per request), inclusive; batch sizes no entry
    # covers take num_speculative_tokens.
    num_speculative_tokens_per_batch_size: list[tuple[int, int, int]] | None = None

    @model_validator(mode="after")
    def _check(self) -> NgramConfig:
        if self.method is None and self.model is None:
            raise ValueError('the CPU engine speculates with the ngram method: give "method": "ngram"')
        for start, end, k in self.num_speculative_tokens_per_batch_size or ():
            if not 1 <= start <= end or not 0 <= k <= MAX_SPECULATIVE_TOKENS:
                raise ValueError(
                    f"num_speculative_tokens_per_batch_size entry ({start}, {end}, {k}): want "
                    f"1 <= first <= last batch size and 0 <= drafts <= {MAX_SPECULATIVE_TOKENS}"
                )
        if self.max_n < self.min_n:
            raise ValueError(f"prompt_lookup_min={self.min_n} must be <= prompt_lookup_max={self.max_n}")
        if self.max_n - self.min_n + 1 > MAX_NGRAM_LENGTHS:
            raise ValueError(
                f"prompt_lookup_min={self.min_n} to prompt_lookup_max={self.max_n} is more than "
                f"{MAX_NGRAM_LENGTHS} n-gram lengths, each indexed for every token of every request"
            )
        return self

    @property
    def max_n(self) -> int:
        """Longest n-gram looked up; vLLM's default is 5, or the other bound where one is given."""
        return self.prompt_lookup_max or self.prompt_lookup_min or 5

    @property
    def min_n(self) -> int:
        return self.prompt_lookup_min or self.prompt_lookup_max or 5

    @property
    def max_drafts(self) -> int:
        """The most drafts a request takes in one step, at any batch size."""
        per_batch = [k for _, _, k in self.num_speculative_tokens_per_batch_size or ()]
        return max([self.num_speculative_tokens, *per_batch])

    def drafts_for_batch(self, batch_size: int) -> int:
        """Drafts each request may take when ``batch_size`` requests are running."""
        for start, end, k in self.num_speculative_tokens_per_batch_size or ():
            if start <= batch_size <= end:
                return k
        return self.num_speculative_tokens

    def describe(self) -> str:
        """One line for the start-up log."""
        schedule = self.num_speculative_tokens_per_batch_size
        per_batch = f", by batch size {schedule}" if schedule else ""
        return f"ngram, {self.num_speculative_tokens} drafts{per_batch}, n-grams of {self.min_n} to {self.max_n} tokens"

    @classmethod
    def parse(cls, config: dict[str, Any]) -> NgramConfig:
        """Raises ValueError naming the key where the CPU engine cannot run ``config``."""
        try:
            return cls.model_validate(config)
        except ValidationError as exc:
            error = exc.errors()[0]
            key = ".".join(str(part) for part in error["loc"])
            if error["type"] == "extra_forbidden":
                raise ValueError(
                    f"--speculative-config: {key} is not an option of the CPU engine's ngram speculation "
                    "(it takes method, num_speculative_tokens, prompt_lookup_max, prompt_lookup_min and "
                    "num_speculative_tokens_per_batch_size); vLLM's other methods need --engine vllm"
                ) from None
            where = f"{key}: " if key else ""
            raise ValueError(f"--speculative-config: {where}{error['msg']}") from None


def speculable(seq: Sequence) -> bool:
    """Whether the request's drafts can be checked in one step (see the module's docstring)."""
    params = seq.request.params
    return (params.greedy or params.seed is None) and seq.grammar is None and not params.penalized


class NgramProposer:
    def __init__(self, config: NgramConfig) -> None:
        self.config = config

    def propose(self, seq: Sequence, max_drafts: int) -> tuple[int, ...]:
        """Up to ``max_drafts`` tokens guessed to follow the sequence; none without a match."""
        if max_drafts <= 0:
            return ()
        if seq.ngram_index is None:
            seq.ngram_index = NgramIndex(self.config.min_n, self.config.max_n)
        tokens = seq.all_token_ids
        start = seq.ngram_index.continuation(tokens)
        if start is None:
            return ()
        return tuple(tokens[start : start + max_drafts])
