"""A slow consumer takes every token in one read; an error reaches it only after the tokens before it."""

from __future__ import annotations

import asyncio

import pytest

from adapters.cpu.output_collector import RequestOutputCollector
from adapters.engine import EngineDeadError, EngineOutput, TokenLogprobs


async def test_outputs_merge_while_the_consumer_is_behind() -> None:
    collector = RequestOutputCollector()
    collector.put(EngineOutput([1]))
    collector.put(EngineOutput([2]))
    collector.put(EngineOutput([3], "length"))
    assert await collector.get() == EngineOutput([1, 2, 3], "length")


async def test_a_waiting_consumer_wakes_for_each_output() -> None:
    collector = RequestOutputCollector()
    waiting = asyncio.ensure_future(collector.get())
    await asyncio.sleep(0)
    assert not waiting.done()
    collector.put(EngineOutput([5]))
    assert await waiting == EngineOutput([5])
    later = asyncio.ensure_future(collector.get())
    await asyncio.sleep(0)
    assert not later.done(), "a consumed output must not be delivered twice"
    collector.put(EngineOutput([6], "stop"))
    assert await later == EngineOutput([6], "stop")


async def test_tokens_before_an_error_are_delivered_first() -> None:
    collector = RequestOutputCollector()
    collector.put(EngineOutput([1]))
    collector.put(EngineDeadError("gone"))
    assert await collector.get() == EngineOutput([1])
    with pytest.raises(EngineDeadError, match="gone"):
        await collector.get()


async def test_merged_outputs_keep_every_logprob_and_the_first_outputs_prompt_fields() -> None:
    collector = RequestOutputCollector()
    first_logprobs = [TokenLogprobs(1, -0.5, ((1, -0.5), (4, -1.5)))]
    prompt = [None, TokenLogprobs(9, -2.0)]
    collector.put(
        EngineOutput([1], scheduled_at=3.0, logprobs=first_logprobs, prompt_logprobs=prompt, num_cached_tokens=16)
    )
    collector.put(EngineOutput([2], logprobs=[TokenLogprobs(2, -0.1)]))
    collector.put(EngineOutput([3], "stop", logprobs=[TokenLogprobs(3, -0.2)]))
    assert await collector.get() == EngineOutput(
        [1, 2, 3],
        "stop",
        scheduled_at=3.0,
        logprobs=[*first_logprobs, TokenLogprobs(2, -0.1), TokenLogprobs(3, -0.2)],
        prompt_logprobs=prompt,
        num_cached_tokens=16,
    )
    collector.put(EngineOutput([4]))
    assert (await collector.get()).logprobs is None  # a request without logprobs gets none
