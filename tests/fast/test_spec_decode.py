"""Speculative decoding's policy without a model: the drafts proposed, how many a step takes, what is kept.

The proposer and the scheduler are the real ones; the tests play the model runner's part, deciding
which drafts the model "agrees" with. The sampler's tests give it logits directly.
"""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from adapters.cpu.block_manager import BlockManager
from adapters.cpu.ngram_index import NgramIndex
from adapters.cpu.outputs import ModelRunnerOutput, SampledToken
from adapters.cpu.sampler import Sampler
from adapters.cpu.scheduler import ScheduledRequest, Scheduler, SchedulerOutput
from adapters.cpu.sequence import RequestStatus, Sequence
from adapters.cpu.spec_decode import NgramConfig, NgramProposer, speculable
from adapters.engine import EngineOutput, EngineRequest, RequestFailedError, SamplingParams

BLOCK = 4
EOS = 2
PATTERN = [11, 12, 13, 14, 15, 16]  # a prompt that repeats it makes every continuation predictable
NGRAM = {"method": "ngram", "num_speculative_tokens": 3}


def _reference(tokens: list[int], min_n: int, max_n: int, k: int) -> list[int]:
    """vLLM's ngram proposal by brute force: the longest suffix n-gram seen before, its earliest occurrence."""
    for n in range(max_n, min_n - 1, -1):
        for start in range(len(tokens) - n):
            if n <= len(tokens) and tokens[start : start + n] == tokens[len(tokens) - n :]:
                return tokens[start + n : start + n + k]
    return []


@settings(max_examples=300, deadline=None)
@given(
    tokens=st.lists(st.integers(0, 3), min_size=1, max_size=40),
    min_n=st.integers(1, 3),
    extra=st.integers(0, 3),
    k=st.integers(1, 5),
)
def test_index_proposes_what_a_search_of_the_whole_sequence_finds(
    tokens: list[int], min_n: int, extra: int, k: int
) -> None:
    index = NgramIndex(min_n, min_n + extra)
    for length in range(1, len(tokens)):  # the index grows with the sequence, as in serving
        index.continuation(tokens[:length])
    start = index.continuation(tokens)
    proposed = [] if start is None else tokens[start : start + k]
    assert proposed == _reference(tokens, min_n, min_n + extra, k)


def test_config_takes_vllms_keys_and_defaults() -> None:
    config = NgramConfig.parse({"method": "ngram", "num_speculative_tokens": 3})
    assert (config.min_n, config.max_n) == (5, 5)  # vLLM's defaults
    config = NgramConfig.parse({"model": "[ngram]", "num_speculative_tokens": 3, "prompt_lookup_max": 4})
    assert (config.min_n, config.max_n) == (4, 4)
    by_batch = {"num_speculative_tokens": 4, "num_speculative_tokens_per_batch_size": [[1, 4, 6], [9, 64, 0]]}
    config = NgramConfig.parse({**NGRAM, **by_batch})
    assert [config.drafts_for_batch(b) for b in (1, 4, 5, 8, 9, 64, 65)] == [6, 6, 4, 4, 0, 0, 4]
    assert config.max_drafts == 6


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"num_speculative_tokens": 3}, 'give "method": "ngram"'),
        ({"method": "eagle", "num_speculative_tokens": 3}, "method"),
        ({"method": "ngram"}, "num_speculative_tokens: Field required"),
        ({"method": "ngram", "num_speculative_tokens": 0}, "num_speculative_tokens"),
        ({**NGRAM, "draft_tensor_parallel_size": 1}, "--engine vllm"),
        ({**NGRAM, "prompt_lookup_min": 4, "prompt_lookup_max": 2}, "must be <="),
        ({**NGRAM, "prompt_lookup_min": 1, "prompt_lookup_max": 20}, "lengths"),
        ({**NGRAM, "num_speculative_tokens_per_batch_size": [[4, 2, 1]]}, "entry"),
    ],
)
def test_config_errors_name_the_key(config: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match="--speculative-config") as error:
        NgramConfig.parse(config)
    assert message in str(error.value)


def _scheduler(budget: int = 64, **speculative: object) -> Scheduler:
    config = NgramConfig.parse({"method": "ngram", "num_speculative_tokens": 3, "prompt_lookup_max": 2, **speculative})
    return Scheduler(
        BlockManager(100, BLOCK),
        max_num_seqs=8,
        max_num_batched_tokens=budget,
        prefill_chunk_tokens=64,
        long_prefill_token_threshold=64,
        max_model_len=1000,
        eos_token_ids=frozenset({EOS}),
        proposer=NgramProposer(config),
    )


