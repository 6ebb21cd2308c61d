"""Text completions (/v1/completions) through the real openai SDK."""

from __future__ import annotations

import openai

from server.text.tokenization import Tokenization
from tests.real.helpers import ServerHandle

PROMPT = "The three primary colors are"


def test_completion_shape_and_default_length(api_client: openai.OpenAI, api_server: ServerHandle) -> None:
    reply = api_client.completions.create(model=api_server.model, prompt=PROMPT, temperature=0)
    assert reply.object == "text_completion"
    assert reply.id.startswith("cmpl-")
    choice = reply.choices[0]
    assert choice.text and choice.index == 0
    # OpenAI's default for this endpoint is 16 tokens.
    assert choice.finish_reason == "length"
    assert reply.usage is not None and reply.usage.completion_tokens == 16


def test_stream_matches_whole(api_client: openai.OpenAI, api_server: ServerHandle) -> None:
    whole = api_client.completions.create(model=api_server.model, prompt=PROMPT, temperature=0, max_tokens=30)
    chunks = list(
        api_client.completions.create(
            model=api_server.model,
            prompt=PROMPT,
            temperature=0,
            max_tokens=30,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == whole.choices[0].text
    reasons = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert reasons[-1] == whole.choices[0].finish_reason and not any(reasons[:-1])
    usage = chunks[-1].usage
    assert chunks[-1].choices == [] and usage is not None
    assert (usage.model_extra or {}).pop("server_timing")["total"] > 0  # ise's timings, beside OpenAI's usage
    assert usage == whole.usage


def test_prompt_forms(api_client: openai.OpenAI, api_server: ServerHandle) -> None:
    tokenizer = Tokenization(api_server.model_dir)
    ids = tokenizer.encode(PROMPT)
    as_text = api_client.completions.create(model=api_server.model, prompt=PROMPT, temperature=0, max_tokens=8)
    as_ids = api_client.completions.create(model=api_server.model, prompt=ids, temperature=0, max_tokens=8)
    assert as_ids.choices[0].text == as_text.choices[0].text
    batch = api_client.completions.create(
        model=api_server.model, prompt=[PROMPT, "Once upon a time"], temperature=0, max_tokens=8
    )
    assert [c.index for c in batch.choices] == [0, 1]
    assert batch.choices[0].text == as_text.choices[0].text
    id_batch = api_client.completions.create(model=api_server.model, prompt=[ids, ids], temperature=0, max_tokens=8)
    assert [c.text for c in id_batch.choices] == [as_text.choices[0].text] * 2
    assert batch.usage is not None and batch.usage.completion_tokens == 16


async def test_async_stream(api_aclient: openai.AsyncOpenAI, api_server: ServerHandle) -> None:
    stream = await api_aclient.completions.create(
        model=api_server.model, prompt=PROMPT, temperature=0, max_tokens=10, stream=True
    )
    text = "".join([c.choices[0].text async for c in stream if c.choices])
    whole = await api_aclient.completions.create(model=api_server.model, prompt=PROMPT, temperature=0, max_tokens=10)
    assert text == whole.choices[0].text
