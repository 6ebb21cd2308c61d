"""Bad requests get OpenAI-shaped errors with the right status, never a 422 or a 500."""

from __future__ import annotations

from typing import Any

import httpx
import openai
import pytest

from tests.helpers import assert_openai_error
from tests.real.helpers import ServerHandle, user

FRANCE = user("What is the capital of France?")


def test_unknown_model_is_404(api_client: openai.OpenAI, api_server: ServerHandle) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        api_client.chat.completions.create(model="gpt-17", messages=FRANCE)
    assert caught.value.status_code == 404
    assert "gpt-17" in caught.value.message
    assert caught.value.code == "model_not_found"
    with pytest.raises(openai.NotFoundError):
        api_client.completions.create(model="gpt-17", prompt="hi")
    with pytest.raises(openai.NotFoundError):
        api_client.models.retrieve("gpt-17")
    assert api_client.models.retrieve(api_server.model).id == api_server.model


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": FRANCE, "temperature": 5}, "temperature"),
        ({"messages": FRANCE, "max_tokens": 0}, "max_tokens"),
        ({"messages": FRANCE, "top_p": 1.5}, "top_p"),
        ({"messages": FRANCE, "n": 0}, "n"),
        ({"messages": []}, "messages"),
        ({}, "messages"),
        ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages.0.role"),
        (
            {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
            "messages.0.content",
        ),
        ({"messages": FRANCE, "top_logprobs": 2}, "top_logprobs"),
        ({"messages": FRANCE, "logit_bias": {"999999": 5}}, "logit_bias"),
        ({"messages": FRANCE, "stop_token_ids": [10**9]}, "stop_token_ids"),
    ],
)
def test_invalid_chat_parameters_are_400(api_server: ServerHandle, body: dict[str, Any], param: str | None) -> None:
    response = httpx.post(
        f"{api_server.base_url}/chat/completions", json={"model": api_server.model, **body}, timeout=30
    )
    error = assert_openai_error(response, 400)
    assert error["type"] == "invalid_request_error"
    if param is not None:
        assert error["param"] == param


def test_sdk_raises_bad_request(api_client: openai.OpenAI, api_server: ServerHandle) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        api_client.chat.completions.create(model=api_server.model, messages=FRANCE, temperature=3)
    assert "temperature" in caught.value.message


def test_context_window_overflow_says_the_numbers(api_client: openai.OpenAI, api_server: ServerHandle) -> None:
    window = api_client.models.retrieve(api_server.model).model_extra["max_model_len"]  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as caught:
        api_client.chat.completions.create(model=api_server.model, messages=FRANCE, max_tokens=window)
    message = caught.value.message
    assert str(window) in message and "context length" in message
    assert caught.value.code == "context_length_exceeded"
    long_prompt = "hello " * (window + 10)
    for stream in (False, True):
        with pytest.raises(openai.BadRequestError):
            api_client.completions.create(model=api_server.model, prompt=long_prompt, max_tokens=1, stream=stream)


def test_malformed_json_is_400(api_server: ServerHandle) -> None:
    response = httpx.post(
        f"{api_server.base_url}/chat/completions",
        content=b'{"model": "x", "messages": [',
        headers={"content-type": "application/json"},
        timeout=30,
    )
    assert "JSON" in assert_openai_error(response, 400)["message"]


def test_unknown_route_and_method(api_server: ServerHandle) -> None:
    missing = httpx.get(f"{api_server.base_url}/nothing-here", timeout=30)
    assert_openai_error(missing, 404)
    wrong_method = httpx.get(f"{api_server.base_url}/chat/completions", timeout=30)
    assert_openai_error(wrong_method, 405)


def test_unknown_openai_fields_are_ignored(api_client: openai.OpenAI, api_server: ServerHandle) -> None:
    reply = api_client.chat.completions.create(
        model=api_server.model,
        messages=FRANCE,
        temperature=0,
        max_tokens=8,
        user="someone",
        store=False,
        metadata={"k": "v"},
        logit_bias={},
        parallel_tool_calls=False,
        response_format={"type": "text"},
        extra_body={"some_future_field": 1},
    )
    assert reply.choices[0].message.content


def test_invalid_token_prompt_is_400(api_client: openai.OpenAI, api_server: ServerHandle) -> None:
    with pytest.raises(openai.BadRequestError):
        api_client.completions.create(model=api_server.model, prompt=[10**9], max_tokens=2)
    with pytest.raises(openai.BadRequestError):
        api_client.completions.create(model=api_server.model, prompt="", max_tokens=2)