def _seq(name: str, params: SamplingParams | None = None) -> Sequence:
    return Sequence(EngineRequest(name, PATTERN * 2, params or SamplingParams(max_tokens=100, temperature=0.0)))


def _step(scheduler: Scheduler, agree: int | None = None, next_token: int = 99) -> dict[str, EngineOutput]:
    """One step whose model keeps each request's first ``agree`` drafts (None: all), then says ``next_token``."""
    scheduled = scheduler.schedule()
    sampled: list[list[SampledToken] | RequestFailedError] = []
    for r in scheduled.sampling:
        kept = list(r.draft_token_ids[:agree])
        sampled.append([SampledToken(t) for t in [*kept, next_token]])
    outputs = scheduler.update_from_output(scheduled, ModelRunnerOutput(sampled))
    return {request_id: out for request_id, out in outputs if isinstance(out, EngineOutput)}


def _drafts(scheduled: SchedulerOutput) -> dict[str, tuple[int, ...]]:
    return {r.seq.request_id: r.draft_token_ids for r in scheduled.requests}


def test_decoding_request_computes_its_drafts_and_keeps_what_the_model_agrees_with() -> None:
    scheduler = _scheduler()
    seq = _seq("r")
    scheduler.add_request(seq)
    _step(scheduler, next_token=PATTERN[0])  # the prompt; the pattern goes on
    scheduled = scheduler.schedule()
    # The sequence ends ... 15 16 11: the 2-gram (16, 11) first occurred at the prompt's middle.
    assert _drafts(scheduled) == {"r": (12, 13, 14)}
    assert scheduled.requests[0].num_scheduled_tokens == 4  # its last token and three drafts
    outputs = scheduler.update_from_output(
        scheduled, ModelRunnerOutput([[SampledToken(12), SampledToken(13), SampledToken(77)]])
    )
    assert outputs[0][1].new_token_ids == [12, 13, 77]  # type: ignore[union-attr]
    assert seq.all_token_ids[-4:] == [11, 12, 13, 77]
    # Cached: the prompt, its first sampled token and the two kept drafts; 77 is computed next step.
    assert seq.num_computed_tokens == seq.num_tokens - 1
    stats = (scheduler.num_drafts, scheduler.num_draft_tokens, scheduler.num_accepted_tokens_per_pos)
    assert stats == (1, 3, [1, 1, 0])


def test_a_stop_token_among_the_kept_drafts_ends_the_request_there() -> None:
    scheduler = _scheduler()
    seq = _seq("r", SamplingParams(max_tokens=100, temperature=0.0, stop_token_ids=(13,)))
    scheduler.add_request(seq)
    _step(scheduler, next_token=PATTERN[0])
    outputs = _step(scheduler)  # drafts 12 13 14, all kept
    assert outputs["r"].new_token_ids == [12, 13]
    assert outputs["r"].finish_reason == "stop" and outputs["r"].stop_reason == 13
    assert seq.status == RequestStatus.FINISHED_STOPPED and not scheduler.running


def test_drafts_never_pass_max_tokens_or_the_step_budget() -> None:
    scheduler = _scheduler()
    seq = _seq("r", SamplingParams(max_tokens=3, temperature=0.0))
    scheduler.add_request(seq)
    _step(scheduler, next_token=PATTERN[0])
    # Two output tokens are left: one draft, then the token after it.
    assert _drafts(scheduler.schedule()) == {"r": (12,)}

    scheduler = _scheduler()
    for name in "ab":
        scheduler.add_request(_seq(name))
    _step(scheduler, next_token=PATTERN[0])  # two prompts of 12 tokens
    scheduler.max_num_batched_tokens = 6
    # a: its token and three drafts; b: its token and what is left, one draft.
    scheduled = scheduler.schedule()
    assert _drafts(scheduled) == {"a": (12, 13, 14), "b": (12,)}
    assert scheduled.total_num_scheduled_tokens == 6


def test_drafts_follow_vllms_batch_size_schedule() -> None:
    scheduler = _scheduler(num_speculative_tokens_per_batch_size=[[2, 8, 0]])
    for name in "ab":
        scheduler.add_request(_seq(name))
    _step(scheduler, next_token=PATTERN[0])
    assert _drafts(scheduler.schedule()) == {"a": (), "b": ()}  # two running: no drafts


