"""``/v1/responses`` on the real server, on both engines, through the clients that speak it: the
openai SDK (sync, async, its stream helper, ``responses.parse``) and LangChain's
``ChatOpenAI(use_responses_api=True)``.

The Responses API is chat served in another shape, so at temperature 0 it must give chat's greedy
answer to the same conversation; tool calls and JSON are asked for in the ways ise enforces by a
grammar (the built-in model is tiny). Cases follow Open Responses' compliance suite: basic text,
streaming, a system prompt (instructions), tool calling, multi-turn, image input refused.
"""

from __future__ import annotations

import json
from typing import Any

import agents
import jsonschema
import openai
import pytest
from langchain_openai import ChatOpenAI
from openai.types.responses import FunctionToolParam, ResponseFunctionToolCall
from pydantic import SecretStr

from tests.real.helpers import WEATHER_PARAMETERS, City, ServerHandle

QUESTION = "What is the capital of France?"
TOKENS = 12
# The agent's turns: the SDK treats an answer cut at max_output_tokens as a failed run, so the answer
# after the tool's output must end by itself (it does well within this on both engines).
AGENT_TOKENS = 128
WEATHER: FunctionToolParam = {
    "type": "function",
    "name": "get_weather",
    "description": "Get the current weather in a city.",
    "parameters": WEATHER_PARAMETERS,
    "strict": True,
}


def _chat_answer(client: openai.OpenAI, server: ServerHandle, messages: list[dict[str, str]]) -> str:
    reply = client.chat.completions.create(
        model=server.model,
        messages=messages,  # type: ignore[arg-type]
        temperature=0,
        max_tokens=TOKENS,
    )
    return reply.choices[0].message.content or ""


def test_basic_text_is_chats_greedy_answer(api_client: openai.OpenAI, api_server: ServerHandle) -> None:
    response = api_client.responses.create(
        model=api_server.model, input=QUESTION, temperature=0, max_output_tokens=TOKENS
    )
    assert response.status == "completed" or response.status == "incomplete"
    assert "Paris" in response.output_text
    assert response.output_text == _chat_answer(api_client, api_server, [{"role": "user", "content": QUESTION}])
    assert response.usage is not None and response.usage.output_tokens <= TOKENS
    assert response.usage.total_tokens == response.usage.input_tokens + response.usage.output_tokens


def test_instructions_are_the_system_prompt(api_client: openai.OpenAI, api_server: ServerHandle) -> None:
    instructions = "You are a pirate. Answer like a pirate."
    response = api_client.responses.create(
        model=api_server.model, instructions=instructions, input=QUESTION, temperature=0, max_output_tokens=TOKENS
    )
    expected = _chat_answer(
        api_client, api_server, [{"role": "system", "content": instructions}, {"role": "user", "content": QUESTION}]
    )
    assert response.output_text == expected and response.instructions == instructions


def test_the_stream_helper_ends_with_the_whole_answer(api_client: openai.OpenAI, api_server: ServerHandle) -> None:
    whole = api_client.responses.create(model=api_server.model, input=QUESTION, temperature=0, max_output_tokens=TOKENS)
    with api_client.responses.stream(
        model=api_server.model, input=QUESTION, temperature=0, max_output_tokens=TOKENS
    ) as stream:
        events = list(stream)
        final = stream.get_final_response()
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert events[0].type == "response.created" and events[1].type == "response.in_progress"
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert deltas == final.output_text == whole.output_text
    if whole.status == "completed":
        assert final.usage == whole.usage


async def test_the_async_client(
    api_aclient: openai.AsyncOpenAI, api_client: openai.OpenAI, api_server: ServerHandle
) -> None:
    response = await api_aclient.responses.create(
        model=api_server.model, input=QUESTION, temperature=0, max_output_tokens=TOKENS
    )
    stream = await api_aclient.responses.create(
        model=api_server.model, input=QUESTION, temperature=0, max_output_tokens=TOKENS, stream=True
    )
    text = "".join([e.delta async for e in stream if e.type == "response.output_text.delta"])
    assert text == response.output_text == _chat_answer(api_client, api_server, [{"role": "user", "content": QUESTION}])


