"""``n`` choices, and several prompts, in one response: each choice keeps its index and its own
finish, streamed choices interleave as their text arrives, and usage counts every choice."""

from __future__ import annotations

from typing import Any

import httpx
import openai
from openai.lib.streaming.chat import ChatCompletionStreamState

from adapters.engine import EngineRequest
from tests.fast.fake_engine import FakeEngine, Reply
from tests.fast.tiny_model import MODEL, TinyModel
from tests.helpers import sse_chunks

SEED = 1000  # choice k of a seeded request is seeded SEED + k, which tells the fake which choice asks


def _choice(request: EngineRequest) -> int:
    assert request.params.seed is not None
    return request.params.seed - SEED


async def test_streamed_choices_interleave_in_arrival_order(
    http: httpx.AsyncClient, fake: FakeEngine, tiny: TinyModel
) -> None:
    # Choice 0 says A, B, C at 0, 40 and 80 ms; choice 1 says x, y at 20 and 60 ms.
    replies = [tiny.reply("A", "B", "C", delays=[0.0, 0.04, 0.04]), tiny.reply("x", "y", delays=[0.02, 0.04])]
    fake.script = lambda request: replies[_choice(request)]
    response = await http.post(
        "/v1/chat/completions",
        json={
            "model": MODEL,
            "messages": [{"role": "user", "content": "hi"}],
            "n": 2,
            "seed": SEED,
            "stream": True,
            "stream_options": {"include_usage": True},
        },
    )
    chunks = sse_chunks(response.text)
    usage, chunks = chunks[-1], chunks[:-1]
    assert usage["choices"] == []
    assert usage["usage"]["completion_tokens"] == 4 + 3
    # The choices open together, in index order (the openai SDK's stream helper needs that order),
    # with the first token: no chunk comes before it.
    assert [c["choices"] for c in chunks[:2]] == [
        [{"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}]
        for i in (0, 1)
    ]
    # After the openings, one chunk per token the engine emitted, in the order it emitted them.
    choice_of = {r.request_id: _choice(r) for r in fake.requests}
    expected = [
        (choice_of[rid], "stop" if token == tiny.eos else tiny.tokenization.decode([token]))
        for rid, token in fake.emitted
    ]
    seen = [
        (c["choices"][0]["index"], c["choices"][0]["finish_reason"] or c["choices"][0]["delta"]["content"])
        for c in chunks[2:]
    ]
    assert seen == expected
    assert [i for i, _ in seen] != sorted(i for i, _ in seen), "the choices should have interleaved"
    assert [s for s in seen if s[1] == "stop"] == [(1, "stop"), (0, "stop")]


async def test_the_sdks_stream_helper_reads_choices_whose_first_tokens_come_out_of_order(
    sdk: openai.AsyncOpenAI, fake: FakeEngine, tiny: TinyModel
) -> None:
    """The openai SDK's stream accumulator takes a choice's first chunk as the next index: the
    choices must open in index order even when choice 1 has its first token first."""
    replies = [tiny.reply("A", delays=0.05), tiny.reply("x")]
    fake.script = lambda request: replies[_choice(request)]
    state = ChatCompletionStreamState()
    stream = await sdk.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hi"}], n=2, seed=SEED, stream=True
    )
    async for chunk in stream:
        state.handle_chunk(chunk)
    assert fake.emitted[0][1] == tiny.ids("x")[0], "choice 1 said its first token first"
    assert [c.message.content for c in state.get_final_completion().choices] == ["A", "x"]


async def test_whole_choices_in_order_with_summed_usage(
    sdk: openai.AsyncOpenAI, fake: FakeEngine, tiny: TinyModel
) -> None:
    # Choice 1 finishes first and runs into max_tokens; the response still lists choice 0 first.
    replies = [tiny.reply("A", "B", "C", delays=0.01), tiny.reply("v", "w", "x", "y", "z")]
    fake.script = lambda request: replies[_choice(request)]
    messages: Any = [{"role": "user", "content": "hi"}]
    reply = await sdk.chat.completions.create(model=MODEL, messages=messages, n=2, seed=SEED, max_tokens=4)
    assert [(c.index, c.message.content, c.finish_reason) for c in reply.choices] == [
        (0, "ABC", "stop"),
        (1, "vwxy", "length"),
    ]
    single = await sdk.chat.completions.create(model=MODEL, messages=messages, seed=SEED, max_tokens=4)
    assert reply.usage is not None and single.usage is not None
    assert reply.usage.prompt_tokens == single.usage.prompt_tokens  # the prompt counts once
    assert reply.usage.completion_tokens == 4 + 4
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + 8


async def test_several_prompts_each_with_n_choices(sdk: openai.AsyncOpenAI, fake: FakeEngine, tiny: TinyModel) -> None:
    def script(request: EngineRequest) -> Reply:
        return tiny.reply(f"{tiny.tokenization.decode(request.prompt_token_ids)}-{_choice(request)}")

    fake.script = script
    reply = await sdk.completions.create(model=MODEL, prompt=["one", "two"], n=2, seed=SEED, max_tokens=20)
    assert [(c.index, c.text) for c in reply.choices] == [(0, "one-0"), (1, "one-1"), (2, "two-0"), (3, "two-1")]
    assert reply.usage is not None
    assert reply.usage.prompt_tokens == len(tiny.ids("one")) + len(tiny.ids("two"))
    assert reply.usage.completion_tokens == 2 * (len(tiny.ids("one-0")) + 1) + 2 * (len(tiny.ids("two-0")) + 1)
