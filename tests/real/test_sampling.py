"""Sampling parameters as a user sees them: greedy, seeds, stop strings, vLLM's extensions."""

from __future__ import annotations

import openai
import pytest
import torch
from transformers import AutoModelForCausalLM

from server.text.tokenization import Tokenization
from tests.real.helpers import ServerHandle, user

STORY = user("Tell me a short story about a lighthouse keeper.")


def test_temperature_zero_is_transformers_greedy(api_client: openai.OpenAI, api_server: ServerHandle) -> None:
    tokenization = Tokenization(api_server.model_dir)
    prompt = tokenization.chat_prompt(STORY)
    model = AutoModelForCausalLM.from_pretrained(api_server.model_dir, dtype=torch.float32)
    expected_ids = model.generate(torch.tensor([prompt]), max_new_tokens=40, do_sample=False)[0, len(prompt) :]  # type: ignore[misc]
    expected = tokenization.decode(expected_ids.tolist())
    reply = api_client.chat.completions.create(model=api_server.model, messages=STORY, temperature=0, max_tokens=40)
    assert reply.choices[0].message.content == expected
    top_k_one = api_client.chat.completions.create(
        model=api_server.model, messages=STORY, temperature=1.0, max_tokens=40, extra_body={"top_k": 1}
    )
    assert top_k_one.choices[0].message.content == expected


def test_seeded_sampling_repeats(api_client: openai.OpenAI, api_server: ServerHandle) -> None:
    def sample(seed: int) -> str:
        reply = api_client.chat.completions.create(
            model=api_server.model, messages=STORY, temperature=1.0, top_p=0.95, seed=seed, max_tokens=40
        )
        return reply.choices[0].message.content or ""

    first, again, other = sample(1234), sample(1234), sample(4321)
    assert first == again
    assert first != other


def test_stop_string_cuts_the_text(api_client: openai.OpenAI, api_server: ServerHandle) -> None:
    full = api_client.chat.completions.create(model=api_server.model, messages=STORY, temperature=0, max_tokens=60)
    text = full.choices[0].message.content or ""
    # A stop string from the middle of the text, likely spanning a token boundary.
    stop = text[20:26]
    expected = text[: text.index(stop)]
    reply = api_client.chat.completions.create(
        model=api_server.model, messages=STORY, temperature=0, max_tokens=60, stop=stop
    )
    assert reply.choices[0].message.content == expected
    assert reply.choices[0].finish_reason == "stop"
    chunks = api_client.chat.completions.create(
        model=api_server.model, messages=STORY, temperature=0, max_tokens=60, stop=[stop, "zzzz"], stream=True
    )
    streamed = [(c.choices[0].delta.content or "", c.choices[0].finish_reason) for c in chunks]
    assert "".join(text for text, _ in streamed) == expected
    assert streamed[-1][1] == "stop"


def test_ignore_eos_and_min_tokens(api_client: openai.OpenAI, api_server: ServerHandle) -> None:
    short = user("What is the capital of France?")
    natural = api_client.chat.completions.create(model=api_server.model, messages=short, temperature=0, max_tokens=50)
    assert natural.usage is not None and natural.usage.completion_tokens < 50
    forced = api_client.chat.completions.create(
        model=api_server.model, messages=short, temperature=0, max_tokens=50, extra_body={"ignore_eos": True}
    )
    assert forced.usage is not None and forced.usage.completion_tokens == 50
    assert forced.choices[0].finish_reason == "length"
    floor = natural.usage.completion_tokens + 5
    longer = api_client.chat.completions.create(
        model=api_server.model, messages=short, temperature=0, max_tokens=50, extra_body={"min_tokens": floor}
    )
    assert longer.usage is not None and longer.usage.completion_tokens >= floor


def test_stop_token_ids(api_client: openai.OpenAI, api_server: ServerHandle) -> None:
    tokenization = Tokenization(api_server.model_dir)
    full = api_client.completions.create(
        model=api_server.model, prompt="One, two, three,", temperature=0, max_tokens=20
    )
    ids = tokenization.encode(full.choices[0].text, add_special_tokens=False)
    stop_id = ids[3]
    reply = api_client.completions.create(
        model=api_server.model,
        prompt="One, two, three,",
        temperature=0,
        max_tokens=20,
        extra_body={"stop_token_ids": [stop_id]},
    )
    assert reply.choices[0].finish_reason == "stop"
    assert reply.usage is not None and reply.usage.completion_tokens == ids.index(stop_id) + 1


@pytest.mark.parametrize(
    "penalty", [{"presence_penalty": 2.0}, {"frequency_penalty": 2.0}, {"repetition_penalty": 1.8}]
)
def test_penalties_change_repetitive_output(
    api_client: openai.OpenAI, api_server: ServerHandle, penalty: dict[str, object]
) -> None:
    prompt = "I like cats. I like cats. I like cats. I like"
    plain = api_client.completions.create(model=api_server.model, prompt=prompt, temperature=0, max_tokens=20)
    penalised = api_client.completions.create(
        model=api_server.model, prompt=prompt, temperature=0, max_tokens=20, extra_body=penalty
    )
    # Greedy decoding loops on "I'm a cat."; every penalty breaks the loop.
    assert plain.choices[0].text.count("I'm a cat.") >= 3
    assert penalised.choices[0].text.count("I'm a cat.") < 2


def test_multibyte_text_streams_cleanly(api_client: openai.OpenAI, api_server: ServerHandle) -> None:
    # The greedy answer is Japanese whose characters mostly span two or three byte-level tokens.
    messages = user("Write the word 'hello' in Japanese.")
    whole = api_client.chat.completions.create(model=api_server.model, messages=messages, temperature=0, max_tokens=40)
    chunks = api_client.chat.completions.create(
        model=api_server.model, messages=messages, temperature=0, max_tokens=40, stream=True
    )
    deltas = [c.choices[0].delta.content or "" for c in chunks if c.choices]
    text = whole.choices[0].message.content or ""
    assert "".join(deltas) == text
    assert sum(ord(ch) > 0x3000 for ch in text) >= 5, "the answer should hold Japanese characters"
    assert "\ufffd" not in text
    assert not any("\ufffd" in d for d in deltas)
