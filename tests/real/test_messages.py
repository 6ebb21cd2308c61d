"""Anthropic's Messages API against a real ``ise serve`` on both engines, through the anthropic SDK.

One keyed server for the module, answering to the built-in model's name and a Claude-style alias
(``--served-model-name``), as Claude Code is pointed at it: the SDK sends the key as
``x-api-key`` (``api_key``) or as a bearer token (``auth_token``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import anthropic
import pytest
from anthropic.types import MessageParam, ToolParam

from adapters.builtin_model import BUILTIN_MODEL_NAME
from tests.real.helpers import ServerHandle, running_server

KEY = "sk-messages-test"
ALIAS = "claude-haiku-4-5"
CONTEXT = 8192  # the built-in model's own context, given so the test does not hang on the default
GREEDY: dict[str, Any] = {"temperature": 0}  # anthropic SDK 2.x has no typed temperature
QUESTION: list[MessageParam] = [{"role": "user", "content": "What is the capital of France?"}]
WEATHER: ToolParam = {
    "name": "get_weather",
    "description": "Get the current weather in a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


@pytest.fixture(scope="module", params=["cpu", "vllm"])
def keyed(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[ServerHandle]:
    """A keyed server on each engine (vLLM's eager, so it starts without compiling)."""
    args = ["--dtype", "float32", "--max-model-len", str(CONTEXT), "--api-key", KEY]
    args += ["--served-model-name", BUILTIN_MODEL_NAME, ALIAS]
    if request.param == "vllm":
        args += ["--engine", "vllm", "--enforce-eager"]
    with running_server(args, tmp_path_factory.mktemp("messages") / "ise.log") as handle:
        yield handle


@pytest.fixture(scope="module")
def sdk(keyed: ServerHandle) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=keyed.root_url, api_key=KEY, max_retries=0, timeout=300) as client:
        yield client


def test_create_answers_greedily(sdk: anthropic.Anthropic) -> None:
    message = sdk.messages.create(model=BUILTIN_MODEL_NAME, max_tokens=64, messages=QUESTION, extra_body=GREEDY)
    assert message.id.startswith("msg_") and message.role == "assistant"
    [block] = message.content
    assert block.type == "text" and "Paris" in block.text
    assert message.stop_reason == "end_turn" and message.stop_sequence is None
    assert message.usage.input_tokens + (message.usage.cache_read_input_tokens or 0) > 10
    assert 0 < message.usage.output_tokens < 64


def test_stream_text_is_the_whole_answer(sdk: anthropic.Anthropic) -> None:
    whole = sdk.messages.create(model=ALIAS, max_tokens=64, messages=QUESTION, extra_body=GREEDY)
    with sdk.messages.stream(model=ALIAS, max_tokens=64, messages=QUESTION, extra_body=GREEDY) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    [block] = whole.content
    assert block.type == "text" and text == block.text
    [streamed] = final.content
    assert streamed.type == "text" and streamed.text == text and final.stop_reason == "end_turn"
    assert final.usage.output_tokens == whole.usage.output_tokens
    assert final.model == ALIAS


def test_stop_sequence_is_reported(sdk: anthropic.Anthropic) -> None:
    message = sdk.messages.create(
        model=BUILTIN_MODEL_NAME, max_tokens=64, messages=QUESTION, stop_sequences=["Paris"], extra_body=GREEDY
    )
    assert (message.stop_reason, message.stop_sequence) == ("stop_sequence", "Paris")
    [block] = message.content
    assert block.type == "text" and "Paris" not in block.text and block.text.endswith("is ")
    short = sdk.messages.create(model=BUILTIN_MODEL_NAME, max_tokens=2, messages=QUESTION, extra_body=GREEDY)
    assert short.stop_reason == "max_tokens" and short.usage.output_tokens == 2


