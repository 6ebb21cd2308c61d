"""Where a completion ends: a stop string is cut out of the text however the tokens split it, never
sent, and ends the choice with ``finish_reason: "stop"``; ``min_tokens`` keeps early stop strings
as text; EOS, ``stop_token_ids`` and ``max_tokens`` end it as OpenAI and vLLM clients expect."""

from __future__ import annotations

import openai
import pytest

from tests.fast.fake_engine import FakeEngine, Reply
from tests.fast.tiny_model import MODEL, TinyModel

HI: list[dict[str, str]] = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(
    ("stop", "expected"),
    [
        (["o wo"], "Hell"),  # spans the tokens of "lo" and " wo"
        (["rld", "lo w"], "Hel"),  # the first to appear wins
        ("!", "Hello world"),
        (["never"], "Hello world! Bye"),
    ],
)
async def test_stop_strings_are_never_sent(
    sdk: openai.AsyncOpenAI, fake: FakeEngine, tiny: TinyModel, stream: bool, stop: str | list[str], expected: str
) -> None:
    fake.script = lambda _: tiny.reply("Hel", "lo", " wo", "rld", "!", " Bye", delays=0.001)
    if stream:
        chunks = [
            c.choices[0]
            async for c in await sdk.completions.create(model=MODEL, prompt="hi", stop=stop, stream=True, max_tokens=20)
        ]
        text, reason = "".join(c.text for c in chunks), chunks[-1].finish_reason
    else:
        whole = await sdk.completions.create(model=MODEL, prompt="hi", stop=stop, max_tokens=20)
        text, reason = whole.choices[0].text, whole.choices[0].finish_reason
    assert text == expected
    assert reason == "stop"


async def test_stop_string_ends_generation(sdk: openai.AsyncOpenAI, fake: FakeEngine, tiny: TinyModel) -> None:
    ids = tiny.ids("one", " two", " three", " four")
    fake.script = lambda _: tiny.reply("one", " two", " three", " four")
    reply = await sdk.chat.completions.create(model=MODEL, messages=HI, stop=[" thr"])  # type: ignore[arg-type]
    assert reply.choices[0].message.content == "one two"
    until_stop = next(n for n in range(len(ids)) if " thr" in tiny.tokenization.decode(ids[:n]))
    assert reply.usage is not None and reply.usage.completion_tokens == until_stop
    assert fake.aborted == [fake.requests[0].request_id], "the engine should stop generating"


@pytest.mark.parametrize("min_tokens", [0, 1, 2, 3])
async def test_min_tokens_holds_back_stop_strings(
    sdk: openai.AsyncOpenAI, fake: FakeEngine, tiny: TinyModel, min_tokens: int
) -> None:
    fake.script = lambda _: tiny.reply("A", " STOP", " B", " STOP", " C")
    first_stop_ends_at = len(tiny.ids("A", " STOP"))
    assert first_stop_ends_at > 3, "the stop string must span several tokens"
    # No stop string may end within the text of the first min_tokens tokens.
    min_tokens = first_stop_ends_at - 3 + min_tokens
    reply = await sdk.completions.create(
        model=MODEL, prompt="hi", stop=" STOP", max_tokens=20, extra_body={"min_tokens": min_tokens}
    )
    expected = "A STOP B" if min_tokens >= first_stop_ends_at else "A"
    assert reply.choices[0].text == expected
    assert reply.choices[0].finish_reason == "stop"


async def test_eos_and_max_tokens(sdk: openai.AsyncOpenAI) -> None:
    natural = await sdk.chat.completions.create(model=MODEL, messages=HI)  # type: ignore[arg-type]
    assert (natural.choices[0].message.content, natural.choices[0].finish_reason) == ("Hello world!", "stop")
    assert natural.usage is not None and natural.usage.completion_tokens == 5  # EOS included, as vLLM counts it
    cut = await sdk.chat.completions.create(model=MODEL, messages=HI, max_tokens=2)  # type: ignore[arg-type]
    assert (cut.choices[0].message.content, cut.choices[0].finish_reason) == ("Hello wor", "length")


async def test_ignore_eos_and_min_tokens_reach_the_engine(
    sdk: openai.AsyncOpenAI, fake: FakeEngine, tiny: TinyModel
) -> None:
    hi = tiny.ids("Hi")
    script = [*hi, tiny.eos, *tiny.ids(" there"), tiny.eos]
    fake.script = lambda _: Reply(script)
    plain = await sdk.completions.create(model=MODEL, prompt="hi", max_tokens=len(script))
    assert (plain.choices[0].text, plain.choices[0].finish_reason) == ("Hi", "stop")
    ignoring = await sdk.completions.create(
        model=MODEL, prompt="hi", max_tokens=len(script), extra_body={"ignore_eos": True}
    )
    assert (ignoring.choices[0].text, ignoring.choices[0].finish_reason) == ("Hi there", "length")
    # The first EOS would be token len(hi) + 1: too early to stop.
    held = await sdk.completions.create(
        model=MODEL, prompt="hi", max_tokens=len(script), extra_body={"min_tokens": len(hi) + 1}
    )
    assert (held.choices[0].text, held.choices[0].finish_reason) == ("Hi there", "stop")


async def test_stop_token_ids(sdk: openai.AsyncOpenAI, fake: FakeEngine, tiny: TinyModel) -> None:
    fake.script = lambda _: tiny.reply("Hello", " world", "!", " more")
    [bang] = tiny.ids("!")
    reply = await sdk.completions.create(model=MODEL, prompt="hi", max_tokens=20, extra_body={"stop_token_ids": [bang]})
    assert reply.choices[0].finish_reason == "stop"
    assert reply.usage is not None and reply.usage.completion_tokens == len(tiny.ids("Hello", " world", "!"))
    assert reply.choices[0].text.startswith("Hello world")


async def test_stop_token_is_not_text(sdk: openai.AsyncOpenAI, fake: FakeEngine, tiny: TinyModel) -> None:
    fake.script = lambda _: tiny.reply("Hello", " world", "!", " more")
    [bang] = tiny.ids("!")
    reply = await sdk.completions.create(model=MODEL, prompt="hi", max_tokens=20, extra_body={"stop_token_ids": [bang]})
    assert reply.choices[0].text == "Hello world"
