"""A request's state inside the CPU engine, shared by the scheduler, the block manager and the runner."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field

import torch

from adapters.engine import EngineRequest, FinishReason


@dataclass(eq=False)
class Sequence:
    request: EngineRequest
    output_ids: list[int] = field(default_factory=list)
    num_computed: int = 0  # tokens whose keys and values are in the cache
    block_table: list[int] = field(default_factory=list)  # cache blocks holding its tokens, in order
    chain_ids: list[int] = field(default_factory=list)  # prefix-cache identity of its full blocks
    finish_reason: FinishReason | None = None
    output_counts: Counter[int] = field(default_factory=Counter)
    generator: torch.Generator = field(init=False)

    def __post_init__(self) -> None:
        seed = self.request.params.seed
        self.generator = torch.Generator().manual_seed(seed if seed is not None else random.getrandbits(63))

    @property
    def request_id(self) -> str:
        return self.request.request_id

    @property
    def num_tokens(self) -> int:
        return len(self.request.prompt_token_ids) + len(self.output_ids)

    def token_ids(self) -> list[int]:
        return self.request.prompt_token_ids + self.output_ids

    def append(self, token_id: int) -> None:
        self.output_ids.append(token_id)
        self.output_counts[token_id] += 1