def test_a_function_call_round_trip(api_client: openai.OpenAI, api_server: ServerHandle) -> None:
    first = api_client.responses.create(
        model=api_server.model,
        input="What is the weather in Paris?",
        tools=[WEATHER],
        tool_choice="required",
        parallel_tool_calls=False,
        temperature=0,
        max_output_tokens=48,
    )
    calls = [item for item in first.output if isinstance(item, ResponseFunctionToolCall)]
    assert calls, first.output
    call = calls[0]
    assert call.name == "get_weather" and call.id is not None and call.id.startswith("fc_")
    jsonschema.validate(json.loads(call.arguments), WEATHER_PARAMETERS)
    second = api_client.responses.create(
        model=api_server.model,
        previous_response_id=first.id,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "Sunny, 21 degrees."}],
        tools=[WEATHER],
        tool_choice="none",
        temperature=0,
        max_output_tokens=24,
    )
    assert second.output_text.strip() and second.status in ("completed", "incomplete")
    # The call and its result were in the prompt: more input than the question alone.
    alone = api_client.responses.create(
        model=api_server.model,
        input="What is the weather in Paris?",
        tools=[WEATHER],
        tool_choice="none",
        max_output_tokens=1,
    )
    assert alone.usage is not None and second.usage is not None
    assert second.usage.input_tokens > alone.usage.input_tokens + 3  # at least the result's three words


def test_named_function_choice_streams_its_arguments(api_client: openai.OpenAI, api_server: ServerHandle) -> None:
    with api_client.responses.stream(
        model=api_server.model,
        input="What is the weather in Paris?",
        tools=[WEATHER],
        tool_choice={"type": "function", "name": "get_weather"},
        temperature=0,
        max_output_tokens=48,
    ) as stream:
        arguments = "".join(e.delta for e in stream if e.type == "response.function_call_arguments.delta")
        final = stream.get_final_response()
    [call] = final.output
    assert isinstance(call, ResponseFunctionToolCall) and call.arguments == arguments
    jsonschema.validate(json.loads(arguments), WEATHER_PARAMETERS)


def test_a_custom_tool_gets_free_text_whole_and_streamed(api_client: openai.OpenAI, api_server: ServerHandle) -> None:
    """Codex's free-text tool: the call's ``input`` is plain text, a regex format is enforced on it,
    and the stream's input deltas join up to the whole greedy answer's."""
    tool: Any = {
        "type": "custom",
        "name": "pick_year",
        "description": "Answer with a year.",
        "format": {"type": "grammar", "syntax": "regex", "definition": "(19|20)[0-9]{2}"},
    }
    request: Any = {
        "model": api_server.model,
        "input": "When did the Berlin Wall fall?",
        "tools": [tool],
        "tool_choice": {"type": "custom", "name": "pick_year"},
        "temperature": 0,
        "max_output_tokens": 32,
    }
    whole = api_client.responses.create(**request)
    [call] = whole.output
    assert call.type == "custom_tool_call" and call.name == "pick_year"
    assert len(call.input) == 4 and call.input[:2] in ("19", "20") and call.input.isdigit()
    with api_client.responses.stream(**request) as stream:
        text = "".join(e.delta for e in stream if e.type == "response.custom_tool_call_input.delta")
        final = stream.get_final_response()
    assert final.output[0].type == "custom_tool_call" and text == final.output[0].input == call.input


def test_structured_output_parses(api_client: openai.OpenAI, api_server: ServerHandle) -> None:
    response = api_client.responses.parse(
        model=api_server.model,
        input="Paris has 2102650 inhabitants. Give its name and population as JSON.",
        text_format=City,
        temperature=0,
        max_output_tokens=64,
    )
    assert isinstance(response.output_parsed, City) and response.output_parsed.name.strip()