def test_requests_whose_sampling_depends_on_their_draws_or_seed_are_not_speculated() -> None:
    def params(**fields: object) -> SamplingParams:
        return SamplingParams(**{"max_tokens": 100, "temperature": 0.0, **fields})  # type: ignore[arg-type]

    assert speculable(_seq("greedy"))
    assert speculable(_seq("greedy, seeded", params(seed=3)))  # greedy tokens do not depend on the seed
    assert speculable(_seq("sampled", params(temperature=0.8)))
    assert not speculable(_seq("sampled, seeded", params(temperature=0.8, seed=3)))
    assert not speculable(_seq("penalized", params(repetition_penalty=1.2)))
    assert not speculable(_seq("penalized", params(frequency_penalty=0.5)))
    assert speculable(_seq("below min_tokens", params(min_tokens=5)))


def _request(seq: Sequence, drafts: tuple[int, ...]) -> ScheduledRequest:
    return ScheduledRequest(seq, seq.num_tokens - 1, 1 + len(drafts), samples=True, draft_token_ids=drafts)


def _logits(*best: int, vocab: int = 8) -> torch.Tensor:
    rows = torch.zeros(len(best), vocab)
    for row, token in enumerate(best):
        rows[row, token] = 5.0
    return rows


def test_greedy_rows_keep_drafts_up_to_the_first_the_model_disagrees_with() -> None:
    sampler = Sampler(frozenset({EOS}))
    greedy = SamplingParams(max_tokens=10, temperature=0.0)
    seqs = [Sequence(EngineRequest(f"r{i}", [1, 3, 4], greedy)) for i in range(3)]
    requests = [_request(seqs[0], (5, 6)), _request(seqs[1], (5, 6)), _request(seqs[2], ())]
    logits = torch.cat([_logits(5, 6, 7), _logits(5, 4, 7), _logits(3)])
    sampled = sampler.sample(logits, requests)
    assert [[t.token_id for t in s] for s in sampled if isinstance(s, list)] == [[5, 6, 7], [5, 4], [3]]
    # The same rows through the per-request path (logprobs asked) keep the same tokens.
    with_logprobs = SamplingParams(max_tokens=10, temperature=0.0, logprobs=1)
    seq = Sequence(EngineRequest("lp", [1, 3, 4], with_logprobs))
    (kept,) = sampler.sample(_logits(5, 4, 7), [_request(seq, (5, 6))])
    assert isinstance(kept, list) and [t.token_id for t in kept] == [5, 4]
    assert all(t.logprobs is not None and t.logprobs.token_id == t.token_id for t in kept)


def test_sampled_rows_keep_each_tokens_distribution() -> None:
    """Rejection sampling against a one-token draft: the first token is distributed as without a draft."""
    sampler = Sampler(frozenset())
    probs = torch.tensor([0.5, 0.3, 0.2])
    row = probs.log().unsqueeze(0).repeat(2, 1)
    draws = 6000
    counts: Counter[int] = Counter()
    kept_draft = 0
    for index in range(draws):
        seq = Sequence(EngineRequest(f"s{index}", [1], SamplingParams(max_tokens=10, temperature=1.0)))
        (tokens,) = sampler.sample(row, [_request(seq, (1,))])  # the draft is token 1
        assert isinstance(tokens, list)
        counts[tokens[0].token_id] += 1
        kept_draft += tokens[0].token_id == 1
        assert len(tokens) == (2 if tokens[0].token_id == 1 else 1)
    for token, p in enumerate(probs.tolist()):
        share = counts[token] / draws
        assert abs(share - p) < 4 * (p * (1 - p) / draws) ** 0.5, (token, share, p)
    assert kept_draft == counts[1]


def test_min_tokens_bans_stop_tokens_at_each_drafts_position() -> None:
    """Two output tokens to go below min_tokens: the first two rows may not stop, the third may."""
    sampler = Sampler(frozenset({EOS}))
    params = SamplingParams(max_tokens=10, temperature=0.0, min_tokens=3)
    seq = Sequence(EngineRequest("m", [1, 3, 4], params))
    seq.append_token_id(5)  # one output token so far
    logits = _logits(EOS, EOS, EOS)
    logits[:, 6] = 4.0  # the best token that is not a stop token
    (kept,) = sampler.sample(logits, [_request(seq, (6, 6))])
    assert isinstance(kept, list) and [t.token_id for t in kept] == [6, 6, EOS]
