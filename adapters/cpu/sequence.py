"""A request's state inside the CPU engine: its tokens, its place in the KV cache, its status.

The scheduler is the only part that changes a sequence (nano-vllm's ``Sequence``, vLLM v1's
``Request``); the block manager fills in its block table when the scheduler asks, and the model
runner only reads it.
"""

from __future__ import annotations

import enum
import random
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from adapters.engine import EngineRequest, FinishReason, TokenLogprobs

if TYPE_CHECKING:
    from adapters.cpu.ngram_index import NgramIndex
    from adapters.cpu.structured_output import Grammar


class RequestStatus(enum.Enum):
    WAITING = enum.auto()
    RUNNING = enum.auto()
    PREEMPTED = enum.auto()  # its blocks were taken back; it waits to be recomputed
    FINISHED_STOPPED = enum.auto()  # EOS or a stop token id
    FINISHED_LENGTH_CAPPED = enum.auto()  # max_tokens or the context window
    FINISHED_ABORTED = enum.auto()  # the client went away
    FINISHED_ERROR = enum.auto()  # its own sampling failed

    @property
    def is_finished(self) -> bool:
        return self.value >= RequestStatus.FINISHED_STOPPED.value

    @property
    def finish_reason(self) -> FinishReason | None:
        return _FINISH_REASONS.get(self)


_FINISH_REASONS: dict[RequestStatus, FinishReason] = {
    RequestStatus.FINISHED_STOPPED: "stop",
    RequestStatus.FINISHED_LENGTH_CAPPED: "length",
    RequestStatus.FINISHED_ABORTED: "abort",
}


@dataclass(eq=False)
class Sequence:
    """One request's tokens and cache state.

    Built on the event loop before the request reaches the engine thread, so that its per-request
    set-up (the seeded generator, its grammar's compilation) can fail that request alone.
    """

    request: EngineRequest
    all_token_ids: list[int] = field(init=False)  # prompt then output, one list appended to
    num_prompt_tokens: int = field(init=False)
    num_computed_tokens: int = 0  # tokens whose keys and values are in the cache
    block_table: list[int] = field(default_factory=list)  # cache blocks holding its tokens, in order
    chain_ids: list[int] = field(default_factory=list)  # prefix-cache identity of its full blocks
    status: RequestStatus = RequestStatus.WAITING
    scheduled_at: float | None = None  # time.monotonic() of its first scheduling
    num_cached_tokens: int = 0  # prompt tokens the prefix cache served when first scheduled
    output_counts: Counter[int] = field(default_factory=Counter)  # for presence and frequency penalties
    generator: torch.Generator = field(init=False)
    grammar: Grammar | None = None  # its structured-output constraint, compiled
    ngram_index: NgramIndex | None = None  # where speculative decoding looks up its drafts, built on first use
    # Where it asked for prompt_logprobs: those of its prompt positions computed so far (None for
    # the first token, which nothing precedes).
    prompt_logprobs: list[TokenLogprobs | None] = field(default_factory=lambda: [None])

    def __post_init__(self) -> None:
        self.all_token_ids = list(self.request.prompt_token_ids)
        self.num_prompt_tokens = len(self.all_token_ids)
        seed = self.request.params.seed
        self.generator = torch.Generator().manual_seed(seed if seed is not None else random.getrandbits(63))

    @property
    def request_id(self) -> str:
        return self.request.request_id

    @property
    def num_tokens(self) -> int:
        return len(self.all_token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.all_token_ids) - self.num_prompt_tokens

    @property
    def needs_prompt_logprobs(self) -> bool:
        """It asked for prompt logprobs and some are still to compute.

        Until then it must compute its whole prompt: positions served by the prefix cache have
        no logits.
        """
        params = self.request.params
        return params.prompt_logprobs is not None and len(self.prompt_logprobs) < self.num_prompt_tokens

    def append_token_id(self, token_id: int) -> None:
        self.all_token_ids.append(token_id)
        self.output_counts[token_id] += 1
