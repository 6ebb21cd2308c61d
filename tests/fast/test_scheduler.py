"""The scheduler's and block manager's policy, without a model: budgets, chunks, blocks, preemption, prefixes.

Each test plays the model runner's part only: it schedules, and hands ``update_from_output`` a
token for every request the step samples (and prompt logprobs where asked), as the engine core
does after a forward pass.
"""

from __future__ import annotations

import itertools

from adapters.cpu.block_manager import BlockManager
from adapters.cpu.outputs import ModelRunnerOutput, SampledToken
from adapters.cpu.scheduler import Scheduler, SchedulerOutput
from adapters.cpu.sequence import RequestStatus, Sequence
from adapters.engine import EngineOutput, EngineRequest, RequestFailedError, SamplingParams, TokenLogprobs

BLOCK = 4
EOS = 2


_fresh = itertools.count(1000, 1000)


def _seq(name: str, prompt: list[int] | int, params: SamplingParams | None = None) -> Sequence:
    """A sequence with the given prompt, or with that many tokens no other prompt shares."""
    tokens = list(range(next(_fresh), 0, -1))[:prompt] if isinstance(prompt, int) else prompt
    return Sequence(EngineRequest(name, tokens, params or SamplingParams(max_tokens=100)))


def _scheduler(
    num_blocks: int, *, seqs: int = 8, budget: int = 64, chunk: int = 64, long_prompt: int = 16
) -> Scheduler:
    return Scheduler(
        BlockManager(num_blocks, BLOCK),
        max_num_seqs=seqs,
        max_num_batched_tokens=budget,
        prefill_chunk_tokens=chunk,
        long_prefill_token_threshold=long_prompt,
        max_model_len=1000,
        eos_token_ids=frozenset({EOS}),
    )


def _run(scheduler: Scheduler, scheduled: SchedulerOutput, token: int = 7) -> dict[str, EngineOutput]:
    """The runner's part of a step: ``token`` for every request the step samples.

    Prompt logprobs, where the step computes them, are a stand-in: each position's logprob is
    minus the position, so a test can see which positions were computed.
    """
    prompt = {
        r.seq.request_id: [TokenLogprobs(r.seq.all_token_ids[p + 1], -p) for p in r.prompt_logprob_positions]
        for r in scheduled.requests
        if r.prompt_logprob_positions
    }
    sampled: list[list[SampledToken] | RequestFailedError] = [[SampledToken(token)]] * len(scheduled.sampling)
    outputs = scheduler.update_from_output(scheduled, ModelRunnerOutput(sampled, prompt))
    return {request_id: out for request_id, out in outputs if isinstance(out, EngineOutput)}


def _plan(scheduled: SchedulerOutput) -> list[tuple[str, int]]:
    return [(r.seq.request_id, r.num_scheduled_tokens) for r in scheduled.requests]


def test_admits_within_budget_and_batch_size_then_queues() -> None:
    scheduler = _scheduler(100, seqs=3, budget=100)
    seqs = [_seq(f"r{i}", 40) for i in range(5)]
    for seq in seqs:
        scheduler.add_request(seq)
    first = scheduler.schedule()
    # The third prompt gets what is left of the budget; it finishes its prompt next step.
    assert _plan(first) == [("r0", 40), ("r1", 40), ("r2", 20)]
    _run(scheduler, first)
    second = scheduler.schedule()
    # Decoding now, so r2's remaining chunk is capped too; r3 waits for a free place in the batch.
    assert _plan(second) == [("r0", 1), ("r1", 1), ("r2", 20)]
    assert list(scheduler.waiting) == seqs[3:]


def test_long_prompt_is_chunked_while_others_decode() -> None:
    scheduler = _scheduler(200, budget=64, chunk=8)
    short = _seq("short", 5)
    scheduler.add_request(short)
    _run(scheduler, scheduler.schedule())
    long = _seq("long", 30)
    scheduler.add_request(long)
    plans = []
    for _ in range(5):
        scheduled = scheduler.schedule()
        plans.append(_plan(scheduled))
        _run(scheduler, scheduled)
    # Every step still decodes the running request; the long prompt arrives 8 tokens at a time.
    assert plans == [
        [("short", 1), ("long", 8)],
        [("short", 1), ("long", 8)],
        [("short", 1), ("long", 8)],
        [("short", 1), ("long", 6)],
        [("short", 1), ("long", 1)],
    ]