def test_a_forced_tool_streams_its_input_as_json(sdk: anthropic.Anthropic) -> None:
    weather: list[MessageParam] = [{"role": "user", "content": "What is the weather in Paris?"}]
    partial: list[str] = []
    with sdk.messages.stream(
        model=BUILTIN_MODEL_NAME,
        max_tokens=128,
        messages=weather,
        tools=[WEATHER],
        tool_choice={"type": "tool", "name": "get_weather"},
        extra_body=GREEDY,
    ) as stream:
        for event in stream:
            if event.type == "content_block_delta" and event.delta.type == "input_json_delta":
                partial.append(event.delta.partial_json)
        final = stream.get_final_message()
    assert final.stop_reason == "tool_use"
    [call] = final.content
    assert call.type == "tool_use" and call.name == "get_weather" and call.id.startswith("toolu_")
    assert json.loads("".join(partial)) == call.input and isinstance(call.input.get("city"), str)
    # The call and its result go back, and the model answers in text.
    history: list[MessageParam] = [
        *weather,
        {"role": "assistant", "content": [{"type": "tool_use", "id": call.id, "name": call.name, "input": call.input}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "Sunny, 22 C"}]},
    ]
    answer = sdk.messages.create(
        model=BUILTIN_MODEL_NAME,
        max_tokens=64,
        messages=history,
        tools=[WEATHER],
        tool_choice={"type": "none"},
        extra_body=GREEDY,
    )
    assert answer.content and answer.content[0].type == "text" and answer.stop_reason in ("end_turn", "max_tokens")


def test_a_tool_schema_with_propertynames_is_served(sdk: anthropic.Anthropic) -> None:
    """Claude Code's TaskUpdate-like tool: ``propertyNames`` cannot be enforced, so the tools' grammar
    (the built-in model's generic format enforces ``auto``) leaves it out and names it, and the turn
    is answered, not refused."""
    task: ToolParam = {
        "name": "TaskUpdate",
        "description": "Update a task's metadata",
        "input_schema": {
            "type": "object",
            "properties": {
                "taskId": {"type": "string"},
                "metadata": {"type": "object", "propertyNames": {"type": "string"}, "additionalProperties": {}},
            },
            "required": ["taskId"],
        },
    }
    raw = sdk.messages.with_raw_response.create(
        model=BUILTIN_MODEL_NAME, max_tokens=64, messages=QUESTION, tools=[WEATHER, task], extra_body=GREEDY
    )
    assert raw.headers["x-ignored-params"] == "tools.input_schema.propertyNames"
    message = raw.parse()
    assert message.content and message.stop_reason in ("end_turn", "max_tokens", "tool_use")


def test_count_tokens_is_what_usage_charges(sdk: anthropic.Anthropic) -> None:
    system = "You are a helpful assistant."
    counted = sdk.messages.count_tokens(model=BUILTIN_MODEL_NAME, system=system, messages=QUESTION, tools=[WEATHER])
    message = sdk.messages.create(
        model=BUILTIN_MODEL_NAME, max_tokens=8, system=system, messages=QUESTION, tools=[WEATHER], extra_body=GREEDY
    )
    # Anthropic's input_tokens leave out what the prefix cache served (cache_read_input_tokens).
    assert counted.input_tokens == message.usage.input_tokens + (message.usage.cache_read_input_tokens or 0)


def test_keys_as_anthropic_clients_send_them(keyed: ServerHandle) -> None:
    with anthropic.Anthropic(base_url=keyed.root_url, auth_token=KEY, api_key=None, max_retries=0) as bearer:
        assert bearer.messages.create(model=ALIAS, max_tokens=4, messages=QUESTION).content
    with (
        anthropic.Anthropic(base_url=keyed.root_url, api_key="sk-wrong", max_retries=0) as wrong,
        pytest.raises(anthropic.AuthenticationError) as caught,
    ):
        wrong.messages.create(model=ALIAS, max_tokens=4, messages=QUESTION)
    assert caught.value.status_code == 401
    assert caught.value.body == {
        "type": "error",
        "error": {"type": "authentication_error", "message": "Incorrect API key provided."},
    }


def test_errors_are_the_sdks_typed_exceptions(sdk: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.BadRequestError) as too_long:
        # Streamed, as Claude Code asks for its 32,000 tokens (the SDK refuses a whole answer that long).
        sdk.messages.create(model=BUILTIN_MODEL_NAME, max_tokens=32000, messages=QUESTION, stream=True)
    error = too_long.value.body["error"]  # type: ignore[index]
    assert error["type"] == "invalid_request_error"
    assert (
        f"maximum context length is {CONTEXT} tokens" in error["message"]
        and "32000 in the completion" in error["message"]
    )
    with pytest.raises(anthropic.NotFoundError):
        sdk.messages.create(model="claude-opus-9", max_tokens=4, messages=QUESTION)
    with pytest.raises(anthropic.BadRequestError, match="text-only"):
        sdk.messages.create(
            model=BUILTIN_MODEL_NAME,
            max_tokens=4,
            messages=[
                {
                    "role": "user",
                    "content": [
                        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AA=="}}
                    ],
                }
            ],
        )
