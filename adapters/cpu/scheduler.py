"""Iteration-level scheduling: which requests' tokens each engine step computes, and what follows.

The scheduler owns every change to a sequence, as vLLM v1's does: ``schedule`` decides a step and
hands the model runner a snapshot of it (``SchedulerOutput``), and ``update_from_output`` takes the
tokens the step sampled, advances each sequence, caches its full blocks, decides which requests
finished and why, and frees them. Kept apart from model execution so the policy can be read and
tested without a model.

Every step has a token budget. Running requests come first, oldest first: a decoding request needs
one token, a request still prefilling takes the next chunk of its prompt. While any request is
decoding, a long prompt is capped to a small chunk per step, so it cannot stall the streams
already running: it is prefilled a chunk per step, interleaved with their tokens. Short prompts are
taken whole, first come first served: a burst of them then reaches its first tokens in turn
instead of all advancing a chunk at a time and all waiting for the last chunk. Waiting requests
are then admitted, reusing cached prefix blocks, while the budget, the batch size and free blocks
last. When a running request needs a block and none is free, the newest request is preempted: its
blocks are released and it waits at the front of the queue, to be recomputed later.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

from adapters.cpu.block_manager import BlockManager
from adapters.cpu.sequence import RequestStatus, Sequence
from adapters.engine import EngineOutput, RequestFailedError


@dataclass(frozen=True)
class ScheduledRequest:
    """One sequence's part of a step, fixed when it was scheduled."""

    seq: Sequence
    num_computed_tokens: int  # the chunk starts here: tokens already in the cache when scheduled
    num_scheduled_tokens: int
    samples: bool  # the chunk reaches the sequence's last token, so the step samples its next one


@dataclass(frozen=True)
class SchedulerOutput:
    """What one step computes, in the order the runner packs it (vLLM's ``SchedulerOutput``)."""

    requests: list[ScheduledRequest]

    @property
    def total_num_scheduled_tokens(self) -> int:
        return sum(r.num_scheduled_tokens for r in self.requests)

    @property
    def sampling(self) -> list[Sequence]:
        """The sequences that get a new token from this step, in order."""
        return [r.seq for r in self.requests if r.samples]


# What a step produced for each request it touched: its new tokens, or why it failed alone.
EngineCoreOutputs = list[tuple[str, EngineOutput | RequestFailedError]]


class Scheduler:
    def __init__(
        self,
        blocks: BlockManager,
        *,
        max_num_seqs: int,
        max_num_batched_tokens: int,
        prefill_chunk_tokens: int,
        long_prefill_token_threshold: int,
        max_model_len: int,
        eos_token_ids: frozenset[int],
    ) -> None:
        self.blocks = blocks
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.prefill_chunk_tokens = prefill_chunk_tokens
        self.long_prefill_token_threshold = long_prefill_token_threshold
        self.max_model_len = max_model_len
        self.eos_token_ids = eos_token_ids
        self.requests: dict[str, Sequence] = {}  # every unfinished request, by id
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.num_preemptions = 0

    def add_request(self, seq: Sequence) -> None:
        seq.status = RequestStatus.WAITING
        self.requests[seq.request_id] = seq
        self.waiting.append(seq)

    def has_unfinished_requests(self) -> bool:
        return bool(self.requests)

    def schedule(self) -> SchedulerOutput:
        scheduled: list[ScheduledRequest] = []
        budget = self.max_num_batched_tokens
        decoding = any(s.num_tokens - s.num_computed_tokens == 1 for s in self.running)
        preempted = False
        index = 0
        while index < len(self.running) and budget > 0:
            seq = self.running[index]
            n = min(seq.num_tokens - seq.num_computed_tokens, budget, self._cap(seq, decoding))
            start = seq.num_computed_tokens
            if self.blocks.allocate_slots(seq, n):
                scheduled.append(self._scheduled(seq, start, n))
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
            cached = self.blocks.get_computed_blocks(seq)
            remaining = seq.num_tokens - len(cached) * self.blocks.block_size
            n = min(remaining, budget, self._cap(seq, decoding))
            if not self.blocks.allocate_slots(seq, n, cached):
                if not self.running:
                    raise RuntimeError(f"request {seq.request_id} cannot fit in an empty KV cache")
                break
            self.waiting.popleft()
            seq.status = RequestStatus.RUNNING
            seq.scheduled_at = seq.scheduled_at or time.monotonic()
            self.running.append(seq)
            scheduled.append(self._scheduled(seq, seq.num_computed_tokens, n))
            budget -= n
        return SchedulerOutput(scheduled)

    def update_from_output(
        self, scheduler_output: SchedulerOutput, sampled: Iterable[int | RequestFailedError]
    ) -> EngineCoreOutputs:
        """Apply a step's results: ``sampled`` holds one token (or failure) per sampling request, in order."""
        for scheduled in scheduler_output.requests:
            seq = scheduled.seq
            seq.num_computed_tokens = scheduled.num_computed_tokens + scheduled.num_scheduled_tokens
            self.blocks.cache_full_blocks(seq)
        outputs: EngineCoreOutputs = []
        for seq, token in zip(scheduler_output.sampling, sampled, strict=True):
            if isinstance(token, RequestFailedError):
                self.finish_request(seq, RequestStatus.FINISHED_ERROR)
                outputs.append((seq.request_id, token))
                continue
            seq.append_token_id(token)
            status = self._check_stop(seq, token)
            if status is not None:
                self.finish_request(seq, status)
            outputs.append((seq.request_id, EngineOutput([token], seq.status.finish_reason, seq.scheduled_at)))
        return outputs

    def finish_request(self, seq: Sequence, status: RequestStatus) -> None:
        """Take a request out of the queues and release its blocks."""
        if seq.status.is_finished:
            return
        if seq.status == RequestStatus.RUNNING:
            self.running.remove(seq)
            self.blocks.free(seq)
        else:
            self.waiting.remove(seq)
        seq.status = status
        del self.requests[seq.request_id]

    def abort_request(self, request_id: str) -> bool:
        """Finish the request and free its blocks; False if it had already finished."""
        seq = self.requests.get(request_id)
        if seq is not None:
            self.finish_request(seq, RequestStatus.FINISHED_ABORTED)
        return seq is not None

    def _check_stop(self, seq: Sequence, token: int) -> RequestStatus | None:
        params = seq.request.params
        if token in params.stop_token_ids or (token in self.eos_token_ids and not params.ignore_eos):
            return RequestStatus.FINISHED_STOPPED
        if seq.num_output_tokens >= params.max_tokens or seq.num_tokens >= self.max_model_len:
            return RequestStatus.FINISHED_LENGTH_CAPPED
        return None

    @staticmethod
    def _scheduled(seq: Sequence, start: int, n: int) -> ScheduledRequest:
        return ScheduledRequest(seq, start, n, samples=start + n == seq.num_tokens)

    def _cap(self, seq: Sequence, decoding: bool) -> int:
        """The most tokens of ``seq`` one step may compute."""
        long = seq.num_tokens > self.long_prefill_token_threshold
        return self.prefill_chunk_tokens if decoding and long else self.max_num_batched_tokens

    def _preempt(self, seq: Sequence) -> None:
        self.blocks.free(seq)
        seq.status = RequestStatus.PREEMPTED
        self.waiting.appendleft(seq)
        self.num_preemptions += 1