def test_short_prompts_are_taken_whole_first_come_first_served_while_others_decode() -> None:
    scheduler = _scheduler(200, budget=32, chunk=4, long_prompt=16)
    running = _seq("running", 5)
    scheduler.add_request(running)
    _run(scheduler, scheduler.schedule())
    burst = [_seq(f"b{i}", 12) for i in range(4)]
    for seq in burst:
        scheduler.add_request(seq)
    first = scheduler.schedule()
    # Two whole prompts fit the budget beside the decode, the third gets the rest; nobody is cut
    # to 4-token chunks, so b0 and b1 sample their first token from this very step.
    assert _plan(first) == [("running", 1), ("b0", 12), ("b1", 12), ("b2", 7)]
    assert [r.samples for r in first.requests] == [True, True, True, False]


def test_a_burst_is_prefilled_a_few_whole_prompts_per_step_while_the_first_ones_decode() -> None:
    scheduler = Scheduler(
        BlockManager(200, BLOCK),
        max_num_seqs=8,
        max_num_batched_tokens=100,
        prompt_tokens_per_step=24,
        decoding_prompt_tokens_per_step=12,
        prefill_chunk_tokens=4,
        long_prefill_token_threshold=16,
        max_model_len=1000,
        eos_token_ids=frozenset({EOS}),
    )
    for i in range(5):
        scheduler.add_request(_seq(f"b{i}", 12))
    plans = []
    for _ in range(4):
        scheduled = scheduler.schedule()
        plans.append(_plan(scheduled))
        _run(scheduler, scheduled)
    # Two prompts in the first step, then one per step while the first ones decode, however much of
    # the token budget is left; the decodes do not count.
    assert plans == [
        [("b0", 12), ("b1", 12)],
        [("b0", 1), ("b1", 1), ("b2", 12)],
        [("b0", 1), ("b1", 1), ("b2", 1), ("b3", 12)],
        [("b0", 1), ("b1", 1), ("b2", 1), ("b3", 1), ("b4", 12)],
    ]


def test_newest_request_is_preempted_when_blocks_run_out_and_resumes() -> None:
    scheduler = _scheduler(4, budget=64)  # 16 tokens of cache
    old, new = _seq("old", 8), _seq("new", 7)
    scheduler.add_request(old)
    scheduler.add_request(new)
    _run(scheduler, scheduler.schedule())
    assert scheduler.blocks.num_free == 0
    scheduled = scheduler.schedule()
    # old's 9th token needs a third block: new gives its two back and waits at the front.
    assert _plan(scheduled) == [("old", 1)]
    assert scheduler.num_preemptions == 1
    assert list(scheduler.waiting) == [new] and new.num_computed_tokens == 0 and not new.block_table
    assert new.status == RequestStatus.PREEMPTED
    _run(scheduler, scheduled)
    scheduler.abort_request("old")
    # Resumed, new recomputes its prompt and the token it had already produced, except for its
    # first block, which it had registered in the prefix cache and nobody has evicted since.
    assert _plan(scheduler.schedule()) == [("new", 4)]
    assert new.num_computed_tokens == 4 and new.all_token_ids[new.num_prompt_tokens :] == [7]


def test_shared_prefix_reuses_blocks_and_leaves_the_last_token_to_compute() -> None:
    scheduler = _scheduler(50)
    prefix = list(range(100, 112))  # three full blocks
    first = _seq("first", [*prefix, 1, 2])
    scheduler.add_request(first)
    _run(scheduler, scheduler.schedule())
    first_blocks = list(first.block_table[:3])
    scheduler.abort_request("first")  # its blocks stay cached
    second = _seq("second", [*prefix, 3, 4, 5])
    scheduler.add_request(second)
    assert _plan(scheduler.schedule()) == [("second", 3)]
    assert second.num_computed_tokens == 12 and second.block_table[:3] == first_blocks
    assert scheduler.blocks.stats.hit_tokens == 12
    # A prompt that is exactly the cached prefix still computes its last block's final token.
    third = _seq("third", prefix)
    scheduler.add_request(third)
    assert ("third", 4) in _plan(scheduler.schedule())


