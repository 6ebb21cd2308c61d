"""Iteration-level scheduling: which requests prefill and which decode at each engine step.

Kept apart from model execution so the policy can be read and tested without a model. Running
requests occupy cache slots ``0..n-1`` in order, which is what lets a decode step attend to a
dense view of the cache.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from adapters.cpu.sequence import Sequence


@dataclass
class StepPlan:
    prefill: list[Sequence] = field(default_factory=list)
    decode: list[Sequence] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.prefill or self.decode)


@dataclass(frozen=True)
class SlotMove:
    """The cache copy a departure needs: the last running request fills the freed slot."""

    src: int
    dst: int
    length: int


class Scheduler:
    def __init__(self, *, max_num_seqs: int, max_num_batched_tokens: int) -> None:
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def schedule(self) -> StepPlan:
        """Admit waiting requests while slots and the prefill token budget last; decode the rest.

        A prompt longer than the whole budget is still admitted when it comes first, alone,
        so no request can wait forever.
        """
        plan = StepPlan(decode=list(self.running))
        budget = self.max_num_batched_tokens
        while self.waiting and len(self.running) < self.max_num_seqs:
            seq = self.waiting[0]
            need = seq.num_tokens - seq.num_cached
            if need > budget and plan.prefill:
                break
            self.waiting.popleft()
            seq.slot = len(self.running)
            self.running.append(seq)
            plan.prefill.append(seq)
            budget -= need
        return plan

    def remove(self, seq: Sequence) -> SlotMove | None:
        """Take a request out of the queues; return the cache move that keeps slots dense."""
        if seq in self.waiting:
            self.waiting.remove(seq)
            return None
        if seq.slot < 0 or seq.slot >= len(self.running) or self.running[seq.slot] is not seq:
            return None
        hole, last = seq.slot, self.running.pop()
        seq.slot = -1
        if last is seq:
            return None
        self.running[hole] = last
        last.slot = hole
        return SlotMove(src=len(self.running), dst=hole, length=last.num_cached)

    def find(self, request_id: str) -> Sequence | None:
        for seq in (*self.running, *self.waiting):
            if seq.request_id == request_id:
                return seq
        return None
