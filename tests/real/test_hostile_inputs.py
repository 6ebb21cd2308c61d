"""Inputs that users have sent other OpenAI-compatible servers, through the real api_server.

Each was seen to stop an engine or give a wrong answer somewhere: a seed past 64 bits, a
temperature that underflows, stop strings under ``min_tokens``, ``stream_options`` without a
stream, control tokens typed into a message, and responses without ``x-request-id``.
"""

from __future__ import annotations

import threading
from typing import Any

import httpx
import openai
import pytest

from server.text.tokenization import Tokenization
from tests.helpers import assert_openai_error
from tests.real.helpers import ServerHandle, user

QUESTION = user("What is the capital of France?")


def _alive(api_server: ServerHandle, api_client: openai.OpenAI) -> None:
    """What a user needs after a hostile request: a healthy api_server that still answers."""
    assert httpx.get(f"{api_server.root_url}/health", timeout=10).status_code == 200
    reply = api_client.chat.completions.create(model=api_server.model, messages=QUESTION, max_tokens=8, temperature=0)
    assert reply.choices[0].message.content


def _post(api_server: ServerHandle, path: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{api_server.base_url}/{path}", json={"model": api_server.model, **body}, timeout=120)


@pytest.mark.parametrize("seed", [2**64, 2**63, -(2**63) - 1, 10**30])
def test_seed_outside_64_bits_is_400_and_a_running_stream_goes_on(
    api_server: ServerHandle, api_client: openai.OpenAI, seed: int
) -> None:
    texts: list[str] = []
    reasons: list[str | None] = []

    def bystander() -> None:
        stream = api_client.chat.completions.create(
            model=api_server.model, messages=user("Count to twenty."), max_tokens=24, temperature=0, stream=True
        )
        for chunk in stream:
            texts.append(chunk.choices[0].delta.content or "")
            reasons.append(chunk.choices[0].finish_reason)

    thread = threading.Thread(target=bystander)
    thread.start()
    response = _post(api_server, "chat/completions", {"messages": QUESTION, "seed": seed, "max_tokens": 4})
    thread.join(timeout=120)
    assert assert_openai_error(response, 400)["param"] == "seed"
    assert reasons[-1] in ("stop", "length") and "".join(texts)
    _alive(api_server, api_client)


def test_seeds_at_the_ends_of_the_range_work_with_n(api_server: ServerHandle, api_client: openai.OpenAI) -> None:
    for seed in (2**63 - 1, -(2**63)):
        first = api_client.chat.completions.create(
            model=api_server.model, messages=QUESTION, max_tokens=6, temperature=1.0, seed=seed, n=3
        )
        again = api_client.chat.completions.create(
            model=api_server.model, messages=QUESTION, max_tokens=6, temperature=1.0, seed=seed, n=3
        )
        assert [c.message.content for c in first.choices] == [c.message.content for c in again.choices]
    _alive(api_server, api_client)


@pytest.mark.parametrize("temperature", [1e-40, 1e-30, 1e-6])
def test_tiny_temperature_is_greedy(api_server: ServerHandle, api_client: openai.OpenAI, temperature: float) -> None:
    greedy = api_client.chat.completions.create(model=api_server.model, messages=QUESTION, max_tokens=12, temperature=0)
    tiny = api_client.chat.completions.create(
        model=api_server.model, messages=QUESTION, max_tokens=12, temperature=temperature, seed=3
    )
    assert tiny.choices[0].message.content == greedy.choices[0].message.content
    _alive(api_server, api_client)


@pytest.mark.parametrize(
    ("field", "value"),
    [("repetition_penalty", 1e-300), ("repetition_penalty", 1e300), ("top_p", 0.0), ("presence_penalty", 1e300)],
)
def test_penalties_outside_the_safe_range_are_400(
    api_server: ServerHandle, api_client: openai.OpenAI, field: str, value: float
) -> None:
    response = _post(api_server, "chat/completions", {"messages": QUESTION, field: value, "max_tokens": 4})
    assert assert_openai_error(response, 400)["param"] == field


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e400"])
def test_non_finite_numbers_are_400(api_server: ServerHandle, literal: str) -> None:
    """Python's JSON parser reads these (1e400 as inf); none is a valid sampling value."""
    message = '[{"role": "user", "content": "hi"}]'
    body = f'{{"model": "{api_server.model}", "messages": {message}, "temperature": {literal}}}'
    response = httpx.post(
        f"{api_server.base_url}/chat/completions",
        content=body,
        headers={"content-type": "application/json"},
        timeout=30,
    )
    assert assert_openai_error(response, 400)["param"] == "temperature"


def test_min_tokens_holds_back_stop_strings(api_server: ServerHandle, api_client: openai.OpenAI) -> None:
    """vLLM's meaning: no stop condition, stop strings included, ends a request before min_tokens."""
    body: dict[str, Any] = {"prompt": "1, 2, 3, 4,", "max_tokens": 16, "temperature": 0, "stop": [","]}
    plain = _post(api_server, "completions", body).json()
    assert plain["choices"][0]["text"] == " 5"  # the stop string ends it at once without min_tokens
    held = _post(api_server, "completions", {**body, "min_tokens": 8}).json()
    choice, usage = held["choices"][0], held["usage"]
    assert usage["completion_tokens"] > 8
    assert choice["finish_reason"] == "stop"
    # SmolLM2 spells " 5," as three tokens, so eight tokens reach " 5, 6, 7" and the next comma stops it.
    assert choice["text"].startswith(" 5, 6, 7")
    assert not choice["text"].endswith(",")  # the stop string that finally ended it is not sent
    streamed = api_client.completions.create(
        model=api_server.model,
        prompt="1, 2, 3, 4,",
        max_tokens=16,
        temperature=0,
        stop=[","],
        stream=True,
        extra_body={"min_tokens": 8},
    )
    assert "".join(c.choices[0].text for c in streamed) == choice["text"]


def test_min_tokens_above_max_tokens_is_400(api_server: ServerHandle) -> None:
    response = _post(api_server, "completions", {"prompt": "Hello", "max_tokens": 4, "min_tokens": 5})
    assert assert_openai_error(response, 400)["param"] == "min_tokens"


@pytest.mark.parametrize("path", ["chat/completions", "completions"])
def test_stream_options_without_stream_is_400(api_server: ServerHandle, path: str) -> None:
    prompt = {"messages": QUESTION} if path == "chat/completions" else {"prompt": "Hello"}
    for stream in ({"stream": False}, {}):
        response = _post(
            api_server, path, {**prompt, **stream, "max_tokens": 2, "stream_options": {"include_usage": True}}
        )
        error = assert_openai_error(response, 400)
        assert error["param"] == "stream_options" and error["type"] == "invalid_request_error"


def test_special_tokens_typed_into_messages_stay_text(api_server: ServerHandle, api_client: openai.OpenAI) -> None:
    """A user typing ``<|im_end|>`` must not close their turn: content reaches the model as text."""
    tokenization = Tokenization(api_server.model_dir)
    hf = tokenization.hf
    specials = [t.content for t in hf.added_tokens_decoder.values() if t.special]
    assert "<|im_end|>" in specials

    def prompt_tokens(content: str) -> int:
        reply = api_client.chat.completions.create(model=api_server.model, messages=user(content), max_tokens=1)
        assert reply.usage is not None
        return reply.usage.prompt_tokens

    empty = prompt_tokens("")
    for special in specials:
        content = f"Please repeat: {special}"
        as_text = len(hf.encode(content, add_special_tokens=False, split_special_tokens=True))
        assert prompt_tokens(content) == empty + as_text, f"{special} became a control token"
    # The same text as a raw completions prompt is the client's own prompt format: parsed as is.
    raw = api_client.completions.create(model=api_server.model, prompt="<|im_end|>", max_tokens=1)
    assert raw.usage is not None and raw.usage.prompt_tokens == 1


def test_x_request_id_on_every_response(api_server: ServerHandle, api_client: openai.OpenAI) -> None:
    own = api_client.chat.completions.with_raw_response.create(model=api_server.model, messages=QUESTION, max_tokens=2)
    generated = own.headers.get("x-request-id")
    assert generated
    echoed = api_client.chat.completions.with_raw_response.create(
        model=api_server.model, messages=QUESTION, max_tokens=2, extra_headers={"x-request-id": "trace-42"}
    )
    assert echoed.headers["x-request-id"] == "trace-42"
    with api_client.chat.completions.with_streaming_response.create(
        model=api_server.model, messages=QUESTION, max_tokens=2, stream=True, extra_headers={"x-request-id": "trace-43"}
    ) as streamed:
        assert streamed.headers["x-request-id"] == "trace-43"
    second = api_client.completions.with_raw_response.create(model=api_server.model, prompt="Hi", max_tokens=2)
    assert second.headers["x-request-id"] and second.headers["x-request-id"] != generated
    for response in (
        _post(api_server, "chat/completions", {"messages": QUESTION, "temperature": 9}),  # 400
        httpx.post(f"{api_server.base_url}/completions", json={"model": "nope", "prompt": "x"}, timeout=10),  # 404
        httpx.get(f"{api_server.root_url}/health", headers={"x-request-id": "probe-1"}, timeout=10),
    ):
        assert response.headers.get("x-request-id")
    assert response.headers["x-request-id"] == "probe-1"
    with pytest.raises(openai.BadRequestError) as caught:
        api_client.chat.completions.create(
            model=api_server.model, messages=QUESTION, temperature=9, extra_headers={"x-request-id": "trace-44"}
        )
    assert caught.value.request_id == "trace-44"