def test_multi_turn_stored_and_resent_agree(api_client: openai.OpenAI, api_server: ServerHandle) -> None:
    """previous_response_id continues a stored conversation; store false with the history re-sent gives
    the same answer; GET returns the stored response; DELETE forgets it."""
    first = api_client.responses.create(
        model=api_server.model, input="My name is Alice.", temperature=0, max_output_tokens=TOKENS
    )
    second = api_client.responses.create(
        model=api_server.model,
        previous_response_id=first.id,
        input="What is my name?",
        temperature=0,
        max_output_tokens=TOKENS,
    )
    assert api_client.responses.retrieve(second.id).output_text == second.output_text
    unstored = api_client.responses.create(
        model=api_server.model, input="My name is Alice.", temperature=0, max_output_tokens=TOKENS, store=False
    )
    with pytest.raises(openai.NotFoundError):
        api_client.responses.retrieve(unstored.id)
    history: Any = [
        {"role": "user", "content": "My name is Alice."},
        *[item.model_dump(exclude_none=True) for item in unstored.output],
        {"role": "user", "content": "What is my name?"},
    ]
    resent = api_client.responses.create(
        model=api_server.model,
        input=history,
        temperature=0,
        max_output_tokens=TOKENS,
        store=False,
    )
    assert unstored.output_text == first.output_text
    assert resent.output_text == second.output_text
    api_client.responses.delete(second.id)
    with pytest.raises(openai.NotFoundError):
        api_client.responses.retrieve(second.id)
    with pytest.raises(openai.BadRequestError, match=r"not found"):
        api_client.responses.create(
            model=api_server.model, previous_response_id=second.id, input="Hi", max_output_tokens=4
        )


def test_image_input_is_refused(api_client: openai.OpenAI, api_server: ServerHandle) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        api_client.responses.create(
            model=api_server.model,
            input=[
                {
                    "role": "user",
                    "content": [
                        {"type": "input_text", "text": "What is in this image?"},
                        {"type": "input_image", "image_url": "https://example.com/cat.png", "detail": "auto"},
                    ],
                }
            ],
        )
    assert "text-only" in refused.value.message
    assert isinstance(refused.value.body, dict) and refused.value.body["param"] == "input.0.content"


def test_langchain_over_the_responses_api(api_client: openai.OpenAI, api_server: ServerHandle) -> None:
    llm = ChatOpenAI(
        model=api_server.model,
        base_url=api_server.base_url,
        api_key=SecretStr("unused"),
        use_responses_api=True,
        temperature=0,
        max_tokens=TOKENS,
        max_retries=0,
    )
    reply = llm.invoke(QUESTION)
    assert reply.text == _chat_answer(api_client, api_server, [{"role": "user", "content": QUESTION}])
    streamed = "".join(chunk.text for chunk in llm.stream(QUESTION))
    assert streamed == reply.text
    caller = llm.bind_tools([dict(WEATHER)], tool_choice="get_weather")
    called = caller.invoke("What is the weather in Paris?")
    [call] = called.tool_calls
    assert call["name"] == "get_weather"
    jsonschema.validate(call["args"], WEATHER_PARAMETERS)


async def test_openai_agents_sdk_runs_a_function_tool(api_server: ServerHandle) -> None:
    """An agent of the OpenAI Agents SDK over ``OpenAIResponsesModel``: it calls its function tool
    through ise's Responses API, gets the tool's output back in the next turn, and finishes."""
    calls: list[str] = []

    @agents.function_tool
    def get_weather(city: str) -> str:
        """Get the current weather in a city."""
        calls.append(city)
        return f"It is sunny in {city}."

    agents.set_tracing_disabled(True)  # the SDK would upload traces to OpenAI
    async with openai.AsyncOpenAI(base_url=api_server.base_url, api_key="unused", max_retries=0) as client:
        agent = agents.Agent(
            name="weather",
            instructions="Answer with the weather tool.",
            model=agents.OpenAIResponsesModel(model=api_server.model, openai_client=client),
            tools=[get_weather],
            # Forced on the first turn (the tiny model would rarely choose it); the SDK lets the model
            # answer freely once the tool ran.
            model_settings=agents.ModelSettings(tool_choice="get_weather", temperature=0, max_tokens=AGENT_TOKENS),
        )
        result = await agents.Runner.run(agent, "What is the weather in Paris?", max_turns=3)
    assert len(calls) == 1 and calls[0].strip()
    assert isinstance(result.final_output, str) and result.final_output.strip()