def test_blocks_are_all_freed_and_evicted_least_recently_used() -> None:
    manager = BlockManager(6, BLOCK)
    a, b = _seq("a", [1, 2, 3, 4, 5]), _seq("b", [9, 9, 9, 9, 9])
    for seq in (a, b):
        assert manager.allocate_slots(seq, 5)
        seq.num_computed_tokens = 5
        manager.cache_full_blocks(seq)
    assert manager.num_free == 2
    b_head = b.block_table[0]
    manager.free(a)
    manager.free(b)
    assert manager.num_free == 6 and manager.num_used == 0
    # Taking four blocks evicts a's tail, b's tail, then a's cached prefix: the oldest releases go first.
    c = _seq("c", 16)
    assert manager.allocate_slots(c, 16)
    assert manager.get_computed_blocks(_seq("a2", [1, 2, 3, 4, 0])) == []
    assert [blk.block_id for blk in manager.get_computed_blocks(_seq("b2", [9, 9, 9, 9, 0]))] == [b_head]
    assert not manager.allocate_slots(_seq("d", 12), 12)  # two blocks free, three needed: nothing taken
    assert manager.num_free == 2


def test_waiting_request_can_be_removed() -> None:
    scheduler = _scheduler(10, seqs=1)
    first, second = _seq("a", 3), _seq("b", 3)
    scheduler.add_request(first)
    scheduler.add_request(second)
    scheduler.schedule()
    scheduler.abort_request("b")
    assert not scheduler.waiting and scheduler.running == [first]
    assert scheduler.requests == {"a": first} and second.status == RequestStatus.FINISHED_ABORTED


def test_first_output_reports_the_prefix_cache_hit() -> None:
    scheduler = _scheduler(50)
    prefix = list(range(100, 112))  # three full blocks
    scheduler.add_request(_seq("first", [*prefix, 1]))
    assert _run(scheduler, scheduler.schedule())["first"].num_cached_tokens == 0
    scheduler.abort_request("first")
    scheduler.add_request(_seq("second", [*prefix, 2]))
    first_output = _run(scheduler, scheduler.schedule())["second"]
    assert first_output.num_cached_tokens == 12
    assert _run(scheduler, scheduler.schedule())["second"].num_cached_tokens is None  # the first output only


def test_prompt_logprobs_cover_every_chunk_once_and_skip_the_prefix_cache() -> None:
    scheduler = _scheduler(50, budget=64, chunk=4, long_prompt=4)
    prefix = list(range(100, 112))
    scheduler.add_request(_seq("warm", [*prefix, 1]))
    _run(scheduler, scheduler.schedule())  # caches the prefix and decodes from now on, so prompts are chunked
    prompt = [*prefix, 2, 3]
    asks = _seq("asks", prompt, SamplingParams(max_tokens=100, prompt_logprobs=1))
    scheduler.add_request(asks)
    plans = []
    outputs: dict[str, EngineOutput] = {}
    while "asks" not in outputs:
        scheduled = scheduler.schedule()
        plans.append(
            [(r.seq.request_id, r.num_scheduled_tokens, r.prompt_logprob_positions) for r in scheduled.requests]
        )
        outputs = _run(scheduler, scheduled)
    # Its whole prompt is computed in 4-token chunks though its first 12 tokens are cached.
    assert [plan[1] for plan in plans] == [
        ("asks", 4, range(0, 4)),
        ("asks", 4, range(4, 8)),
        ("asks", 4, range(8, 12)),
        ("asks", 2, range(12, 13)),
    ]
    first = outputs["asks"]
    assert first.prompt_logprobs == [None] + [TokenLogprobs(prompt[p + 1], -p) for p in range(13)]
    assert first.num_cached_tokens == 0


def test_prompt_logprobs_survive_preemption_mid_prompt_without_repeats() -> None:
    scheduler = _scheduler(5, budget=8, chunk=4, long_prompt=4)  # 20 tokens of cache
    scheduler.add_request(_seq("old", 8, SamplingParams(max_tokens=5)))
    _run(scheduler, scheduler.schedule())
    prompt = list(range(500, 512))
    new = _seq("new", prompt, SamplingParams(max_tokens=100, prompt_logprobs=0))
    scheduler.add_request(new)
    outputs: dict[str, EngineOutput] = {}
    for _ in range(20):
        outputs = _run(scheduler, scheduler.schedule())
        if "new" in outputs:
            break
    # new had computed two of its three chunks when old's growth took its blocks; it computed its
    # prompt again from the start but asked logits only of the positions it still lacked.
    assert scheduler.num_preemptions == 1
    assert outputs["new"].prompt_logprobs == [None] + [TokenLogprobs(prompt[p + 1], -p) for p in range(11)]
