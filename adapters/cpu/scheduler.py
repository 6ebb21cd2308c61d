"""Iteration-level scheduling: which requests' tokens each engine step computes, and what follows.

The scheduler owns every change to a sequence, as vLLM v1's does: ``schedule`` decides a step and
hands the model runner a snapshot of it (``SchedulerOutput``), and ``update_from_output`` takes the
tokens the step sampled, advances each sequence, caches its full blocks, decides which requests
finished and why, and frees them. Kept apart from model execution so the policy can be read and
tested without a model.

Every step has a token budget. Running requests come first, oldest first: a decoding request needs
one token, a request still prefilling takes the next chunk of its prompt. Of the budget, at most
``prompt_tokens_per_step`` go to prompts while nothing decodes, and at most
``decoding_prompt_tokens_per_step`` while something does: a burst of prompts is prefilled a few
whole prompts in its first step and then about one prompt per step, each step's decoding requests
riding along, so they reach their first tokens in turn (the median one after about half the
burst's prefill, where two steps of 2,048 tokens made it wait for three quarters of it), while a
step that streams already running must wait for stays short (each prompt token costs them about
what a decode step's row does). While any request is
decoding, a long prompt is capped to a small chunk per step, so it cannot stall the streams
already running: it is prefilled a chunk per step, interleaved with their tokens. Short prompts are
taken whole, first come first served: a burst of them then reaches its first tokens in turn
instead of all advancing a chunk at a time and all waiting for the last chunk. Waiting requests
are then admitted, reusing cached prefix blocks, while the budget, the batch size and free blocks
last. When a running request needs a block and none is free, the newest request is preempted: its
blocks are released and it waits at the front of the queue, to be recomputed later. A recomputed
request keeps its output tokens, and so its grammar's state, which has taken exactly those tokens.

A request that asked for prompt logprobs computes its whole prompt, not reading the prefix cache
(cached positions have no logits), until it has them all, as in vLLM.

With speculative decoding, a decoding request's step also computes the drafts proposed for it
(``adapters.cpu.spec_decode``), within the step's token budget and never past its max_tokens or
the context window; the sampler keeps the drafts the model agrees with, and only those count as
computed, so the cache positions of the rest are simply written again by the next step.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass

from adapters.cpu.block_manager import BlockManager
from adapters.cpu.outputs import ModelRunnerOutput, SampledToken
from adapters.cpu.sequence import RequestStatus, Sequence
from adapters.cpu.spec_decode import NgramProposer, speculable
from adapters.engine import EngineOutput, RequestFailedError

# Prompt tokens one step computes at most (see the module's docstring): enough rows for the GEMMs
# to run at full rate, few enough that a burst's prompts finish a few per step.
PROMPT_TOKENS_PER_STEP = 512
# The same while requests are decoding, whose next tokens wait for the step: at 32 streams of a
# burst of 128-token prompts, 512 made their inter-token latency p99 7x its median, 128 made it
# 2.8x, at the same time to first token (benchmarks/RESULTS.md, issue 25).
DECODING_PROMPT_TOKENS_PER_STEP = 128


@dataclass(frozen=True)
class ScheduledRequest:
    """One sequence's part of a step, fixed when it was scheduled."""

    seq: Sequence
    num_computed_tokens: int  # the chunk starts here: tokens already in the cache when scheduled
    num_scheduled_tokens: int
    samples: bool  # the chunk reaches the sequence's last token, so the step samples its next one
    # The chunk's positions whose logits give prompt logprobs the sequence asked for and lacks:
    # position p predicts prompt token p + 1.
    prompt_logprob_positions: range = range(0)
    # Tokens guessed to follow the sequence, computed after its last token (counted in
    # num_scheduled_tokens); the step samples at each of their positions too.
    draft_token_ids: tuple[int, ...] = ()


@dataclass(frozen=True)
class SchedulerOutput:
    """What one step computes, in the order the runner packs it (vLLM's ``SchedulerOutput``)."""

    requests: list[ScheduledRequest]

    @property
    def total_num_scheduled_tokens(self) -> int:
        return sum(r.num_scheduled_tokens for r in self.requests)

    @property
    def sampling(self) -> list[ScheduledRequest]:
        """The requests that get new tokens from this step, in order."""
        return [r for r in self.requests if r.samples]


# What a step produced for each request it touched: its new tokens, or why it failed alone.
EngineCoreOutputs = list[tuple[str, EngineOutput | RequestFailedError]]


