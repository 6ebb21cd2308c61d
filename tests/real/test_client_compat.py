"""The clients users point at ise, used unchanged: the openai SDK, LangChain's ChatOpenAI, the LiteLLM SDK.

Each is called as its own documentation shows, with only the base URL, a key and the model name
pointed at ise, so a field one of them sends that ise mishandles, or a response one of them cannot
parse into its own types, fails here rather than in a user's application. Every test checks what
that user would see: text, a pydantic object of their model, a tool call whose arguments validate
against the tool's schema. At temperature 0 each client must also get the same text as the openai
SDK, streamed or not, since they send the same request in their own words.

The built-in model is tiny, so tool calls and JSON are asked for in the ways ise enforces by
structured decoding (a named tool, ``tool_choice="required"``, a JSON schema): what is checked is
that the clients and ise agree, not the model's judgement. Outputs are kept short.

Each test runs on both engines (the ``api_server`` fixture). None of the clients may reach the
internet (LiteLLM fetches its model cost map at import unless told not to, and has telemetry):
every test runs with connections off the loopback refused and recorded, and fails if any was tried.
"""

from __future__ import annotations

import ipaddress
import json
import socket
from collections.abc import Iterator
from typing import Any, Literal

import httpx
import jsonschema
import openai
import pytest
from langchain_core.messages import AIMessage
from langchain_openai import ChatOpenAI
from openai.types.chat import (
    ChatCompletion,
    ChatCompletionMessageParam,
    ChatCompletionTokenLogprob,
    ChatCompletionToolParam,
)
from pydantic import SecretStr

from tests.real.helpers import WEATHER_PARAMETERS, City, ServerHandle, user

HELLO_PROMPT = "Say hello in one short sentence."
HELLO = user(HELLO_PROMPT)
HELLO_TOKENS = 8
# A prompt the built-in model answers with short JSON: it fills a schema's free whitespace otherwise.
CITY_PROMPT = "Paris has 2102650 inhabitants. Give its name and population as JSON."
CITY = user(CITY_PROMPT)
WEATHER_PROMPT = "What is the weather in Paris?"
WEATHER_QUESTION = user(WEATHER_PROMPT)
JSON_TOKENS = 64
TOOL_TOKENS = 48
WEATHER_TOOL: ChatCompletionToolParam = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city.",
        "parameters": WEATHER_PARAMETERS,
    },
}
# A word the built-in model's vocabulary holds as one token, and would not say unprompted.
FORCED_WORD = "purple"


# --- no internet ---


def _loopback(host: object) -> bool:
    if host in (None, "localhost"):
        return True
    try:
        return ipaddress.ip_address(str(host).split("%")[0]).is_loopback
    except ValueError:
        return False


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Refuses, and records, every name lookup and connection that leaves the machine.

    Refused rather than only recorded, so nothing leaves; recorded as well, since a client may
    swallow the error (LiteLLM falls back to its bundled cost map when the fetch fails).
    """
    tried: list[str] = []
    real_getaddrinfo = socket.getaddrinfo
    real_connect = socket.socket.connect
    real_connect_ex = socket.socket.connect_ex

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if not _loopback(host.decode() if isinstance(host, bytes) else host):
            tried.append(f"lookup of {host!r}")
            raise socket.gaierror(socket.EAI_NONAME, f"{host!r}: the client-compatibility tests run offline")
        return real_getaddrinfo(host, *args, **kwargs)

    def refuse(address: Any) -> None:
        if isinstance(address, tuple) and not _loopback(address[0]):
            tried.append(f"connection to {address!r}")
            raise ConnectionRefusedError(f"{address!r}: the client-compatibility tests run offline")

    def connect(self: socket.socket, address: Any) -> None:
        refuse(address)
        real_connect(self, address)

    def connect_ex(self: socket.socket, address: Any) -> int:
        refuse(address)
        return real_connect_ex(self, address)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)
    yield tried
    assert not tried, f"a client tried to reach the internet: {tried}"


@pytest.fixture
def litellm_offline(offline: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """LiteLLM as its docs say to run it offline: the bundled model cost map, no telemetry.

    The variable must be set before the first ``import litellm``, which is why the tests import it
    themselves, after this fixture.
    """
    monkeypatch.setenv("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    import litellm

    monkeypatch.setattr(litellm, "telemetry", False)


# Every test runs once per engine: ise's CPU engine, then vLLM's behind ise's API.


@pytest.fixture(scope="module")
def server(api_server: ServerHandle) -> ServerHandle:
    return api_server


@pytest.fixture(scope="module")
def client(api_client: openai.OpenAI) -> openai.OpenAI:
    return api_client


@pytest.fixture(scope="module")
def aclient(api_aclient: openai.AsyncOpenAI) -> openai.AsyncOpenAI:
    return api_aclient


# --- helpers ---


def assert_weather_call(name: str, arguments: str | dict[str, Any]) -> None:
    """A call of get_weather whose arguments are JSON that the tool's parameters schema accepts."""
    assert name == "get_weather"
    parsed = json.loads(arguments) if isinstance(arguments, str) else arguments
    jsonschema.validate(parsed, WEATHER_PARAMETERS)


