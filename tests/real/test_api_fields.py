"""Structured outputs, tool calls, logprobs, echo and reasoning on the real model, over the openai SDK, both engines.

Every constrained answer must parse and validate, streamed and whole: that is what the grammar
guarantees, whatever a 135M model would write unconstrained.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from typing import Any

import jsonschema
import openai
import pytest

from tests.real.helpers import ServerHandle, running_server, user
from tests.real.json_schemas import JSON_SCHEMAS

# Helpers: the served model, and an answer or its calls read whole or streamed.


def _model(client: openai.OpenAI) -> str:
    return client.models.list().data[0].id


def _answer(client: openai.OpenAI, messages: Any, stream: bool, **kwargs: Any) -> tuple[str, str | None]:
    model = _model(client)
    if not stream:
        choice = client.chat.completions.create(model=model, messages=messages, **kwargs).choices[0]
        return choice.message.content or "", choice.finish_reason
    text, reason = "", None
    for chunk in client.chat.completions.create(model=model, messages=messages, stream=True, **kwargs):
        for choice in chunk.choices:
            text += choice.delta.content or ""
            reason = choice.finish_reason or reason
    return text, reason


def _streamed_calls(
    client: openai.OpenAI, messages: Any, kwargs: dict[str, Any]
) -> tuple[list[tuple[str, str]], str | None, str | None]:
    names: dict[int, str] = {}
    arguments: dict[int, str] = {}
    content, reason = "", None
    for chunk in client.chat.completions.create(model=_model(client), messages=messages, stream=True, **kwargs):
        for choice in chunk.choices:
            content += choice.delta.content or ""
            reason = choice.finish_reason or reason
            for call in choice.delta.tool_calls or []:
                if call.function and call.function.name:
                    names[call.index] = call.function.name
                arguments[call.index] = arguments.get(call.index, "") + (
                    (call.function and call.function.arguments) or ""
                )
    return [(names[i], arguments[i]) for i in sorted(names)], content or None, reason


# Structured outputs hold on the model.


def _format(name: str) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": name, "schema": JSON_SCHEMAS[name], "strict": True}}


@pytest.mark.parametrize(("name", "stream"), [(name, i % 2 == 1) for i, name in enumerate(sorted(JSON_SCHEMAS))])
def test_json_schema_output_always_validates(api_client: openai.OpenAI, name: str, stream: bool) -> None:
    messages = user(f"Give an example of {name.replace('_', ' ')} data as JSON.")
    for seed in (1, 2):
        kwargs: dict[str, Any] = {"response_format": _format(name), "max_tokens": 150, "temperature": 1.0, "seed": seed}
        text, reason = _answer(api_client, messages, stream, **kwargs)
        assert reason == "stop", text
        jsonschema.validate(json.loads(text), JSON_SCHEMAS[name])


def test_json_object_regex_choice_and_grammar_hold(api_client: openai.OpenAI) -> None:
    prompt = user('Reply with a JSON object like {"answer": "yes"}.')
    fmt = {"type": "json_object"}
    text, reason = _answer(api_client, prompt, False, response_format=fmt, max_tokens=40, seed=5)
    # Any JSON object is allowed, however long: only a finished one must parse.
    assert text.lstrip().startswith("{"), text
    assert reason == "length" or isinstance(json.loads(text), dict), (reason, text)
    extra = {"structured_outputs": {"regex": "[0-9]{3}-[0-9]{4}"}}
    text, _ = _answer(api_client, user("A phone number"), True, extra_body=extra, max_tokens=20)
    assert len(text) == 8 and text[3] == "-" and (text[:3] + text[4:]).isdigit()
    text, _ = _answer(
        api_client, user("Is water wet?"), False, extra_body={"guided_choice": ["yes", "no"]}, max_tokens=5
    )
    assert text in ("yes", "no")
    grammar = 'root ::= "The answer is " ("red" | "blue") "."'
    text, _ = _answer(api_client, user("A colour?"), True, extra_body={"guided_grammar": grammar}, max_tokens=20)
    assert text in ("The answer is red.", "The answer is blue.")


def test_unsupported_schema_is_a_400_naming_it(api_client: openai.OpenAI) -> None:
    bad: Any = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"not": {"type": "string"}}}}
    with pytest.raises(openai.BadRequestError) as caught:
        api_client.chat.completions.create(model=_model(api_client), messages=user("hi"), response_format=bad)
    assert "not" in caught.value.message and caught.value.param == "response_format"


# U+4516D is F1 85 85 AD in UTF-8, and SmolLM2's byte-level vocabulary has no token holding the byte
# 0xF1: the model cannot write the character, so after "A" its constraint allows no token at all.
UNSPELLABLE = "A\U0004516d"


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_a_constraint_the_model_cannot_spell_is_a_400_naming_it(api_client: openai.OpenAI, temperature: float) -> None:
    kwargs: dict[str, Any] = {
        "model": _model(api_client),
        "messages": user("hi"),
        "max_tokens": 4,
        "temperature": temperature,
        "extra_body": {"guided_regex": UNSPELLABLE},
    }
    with pytest.raises(openai.BadRequestError) as caught:
        api_client.chat.completions.create(**kwargs)
    assert caught.value.param == "guided_regex"
    assert "after 1 output tokens" in caught.value.message, caught.value.message
    # Streamed, the headers are gone by then: the error comes as the stream's last event.
    with pytest.raises(openai.APIError) as streamed:
        for _ in api_client.chat.completions.create(stream=True, **kwargs):
            pass
    assert "'guided_regex' allows no token" in streamed.value.message
    text, _ = _answer(api_client, user("hi"), False, max_tokens=3, extra_body={"guided_regex": "A[a-z]+"})
    assert text.startswith("A")


# Tool calls are valid calls of the tools given.


WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 30}, "unit": {"enum": ["celsius", "fahrenheit"]}},
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
    },
}


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("tool_choice", ["required", "named", "auto"])
def test_tool_calls_are_valid(api_client: openai.OpenAI, tool_choice: str, stream: bool) -> None:
    choice: Any = {"type": "function", "function": {"name": "get_weather"}} if tool_choice == "named" else tool_choice
    # One call: with parallel calls allowed this small model repeats its call until max_tokens.
    kwargs: dict[str, Any] = {
        "tools": [WEATHER],
        "tool_choice": choice,
        "parallel_tool_calls": False,
        "max_tokens": 120,
        "temperature": 0,
    }
    messages = user("What is the weather like in Paris today?")
    if not stream:
        message = api_client.chat.completions.create(model=_model(api_client), messages=messages, **kwargs).choices[0]
        calls = [(c.function.name, c.function.arguments) for c in message.message.tool_calls or []]
        content, reason = message.message.content, message.finish_reason
    else:
        calls, content, reason = _streamed_calls(api_client, messages, kwargs)
    if tool_choice == "auto" and not calls:
        assert content and reason == "stop"  # the model chose to answer in text: allowed
        return
    assert reason == "tool_calls" and content is None
    for name, arguments in calls:
        assert name == "get_weather"
        jsonschema.validate(json.loads(arguments), WEATHER["function"]["parameters"])  # type: ignore[index]


# Logprobs, echo and cache hits on the model.


def test_logprobs_and_echo_on_the_model(api_client: openai.OpenAI) -> None:
    model = _model(api_client)
    chat = api_client.chat.completions.create(
        model=model, messages=user("Name a colour."), logprobs=True, top_logprobs=3, temperature=0, max_tokens=8
    )
    content = chat.choices[0].logprobs.content  # type: ignore[union-attr]
    assert content and "".join(t.token for t in content) == chat.choices[0].message.content
    for token in content:
        # Greedy: the chosen token is the most likely one; the alternatives come best first.
        assert token.top_logprobs[0].token == token.token
        assert token.top_logprobs[0].logprob == pytest.approx(token.logprob, abs=1e-4)
        values = [t.logprob for t in token.top_logprobs]
        assert values == sorted(values, reverse=True) and sum(math.exp(v) for v in values) <= 1.0 + 1e-4
    text = api_client.completions.create(
        model=model, prompt="The capital of France is", echo=True, logprobs=0, max_tokens=4, temperature=0
    )
    choice = text.choices[0]
    assert choice.text.startswith("The capital of France is")
    logprobs = choice.logprobs
    assert logprobs is not None and logprobs.token_logprobs is not None and logprobs.tokens is not None
    assert logprobs.token_logprobs[0] is None and all(v is not None and v <= 0 for v in logprobs.token_logprobs[1:])
    assert "".join(logprobs.tokens) == choice.text


def test_cached_tokens_report_the_prefix_cache(api_client: openai.OpenAI) -> None:
    system = "You answer questions about geography. " * 40  # past one of vLLM's 128-token blocks
    messages: Any = [{"role": "system", "content": system}, {"role": "user", "content": "Capital of Spain?"}]
    model = _model(api_client)
    api_client.chat.completions.create(model=model, messages=messages, max_tokens=1)
    usage = api_client.chat.completions.create(model=model, messages=messages, max_tokens=1).usage
    assert usage is not None and usage.prompt_tokens_details is not None
    assert usage.prompt_tokens_details.cached_tokens and usage.prompt_tokens_details.cached_tokens >= 64


# Reasoning goes to reasoning_content.


@pytest.fixture(scope="module")
def reasoning_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerHandle]:
    log = tmp_path_factory.mktemp("reasoning") / "ise.log"
    with running_server(["--dtype", "float32", "--reasoning-parser", "deepseek_r1"], log) as handle:
        yield handle


@pytest.mark.parametrize("stream", [False, True])
def test_thinking_goes_to_reasoning_content(reasoning_server: ServerHandle, stream: bool) -> None:
    """Thinking between <think> and </think>, then the answer.

    The built-in model does not think, so a grammar makes it write that shape; under a grammar
    the thinking is only what the constrained text itself puts between the tags.
    """
    grammar = 'root ::= "<think>" [a-z ]{5,40} "</think>" [A-Za-z ,.!]{1,40}'
    client = openai.OpenAI(base_url=reasoning_server.base_url, api_key="x", max_retries=0)
    kwargs: dict[str, Any] = {"max_tokens": 60, "extra_body": {"guided_grammar": grammar}, "temperature": 0}
    messages = user("Think, then answer: what colour is the sky?")
    if stream:
        chunks = list(
            client.chat.completions.create(
                model=reasoning_server.model,
                messages=messages,
                stream=True,
                stream_options={"include_usage": True},
                **kwargs,
            )
        )
        deltas = [c.choices[0].delta for c in chunks if c.choices]
        reasoning = "".join(getattr(d, "reasoning_content", None) or "" for d in deltas)
        content = "".join(d.content or "" for d in deltas)
        usage = chunks[-1].usage
    else:
        completion = client.chat.completions.create(model=reasoning_server.model, messages=messages, **kwargs)
        message = completion.choices[0].message
        reasoning, content, usage = getattr(message, "reasoning_content", ""), message.content or "", completion.usage
    assert reasoning and content
    assert "think>" not in reasoning and "think>" not in content
    assert usage is not None and usage.completion_tokens_details is not None
    assert 0 < (usage.completion_tokens_details.reasoning_tokens or 0) < usage.completion_tokens
