"""Iteration-level scheduling: how many tokens of which requests each engine step computes.

Kept apart from model execution so the policy can be read and tested without a model. Every step
has a token budget. Running requests come first, oldest first: a decoding request needs one token,
a request still prefilling takes the next chunk of its prompt. While any request is decoding, a
long prompt is capped to a small chunk per step, so it cannot stall the streams already running:
it is prefilled a chunk per step, interleaved with their tokens. Short prompts are taken whole,
first come first served: a burst of them then reaches its first tokens in turn instead of all
advancing a chunk at a time and all waiting for the last chunk. Waiting requests are
then admitted, reusing cached prefix blocks, while the budget, the batch size and free blocks
last. When a running request needs a block and none is free, the newest request is preempted:
its blocks are released and it waits at the front of the queue, to be recomputed later.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from adapters.cpu.block_manager import BlockManager
from adapters.cpu.sequence import Sequence


@dataclass(frozen=True)
class Chunk:
    """``num_tokens`` tokens of ``seq``, starting at its first uncomputed position."""

    seq: Sequence
    num_tokens: int

    @property
    def samples(self) -> bool:
        """Whether this chunk reaches the sequence's last token, so a new token follows it."""
        return self.seq.num_computed + self.num_tokens == self.seq.num_tokens


class Scheduler:
    def __init__(
        self,
        blocks: BlockManager,
        *,
        max_num_seqs: int,
        max_num_batched_tokens: int,
        prefill_chunk_tokens: int,
        long_prompt_tokens: int,
    ) -> None:
        self.blocks = blocks
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.prefill_chunk_tokens = prefill_chunk_tokens
        self.long_prompt_tokens = long_prompt_tokens
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.num_preemptions = 0

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def schedule(self) -> list[Chunk]:
        chunks: list[Chunk] = []
        budget = self.max_num_batched_tokens
        decoding = any(s.num_tokens - s.num_computed == 1 for s in self.running)
        preempted = False
        index = 0
        while index < len(self.running) and budget > 0:
            seq = self.running[index]
            remaining = seq.num_tokens - seq.num_computed
            n = min(remaining, budget, self._cap(seq, decoding))
            if self.blocks.allocate(seq, n):
                chunks.append(Chunk(seq, n))
                budget -= n
                index += 1
                continue
            preempted = True
            victim = self.running.pop()
            self._preempt(victim)
            if victim is seq:
                break
        while not preempted and self.waiting and len(self.running) < self.max_num_seqs and budget > 0:
            seq = self.waiting[0]
            cached = self.blocks.lookup(seq)
            remaining = seq.num_tokens - len(cached) * self.blocks.block_size
            n = min(remaining, budget, self._cap(seq, decoding))
            if not self.blocks.allocate(seq, n, cached):
                if not self.running:
                    raise RuntimeError(f"request {seq.request_id} cannot fit in an empty KV cache")
                break
            self.waiting.popleft()
            self.running.append(seq)
            chunks.append(Chunk(seq, n))
            budget -= n
        return chunks

    def _cap(self, seq: Sequence, decoding: bool) -> int:
        """The most tokens of ``seq`` one step may compute."""
        long = seq.num_tokens > self.long_prompt_tokens
        return self.prefill_chunk_tokens if decoding and long else self.max_num_batched_tokens

    def _preempt(self, seq: Sequence) -> None:
        self.blocks.free(seq)
        self.waiting.appendleft(seq)
        self.num_preemptions += 1

    def finish(self, seq: Sequence) -> None:
        """Take a request out of the queues and release its blocks."""
        if seq in self.waiting:
            self.waiting.remove(seq)
        elif seq in self.running:
            self.running.remove(seq)
            self.blocks.free(seq)

    def find(self, request_id: str) -> Sequence | None:
        for seq in (*self.running, *self.waiting):
            if seq.request_id == request_id:
                return seq
        return None