def assert_city(value: object) -> None:
    assert isinstance(value, City), f"not a City: {value!r}"
    assert value.name.strip()


def single_token(server: ServerHandle, text: str) -> int:
    """The id of the one token ``text`` is, asked of the server's own tokenizer."""
    response = httpx.post(
        f"{server.root_url}/tokenize",
        json={"model": server.model, "prompt": text, "add_special_tokens": False},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    tokens: list[int] = response.json()["tokens"]
    assert len(tokens) == 1, f"{text!r} is {len(tokens)} tokens, not one"
    return tokens[0]


@pytest.fixture(scope="module")
def hello_text(client: openai.OpenAI, server: ServerHandle) -> str:
    """The openai SDK's greedy answer to HELLO: what every client must get back for it."""
    reply = client.chat.completions.create(model=server.model, messages=HELLO, temperature=0, max_tokens=HELLO_TOKENS)
    text = reply.choices[0].message.content
    assert text, "the greedy answer is empty"
    return text


# --- the openai SDK ---


async def test_openai_sync_async_and_streamed_answers_agree(
    client: openai.OpenAI, aclient: openai.AsyncOpenAI, server: ServerHandle, hello_text: str
) -> None:
    whole = client.chat.completions.create(model=server.model, messages=HELLO, temperature=0, max_tokens=HELLO_TOKENS)
    assert whole.choices[0].message.content == hello_text
    assert whole.choices[0].finish_reason in ("stop", "length")
    awaited = await aclient.chat.completions.create(
        model=server.model, messages=HELLO, temperature=0, max_tokens=HELLO_TOKENS
    )
    assert awaited.choices[0].message.content == hello_text
    stream = await aclient.chat.completions.create(
        model=server.model, messages=HELLO, temperature=0, max_tokens=HELLO_TOKENS, stream=True
    )
    chunks = [chunk async for chunk in stream]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == hello_text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == whole.choices[0].finish_reason


def test_openai_parse_returns_the_pydantic_model(client: openai.OpenAI, server: ServerHandle) -> None:
    """``chat.completions.parse`` sends the model's strict JSON schema and parses the answer into it."""
    reply = client.chat.completions.parse(
        model=server.model, messages=CITY, response_format=City, temperature=0, max_tokens=JSON_TOKENS
    )
    message = reply.choices[0].message
    assert message.refusal is None
    assert_city(message.parsed)


def test_openai_tool_call_round_trip(client: openai.OpenAI, server: ServerHandle) -> None:
    """A named tool is called with valid arguments; its result goes back as a tool message; the
    model then answers in text, having been given that result."""
    called = client.chat.completions.create(
        model=server.model,
        messages=WEATHER_QUESTION,
        tools=[WEATHER_TOOL],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        temperature=0,
        max_tokens=TOOL_TOKENS,
    )
    choice = called.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.tool_calls is not None and len(choice.message.tool_calls) == 1
    call = choice.message.tool_calls[0]
    assert call.type == "function" and call.id
    assert_weather_call(call.function.name, call.function.arguments)

    def answer(result: str, max_tokens: int) -> ChatCompletion:
        history: list[ChatCompletionMessageParam] = [
            *WEATHER_QUESTION,
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": call.id,
                        "type": "function",
                        "function": {"name": call.function.name, "arguments": call.function.arguments},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": call.id, "content": result},
        ]
        return client.chat.completions.create(
            model=server.model,
            messages=history,
            tools=[WEATHER_TOOL],
            tool_choice="none",
            temperature=0,
            max_tokens=max_tokens,
        )

    final = answer("Sunny, 24 degrees Celsius, a light wind from the west.", 12)
    assert final.choices[0].message.tool_calls is None
    assert final.choices[0].message.content
    assert final.choices[0].finish_reason in ("stop", "length")
    # The result is in the prompt: a shorter one makes a shorter prompt.
    terse = answer("Sunny.", 1)
    assert final.usage is not None and terse.usage is not None
    assert final.usage.prompt_tokens > terse.usage.prompt_tokens


def test_openai_tool_calls_cut_short_leave_no_call_syntax_in_content(
    client: openai.OpenAI, server: ServerHandle
) -> None:
    """With parallel calls allowed the built-in model repeats its call until max_tokens: the complete
    calls must come back as tool calls and the cut-off one must not show up as text."""
    reply = client.chat.completions.create(
        model=server.model,
        messages=WEATHER_QUESTION,
        tools=[WEATHER_TOOL],
        tool_choice="required",
        temperature=0,
        max_tokens=40,  # past the first call, into the second
    )
    choice = reply.choices[0]
    assert choice.finish_reason == "length"
    assert choice.message.tool_calls
    for call in choice.message.tool_calls:
        assert call.type == "function"
        assert_weather_call(call.function.name, call.function.arguments)
    assert not (choice.message.content or "").strip(), f"call syntax in the content: {choice.message.content!r}"


def test_openai_logprobs_parse_as_the_sdks_types(client: openai.OpenAI, server: ServerHandle) -> None:
    reply = client.chat.completions.create(
        model=server.model, messages=HELLO, temperature=0, max_tokens=4, logprobs=True, top_logprobs=3
    )
    choice = reply.choices[0]
    assert choice.logprobs is not None and choice.logprobs.content is not None
    entries = choice.logprobs.content
    assert reply.usage is not None and len(entries) == reply.usage.completion_tokens
    assert "".join(e.token for e in entries) == choice.message.content
    for entry in entries:
        assert isinstance(entry, ChatCompletionTokenLogprob)
        assert entry.logprob <= 0
        assert entry.bytes == list(entry.token.encode())
        alternatives = entry.top_logprobs
        assert len(alternatives) == 3
        assert [a.logprob for a in alternatives] == sorted((a.logprob for a in alternatives), reverse=True)
        # Greedy: the token taken is the likeliest one.
        assert alternatives[0].token == entry.token and alternatives[0].logprob == pytest.approx(entry.logprob)


def test_openai_logit_bias_bans_and_forces_tokens(client: openai.OpenAI, server: ServerHandle) -> None:
    def first_token(logit_bias: dict[str, int] | None = None, max_tokens: int = 1) -> ChatCompletion:
        return client.chat.completions.create(
            model=server.model,
            messages=HELLO,
            temperature=0,
            max_tokens=max_tokens,
            logprobs=True,
            top_logprobs=2,
            logit_bias=logit_bias,
        )

    greedy = first_token()
    assert greedy.choices[0].logprobs is not None and greedy.choices[0].logprobs.content
    (top, runner_up) = greedy.choices[0].logprobs.content[0].top_logprobs
    banned = single_token(server, top.token)

    without_it = first_token({str(banned): -100})
    # -100 bans the greedy token: the answer opens with what was second.
    assert without_it.choices[0].message.content == runner_up.token

    forced = first_token({str(single_token(server, FORCED_WORD)): 100}, max_tokens=2)
    # +100 makes it the only choice, at every step.
    assert forced.choices[0].message.content == FORCED_WORD * 2


# --- LangChain ---


def chat_openai(server: ServerHandle, max_tokens: int) -> ChatOpenAI:
    """LangChain's ChatOpenAI, set up as its docs show for an OpenAI-compatible server."""
    return ChatOpenAI(
        base_url=server.base_url,
        api_key=SecretStr("unused"),
        model=server.model,
        temperature=0,
        max_tokens=max_tokens,
        max_retries=0,
        timeout=300,
    )


def test_langchain_invoke_and_stream(server: ServerHandle, hello_text: str) -> None:
    llm = chat_openai(server, HELLO_TOKENS)
    assert llm.invoke(HELLO_PROMPT).text == hello_text
    assert "".join(chunk.text for chunk in llm.stream(HELLO_PROMPT)) == hello_text


def test_langchain_bind_tools_calls_the_tool(server: ServerHandle) -> None:
    bound = chat_openai(server, TOOL_TOKENS).bind_tools(
        [dict(WEATHER_TOOL)], tool_choice="required", parallel_tool_calls=False
    )
    reply = bound.invoke(WEATHER_PROMPT)
    assert isinstance(reply, AIMessage)
    assert reply.invalid_tool_calls == []
    assert len(reply.tool_calls) == 1
    assert_weather_call(reply.tool_calls[0]["name"], reply.tool_calls[0]["args"])


@pytest.mark.parametrize("method", ["json_schema", "function_calling"])
def test_langchain_structured_output(server: ServerHandle, method: Literal["json_schema", "function_calling"]) -> None:
    """Both ways LangChain asks for a schema: response_format, and a forced call of a tool named after it."""
    structured = chat_openai(server, JSON_TOKENS).with_structured_output(City, method=method)
    assert_city(structured.invoke(CITY_PROMPT))


# --- LiteLLM ---

PROVIDERS = ["openai", "hosted_vllm"]


def litellm_target(server: ServerHandle, provider: str) -> dict[str, Any]:
    """LiteLLM's way to name ise: the provider's prefix on the model, the base URL, a key."""
    return {"model": f"{provider}/{server.model}", "api_base": server.base_url, "api_key": "unused"}


@pytest.mark.usefixtures("litellm_offline")
@pytest.mark.parametrize("provider", PROVIDERS)
def test_litellm_completion_and_stream(server: ServerHandle, provider: str, hello_text: str) -> None:
    import litellm

    options: dict[str, Any] = {
        **litellm_target(server, provider),
        "messages": HELLO,
        "temperature": 0,
        "max_tokens": HELLO_TOKENS,
    }
    whole = litellm.completion(**options)
    assert isinstance(whole, litellm.ModelResponse)
    assert isinstance(whole.choices[0], litellm.Choices)
    assert whole.choices[0].message.content == hello_text
    stream = litellm.completion(**options, stream=True)
    assert isinstance(stream, litellm.CustomStreamWrapper)
    assert "".join(chunk.choices[0].delta.content or "" for chunk in stream) == hello_text


@pytest.mark.usefixtures("litellm_offline")
@pytest.mark.parametrize("provider", PROVIDERS)
def test_litellm_required_tool_call(server: ServerHandle, provider: str) -> None:
    import litellm

    reply = litellm.completion(
        **litellm_target(server, provider),
        messages=WEATHER_QUESTION,
        tools=[WEATHER_TOOL],
        tool_choice="required",
        parallel_tool_calls=False,
        temperature=0,
        max_tokens=TOOL_TOKENS,
    )
    assert isinstance(reply, litellm.ModelResponse)
    choice = reply.choices[0]
    assert isinstance(choice, litellm.Choices)
    assert choice.finish_reason == "tool_calls"
    calls = choice.message.tool_calls
    assert calls is not None and len(calls) == 1
    assert calls[0].function.name is not None
    assert_weather_call(calls[0].function.name, calls[0].function.arguments)


@pytest.mark.usefixtures("litellm_offline")
@pytest.mark.parametrize("provider", PROVIDERS)
def test_litellm_response_format_json_schema(server: ServerHandle, provider: str) -> None:
    import litellm

    reply = litellm.completion(
        **litellm_target(server, provider),
        messages=CITY,
        response_format=City,
        temperature=0,
        max_tokens=JSON_TOKENS,
    )
    assert isinstance(reply, litellm.ModelResponse)
    choice = reply.choices[0]
    assert isinstance(choice, litellm.Choices)
    assert choice.finish_reason == "stop"
    assert choice.message.content is not None
    assert_city(City.model_validate_json(choice.message.content))