class Scheduler:
    def __init__(
        self,
        blocks: BlockManager,
        *,
        max_num_seqs: int,
        max_num_batched_tokens: int,
        prompt_tokens_per_step: int = PROMPT_TOKENS_PER_STEP,
        decoding_prompt_tokens_per_step: int = DECODING_PROMPT_TOKENS_PER_STEP,
        prefill_chunk_tokens: int,
        long_prefill_token_threshold: int,
        max_model_len: int,
        eos_token_ids: frozenset[int],
        proposer: NgramProposer | None = None,
    ) -> None:
        self.blocks = blocks
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.prompt_tokens_per_step = prompt_tokens_per_step
        self.decoding_prompt_tokens_per_step = decoding_prompt_tokens_per_step
        self.prefill_chunk_tokens = prefill_chunk_tokens
        self.long_prefill_token_threshold = long_prefill_token_threshold
        self.max_model_len = max_model_len
        self.eos_token_ids = eos_token_ids
        self.proposer = proposer
        self.requests: dict[str, Sequence] = {}  # every unfinished request, by id
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.num_preemptions = 0
        # Speculative decoding, as vLLM counts it: steps of a request with drafts, the drafts
        # computed, and those the sampler kept.
        self.num_drafts = 0
        self.num_draft_tokens = 0
        self.num_accepted_tokens_per_pos = [0] * (proposer.config.max_drafts if proposer else 0)

    def add_request(self, seq: Sequence) -> None:
        seq.status = RequestStatus.WAITING
        self.requests[seq.request_id] = seq
        self.waiting.append(seq)

    def has_unfinished_requests(self) -> bool:
        return bool(self.requests)

    def schedule(self) -> SchedulerOutput:
        scheduled: list[ScheduledRequest] = []
        decoding = any(s.num_tokens - s.num_computed_tokens == 1 for s in self.running)
        budget = self.max_num_batched_tokens
        prompt_budget = self.decoding_prompt_tokens_per_step if decoding else self.prompt_tokens_per_step
        max_drafts = self.proposer.config.drafts_for_batch(len(self.running)) if self.proposer else 0
        preempted = False
        index = 0
        while index < len(self.running) and budget > 0:
            seq = self.running[index]
            remaining = seq.num_tokens - seq.num_computed_tokens
            n = min(remaining, budget, self._cap(seq, decoding))
            if remaining > 1:
                n = min(n, prompt_budget)
            if n == 0:  # a prompt, and this step's prompt tokens are spent
                index += 1
                continue
            start = seq.num_computed_tokens
            drafts = self._drafts(seq, min(max_drafts, budget - 1)) if remaining == 1 else ()
            # Drafts take blocks only where they are free: they never preempt a request.
            if drafts and not self.blocks.allocate_slots(seq, n + len(drafts)):
                drafts = ()
            if drafts or self.blocks.allocate_slots(seq, n):
                scheduled.append(self._scheduled(seq, start, n, drafts))
                budget -= n + len(drafts)
                prompt_budget -= n if remaining > 1 else 0
                index += 1
                continue
            preempted = True
            victim = self.running.pop()
            self._preempt(victim)
            if victim is seq:
                break
        while (
            not preempted and self.waiting and len(self.running) < self.max_num_seqs and min(budget, prompt_budget) > 0
        ):
            seq = self.waiting[0]
            cached = [] if seq.needs_prompt_logprobs else self.blocks.get_computed_blocks(seq)
            remaining = seq.num_tokens - len(cached) * self.blocks.block_size
            n = min(remaining, budget, prompt_budget, self._cap(seq, decoding))
            if not self.blocks.allocate_slots(seq, n, cached):
                if not self.running:
                    raise RuntimeError(f"request {seq.request_id} cannot fit in an empty KV cache")
                break
            self.waiting.popleft()
            seq.status = RequestStatus.RUNNING
            if seq.scheduled_at is None:
                seq.scheduled_at = time.monotonic()
                seq.num_cached_tokens = len(cached) * self.blocks.block_size
            self.running.append(seq)
            scheduled.append(self._scheduled(seq, seq.num_computed_tokens, n))
            budget -= n
            prompt_budget -= n
        return SchedulerOutput(scheduled)

    def update_from_output(
        self, scheduler_output: SchedulerOutput, runner_output: ModelRunnerOutput
    ) -> EngineCoreOutputs:
        """Apply a step's results: one token (or failure) per sampling request, and prompt logprobs."""
        for scheduled in scheduler_output.requests:
            seq = scheduled.seq
            # Drafts count as computed only once the sampler kept them (below).
            drafts = len(scheduled.draft_token_ids)
            seq.num_computed_tokens = scheduled.num_computed_tokens + scheduled.num_scheduled_tokens - drafts
            self.blocks.cache_full_blocks(seq)
            seq.prompt_logprobs += runner_output.prompt_logprobs.get(seq.request_id, ())
        outputs: EngineCoreOutputs = []
        for scheduled, sampled in zip(scheduler_output.sampling, runner_output.sampled, strict=True):
            seq = scheduled.seq
            kept: list[SampledToken] = []
            status: RequestStatus | None = None
            for token in [] if isinstance(sampled, RequestFailedError) else sampled:
                if seq.grammar is not None and not seq.grammar.accept_token(token.token_id):
                    sampled = RequestFailedError(f"The grammar refused sampled token {token.token_id}")
                    break
                seq.append_token_id(token.token_id)
                kept.append(token)
                status = self._check_stop(seq, token.token_id)
                if status is not None:
                    break
            if isinstance(sampled, RequestFailedError):
                self.finish_request(seq, RequestStatus.FINISHED_ERROR)
                outputs.append((seq.request_id, sampled))
                continue
            if len(kept) > 1:  # every kept token but the last is a draft, its keys and values computed
                seq.num_computed_tokens += len(kept) - 1
                self.blocks.cache_full_blocks(seq)
            if scheduled.draft_token_ids:
                self.num_drafts += 1
                self.num_draft_tokens += len(scheduled.draft_token_ids)
                for position in range(len(sampled) - 1):
                    self.num_accepted_tokens_per_pos[position] += 1
            if status is not None:
                self.finish_request(seq, status)
            outputs.append((seq.request_id, self._output(seq, kept)))
        return outputs

    @staticmethod
    def _output(seq: Sequence, sampled: list[SampledToken]) -> EngineOutput:
        first = seq.num_output_tokens == len(sampled)
        asked_prompt_logprobs = seq.request.params.prompt_logprobs is not None
        stopped = seq.status == RequestStatus.FINISHED_STOPPED  # by its last token: EOS, a stop id, the grammar's end
        logprobs = [t.logprobs for t in sampled if t.logprobs is not None]
        return EngineOutput(
            [t.token_id for t in sampled],
            seq.status.finish_reason,
            sampled[-1].token_id if stopped else None,
            seq.scheduled_at,
            logprobs=logprobs or None,
            prompt_logprobs=list(seq.prompt_logprobs) if first and asked_prompt_logprobs else None,
            num_cached_tokens=seq.num_cached_tokens if first else None,
        )

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
        if seq.grammar is not None and seq.grammar.is_terminated:  # it took its end token: nothing may follow
            return RequestStatus.FINISHED_STOPPED
        if seq.num_output_tokens >= params.max_tokens or seq.num_tokens >= self.max_model_len:
            return RequestStatus.FINISHED_LENGTH_CAPPED
        return None

    @staticmethod
    def _scheduled(seq: Sequence, start: int, n: int, drafts: tuple[int, ...] = ()) -> ScheduledRequest:
        prompt_positions = range(0)
        if seq.needs_prompt_logprobs:
            prompt_positions = range(
                max(start, len(seq.prompt_logprobs) - 1), min(start + n, seq.num_prompt_tokens - 1)
            )
        return ScheduledRequest(
            seq,
            start,
            n + len(drafts),
            samples=start + n == seq.num_tokens,
            prompt_logprob_positions=prompt_positions,
            draft_token_ids=drafts,
        )

    def _drafts(self, seq: Sequence, limit: int) -> tuple[int, ...]:
        """The drafts a decoding request computes this step: at most ``limit``, none past its
        max_tokens or the context window (its last token then comes from the sampler)."""
        if self.proposer is None or not speculable(seq):
            return ()
        params = seq.request.params
        room = min(params.max_tokens - seq.num_output_tokens, self.max_model_len - seq.num_tokens) - 1
        return self.proposer.propose(seq, min(limit, room))

    def _cap(self, seq: Sequence, decoding: bool) -> int:
        """The most tokens of ``seq`` one step may compute."""
        long = seq.num_tokens > self.long_prefill_token_threshold
        return self.prefill_chunk_tokens if decoding and long else self.max_num_batched_tokens

    def _preempt(self, seq: Sequence) -> None:
        self.blocks.free(seq)
        seq.status = RequestStatus.PREEMPTED
        self.waiting.appendleft(seq)
        self.num_preemptions += 1
