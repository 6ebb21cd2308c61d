"""The scheduler's policy, without a model: admission, budgets and dense slots."""

from __future__ import annotations

from adapters.cpu.scheduler import Scheduler, SlotMove
from adapters.cpu.sequence import Sequence
from adapters.engine import EngineRequest, SamplingParams


def _seq(name: str, prompt_len: int) -> Sequence:
    return Sequence(EngineRequest(name, list(range(1, prompt_len + 1)), SamplingParams(max_tokens=4)))


def test_admits_up_to_slots_and_budget_then_queues() -> None:
    scheduler = Scheduler(max_num_seqs=3, max_num_batched_tokens=100)
    seqs = [_seq(f"r{i}", 40) for i in range(5)]
    for seq in seqs:
        scheduler.add(seq)
    plan = scheduler.schedule()
    assert plan.prefill == seqs[:2]  # a third 40-token prompt would exceed the 100-token budget
    assert plan.decode == []
    plan = scheduler.schedule()
    assert plan.prefill == [seqs[2]] and plan.decode == seqs[:2]
    assert [s.slot for s in scheduler.running] == [0, 1, 2]
    assert list(scheduler.waiting) == seqs[3:]


def test_oversized_prompt_is_admitted_alone() -> None:
    scheduler = Scheduler(max_num_seqs=4, max_num_batched_tokens=10)
    big, small = _seq("big", 50), _seq("small", 5)
    scheduler.add(big)
    scheduler.add(small)
    assert scheduler.schedule().prefill == [big]
    assert scheduler.schedule().prefill == [small]


def test_departure_keeps_slots_dense() -> None:
    scheduler = Scheduler(max_num_seqs=4, max_num_batched_tokens=1000)
    seqs = [_seq(f"r{i}", 3) for i in range(4)]
    for seq in seqs:
        scheduler.add(seq)
    scheduler.schedule()
    for seq in seqs:
        seq.num_cached = seq.num_tokens
    assert scheduler.remove(seqs[1]) == SlotMove(src=3, dst=1, length=3)
    assert scheduler.running == [seqs[0], seqs[3], seqs[2]]
    assert [s.slot for s in scheduler.running] == [0, 1, 2]
    assert scheduler.remove(seqs[2]) is None  # the last slot leaves no hole
    assert scheduler.find("r3") is seqs[3] and scheduler.find("r1") is None


def test_waiting_request_can_be_removed() -> None:
    scheduler = Scheduler(max_num_seqs=1, max_num_batched_tokens=1000)
    first, second = _seq("a", 3), _seq("b", 3)
    scheduler.add(first)
    scheduler.add(second)
    scheduler.schedule()
    assert scheduler.remove(second) is None
    assert not scheduler.waiting and scheduler.running == [first]
