"""The request fields applications call beyond plain text: what reaches the engine and the shapes that come back.

The fake engine reports made-up logprobs and cache hits (``fake_logprobs``), so these tests check
the server's side: fields carried to the engine, OpenAI's shapes, streamed equal to whole, and
nothing ignored silently. Their numerics on the real model are tests/real/test_api_fields.py's.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import httpx
import openai
import pytest

from adapters.engine import StructuredOutput
from server.endpoints.state import ServerState
from server.runtime.app import create_app
from server.text.options import ApiArgs
from server.text.tokenization import Tokenization
from tests.fast.fake_engine import FakeEngine, Reply, fake_logprobs
from tests.fast.helpers import client
from tests.fast.tiny_model import HERMES_TEMPLATE, MODEL, TinyModel
from tests.helpers import assert_openai_error, sse_chunks

HI = [{"role": "user", "content": "Say hello"}]


def _chat(**extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": HI, **extra}


def _text(**extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "prompt": "Hello", "max_tokens": 8, **extra}


# Sampling fields reach the engine.


async def test_logit_bias_and_min_p_reach_the_engine(http: httpx.AsyncClient, fake: FakeEngine) -> None:
    response = await http.post("/v1/chat/completions", json=_chat(logit_bias={"7": -100, "3": 5.5}, min_p=0.2))
    assert response.status_code == 200, response.text
    params = fake.requests[0].params
    assert params.logit_bias == ((3, 5.5), (7, -100.0))
    assert params.min_p == 0.2


@pytest.mark.parametrize(("top_k", "engine_top_k"), [(5, 5), (-1, 0), (2**70, 0)])
async def test_top_k_reaches_the_engine_as_a_count_it_can_take(
    http: httpx.AsyncClient, fake: FakeEngine, top_k: int, engine_top_k: int
) -> None:
    """A top_k past the vocabulary keeps every token, as 0 does: the engine is told 0, never a
    number vLLM's engine core cannot serialize (2**70 was a 500 there)."""
    response = await http.post("/v1/chat/completions", json=_chat(top_k=top_k))
    assert response.status_code == 200, response.text
    assert fake.requests[0].params.top_k == engine_top_k


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"logit_bias": {"hello": 1}}, "logit_bias"),
        ({"logit_bias": {"100000": 1}}, "logit_bias"),
        ({"logit_bias": {"5": 101}}, "logit_bias.5"),
        ({"min_p": 1.5}, "min_p"),
        ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
        ({"top_logprobs": 2}, "top_logprobs"),
        ({"use_beam_search": True}, "use_beam_search"),
    ],
)
async def test_bad_sampling_fields_are_400_naming_them(
    http: httpx.AsyncClient, body: dict[str, Any], param: str
) -> None:
    assert assert_openai_error(await http.post("/v1/chat/completions", json=_chat(**body)), 400)["param"] == param


async def test_null_means_the_default(http: httpx.AsyncClient, fake: FakeEngine) -> None:
    nulls = {
        "n": None,
        "presence_penalty": None,
        "frequency_penalty": None,
        "temperature": None,
        "top_p": None,
        "stop": None,
        "logprobs": None,
        "top_logprobs": None,
        "logit_bias": None,
        "min_p": None,
        "seed": None,
        "stream": None,
        "stream_options": None,
        "max_tokens": None,
        "tools": None,
        "tool_choice": None,
        "response_format": None,
        "user": None,
    }
    response = await http.post("/v1/chat/completions", json=_chat(**nulls))
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"] == "Hello world!"
    assert "x-ignored-params" not in response.headers


# Logprobs, in OpenAI's shapes.


async def test_chat_logprobs_whole_and_streamed(http: httpx.AsyncClient, fake: FakeEngine, tiny: TinyModel) -> None:
    body = _chat(logprobs=True, top_logprobs=2)
    whole = (await http.post("/v1/chat/completions", json=body)).json()["choices"][0]
    content = whole["logprobs"]["content"]
    ids = tiny.ids("Hello", " world", "!")
    assert [c["token"] for c in content] == [tiny.tokenization.token_text(t) for t in ids]
    assert "".join(c["token"] for c in content) == whole["message"]["content"]
    assert [c["logprob"] for c in content] == [fake_logprobs(t, i, 2).logprob for i, t in enumerate(ids)]
    assert all(len(c["top_logprobs"]) == 2 and bytes(c["bytes"]).decode() == c["token"] for c in content)
    assert content[0]["top_logprobs"][1]["logprob"] == content[0]["logprob"] - 1
    streamed = sse_chunks((await http.post("/v1/chat/completions", json={**body, "stream": True})).text)
    entries = [e for chunk in streamed for c in chunk["choices"] if c["logprobs"] for e in c["logprobs"]["content"]]
    assert entries == content


async def test_chat_logprobs_parse_as_the_sdks_types(sdk: openai.AsyncOpenAI) -> None:
    completion = await sdk.chat.completions.create(model=MODEL, messages=HI, logprobs=True, top_logprobs=1)  # type: ignore[arg-type]
    logprobs = completion.choices[0].logprobs
    assert logprobs is not None and logprobs.content is not None
    assert logprobs.content[0].top_logprobs[0].token == logprobs.content[0].token


async def test_no_logprobs_unless_asked(http: httpx.AsyncClient) -> None:
    choice = (await http.post("/v1/chat/completions", json=_chat())).json()["choices"][0]
    assert choice["logprobs"] is None


async def test_completion_logprobs_zero_gives_the_chosen_tokens_only(http: httpx.AsyncClient, tiny: TinyModel) -> None:
    choice = (await http.post("/v1/completions", json=_text(logprobs=0))).json()["choices"][0]
    logprobs = choice["logprobs"]
    ids = tiny.ids("Hello", " world", "!")
    assert logprobs["tokens"] == [tiny.tokenization.token_text(t) for t in ids]
    assert logprobs["token_logprobs"] == [fake_logprobs(t, i, 0).logprob for i, t in enumerate(ids)]
    assert logprobs["top_logprobs"] == [{}] * len(ids)
    assert [choice["text"][o:] for o in logprobs["text_offset"]] == ["Hello world!", " world!", "ld!", "!"]


async def test_echo_with_logprobs_covers_the_prompt(http: httpx.AsyncClient, fake: FakeEngine, tiny: TinyModel) -> None:
    choice = (await http.post("/v1/completions", json=_text(echo=True, logprobs=1))).json()["choices"][0]
    assert choice["text"] == "Hello" + "Hello world!"
    assert fake.requests[0].params.prompt_logprobs == 1
    logprobs = choice["logprobs"]
    prompt = tiny.tokenization.encode("Hello")
    assert len(logprobs["tokens"]) == len(prompt) + len(tiny.ids("Hello", " world", "!"))
    assert logprobs["token_logprobs"][0] is None and logprobs["top_logprobs"][0] is None
    text = choice["text"]
    assert all(text[o : o + len(t)] == t for o, t in zip(logprobs["text_offset"], logprobs["tokens"], strict=True))


async def test_echo_streams_the_prompt_first(http: httpx.AsyncClient) -> None:
    events = sse_chunks((await http.post("/v1/completions", json=_text(echo=True, stream=True))).text)
    texts = [c["text"] for e in events for c in e["choices"]]
    assert texts[0].startswith("Hello") and "".join(texts) == "HelloHello world!"


async def test_streamed_completion_logprobs_concatenate_to_the_whole(http: httpx.AsyncClient) -> None:
    whole = (await http.post("/v1/completions", json=_text(logprobs=2))).json()["choices"][0]["logprobs"]
    events = sse_chunks((await http.post("/v1/completions", json=_text(logprobs=2, stream=True))).text)
    joined: dict[str, list[Any]] = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
    for event in events:
        for choice in event["choices"]:
            for key in joined:
                joined[key] += (choice["logprobs"] or {}).get(key) or []
    assert joined == whole


async def test_prompt_logprobs_in_vllms_shape(http: httpx.AsyncClient, tiny: TinyModel) -> None:
    prompt = tiny.tokenization.encode("Hello world")
    for path, body in (("/v1/completions", _text(prompt="Hello world")), ("/v1/chat/completions", _chat())):
        answer = (await http.post(path, json={**body, "prompt_logprobs": 1})).json()
        entries = answer["choices"][0]["prompt_logprobs"] if path == "/v1/completions" else answer["prompt_logprobs"]
        assert entries[0] is None and all(e is not None for e in entries[1:])
        if path == "/v1/completions":
            assert len(entries) == len(prompt)
            second = entries[1][str(prompt[1])]
            assert second == {"logprob": -0.25, "rank": 1, "decoded_token": tiny.tokenization.token_text(prompt[1])}
    plain = (await http.post("/v1/completions", json=_text())).json()
    assert "prompt_logprobs" not in plain["choices"][0]
    refused = await http.post("/v1/completions", json=_text(prompt_logprobs=1, stream=True))
    assert assert_openai_error(refused, 400)["param"] == "prompt_logprobs"


# Usage: cache hits, continuous stats; stop strings kept on request.


async def test_cached_tokens_are_reported(fake: FakeEngine, tiny: TinyModel) -> None:
    fake.cached_tokens = 3
    app = create_app(ServerState(engine=fake, tokenization=tiny.tokenization, model_name=MODEL))
    async with app.router.lifespan_context(app), client(app) as http:
        usage = (await http.post("/v1/chat/completions", json=_chat())).json()["usage"]
        assert usage["prompt_tokens_details"] == {"cached_tokens": 3}
        events = sse_chunks(
            (
                await http.post("/v1/chat/completions", json=_chat(stream=True, stream_options={"include_usage": True}))
            ).text
        )
        assert events[-1]["usage"]["prompt_tokens_details"] == {"cached_tokens": 3}


async def test_continuous_usage_stats_count_as_they_go(http: httpx.AsyncClient, tiny: TinyModel) -> None:
    options = {"include_usage": True, "continuous_usage_stats": True}
    events = sse_chunks((await http.post("/v1/completions", json=_text(stream=True, stream_options=options))).text)
    counts = [e["usage"]["completion_tokens"] for e in events[:-1]]  # the last: the usage chunk
    assert counts == sorted(counts) and counts[-1] == len(tiny.ids("Hello", " world", "!")) + 1  # and EOS
    assert all(e["usage"]["prompt_tokens"] == events[0]["usage"]["prompt_tokens"] for e in events)


async def test_include_stop_str_in_output(http: httpx.AsyncClient) -> None:
    cut = (await http.post("/v1/completions", json=_text(stop=[" wor"]))).json()["choices"][0]["text"]
    kept = (await http.post("/v1/completions", json=_text(stop=[" wor"], include_stop_str_in_output=True))).json()
    assert (cut, kept["choices"][0]["text"]) == ("Hello", "Hello wor")


# Nothing silent: a field takes effect, is named in a header as ignored, or is refused saying what to change.


async def test_fields_that_take_no_effect_are_named_in_a_header(http: httpx.AsyncClient) -> None:
    body = _chat(store=True, metadata={"a": "b"}, made_up_field=1, stream_options=None, service_tier="auto")
    response = await http.post("/v1/chat/completions", json=body)
    assert response.status_code == 200
    assert response.headers["x-ignored-params"] == "store, metadata, made_up_field"
    options = {"include_usage": True, "include_obfuscation": True}
    response = await http.post("/v1/chat/completions", json=_chat(stream=True, stream_options=options))
    assert response.headers["x-ignored-params"] == "stream_options.include_obfuscation"
    plain = await http.post("/v1/chat/completions", json=_chat(store=False, parallel_tool_calls=True))
    assert "x-ignored-params" not in plain.headers


async def test_ignored_field_names_cannot_break_the_header(http: httpx.AsyncClient) -> None:
    """Field names are the client's: any characters, any number of them (found by schemathesis)."""
    body = _chat(**{"\n\u00b4x": 1, "\u023e": [], **{f"f{i}": i for i in range(40)}})
    response = await http.post("/v1/chat/completions", json=body)
    assert response.status_code == 200
    header = response.headers["x-ignored-params"]
    assert header.startswith("%0A%C2%B4x, %C8%BE, f0, f1") and header.endswith(", +10 more")


async def test_strict_refuses_fields_that_would_be_ignored(fake: FakeEngine, tiny: TinyModel) -> None:
    state = ServerState(engine=fake, tokenization=tiny.tokenization, model_name=MODEL, api=ApiArgs(strict=True))
    app = create_app(state)
    async with app.router.lifespan_context(app), client(app) as http:
        error = assert_openai_error(await http.post("/v1/completions", json=_text(metadata={"a": "b"})), 400)
        assert (error["param"], error["code"]) == ("metadata", "unsupported_parameter")
        assert (await http.post("/v1/completions", json=_text(logprobs=1, echo=True))).status_code == 200
    assert len(fake.requests) == 1


async def test_errors_say_what_to_change(fake: FakeEngine, tiny: TinyModel) -> None:
    state = ServerState(engine=fake, tokenization=tiny.tokenization, model_name=MODEL, api=ApiArgs(strict=True))
    app = create_app(state)
    async with app.router.lifespan_context(app), client(app) as http:
        error = assert_openai_error(await http.post("/v1/chat/completions", json=_chat(top_logprobs=2)), 400)
        assert error["param"] == "top_logprobs" and "logprobs: true" in error["message"]
        error = assert_openai_error(await http.post("/v1/chat/completions", json=_chat(store=True, foo=1)), 400)
        assert error["param"] == "store" and "'store', 'foo' are not supported" in error["message"]


async def test_the_end_user_is_in_the_access_log(http: httpx.AsyncClient, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="ise.access")
    assert (await http.post("/v1/chat/completions", json=_chat(user="alice@example.com"))).status_code == 200
    assert any('user="alice@example.com"' in r.getMessage() for r in caplog.records if r.name == "ise.access")


# Messages: text only, tool history accepted.


@pytest.mark.parametrize("kind", ["image_url", "input_audio", "file"])
async def test_media_parts_get_a_text_only_400(http: httpx.AsyncClient, kind: str) -> None:
    parts = [{"type": "text", "text": "What is this?"}, {"type": kind, kind: {"url": "data:,"}}]
    response = await http.post("/v1/chat/completions", json=_chat(messages=[{"role": "user", "content": parts}]))
    error = assert_openai_error(response, 400)
    assert error["param"] == "messages.0.content"
    assert "text-only" in error["message"] and kind in error["message"]


async def test_a_content_part_of_no_known_type_is_a_400(http: httpx.AsyncClient) -> None:
    """Found by schemathesis: a part whose type is an object once crashed the text-only check."""
    messages = [{"role": "user", "content": [{"type": {}, "text": "hi"}]}]
    response = await http.post("/v1/chat/completions", json=_chat(messages=messages))
    assert assert_openai_error(response, 400)["param"] == "messages.0.content"


async def test_tool_history_is_accepted(http: httpx.AsyncClient, fake: FakeEngine, tiny: TinyModel) -> None:
    call = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
    messages = [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": "22 C"},
    ]
    response = await http.post("/v1/chat/completions", json=_chat(messages=messages))
    assert response.status_code == 200, response.text
    prompt = tiny.tokenization.decode(fake.requests[0].prompt_token_ids)
    assert "get_weather" in prompt and "22 C" in prompt


# Structured outputs: every spelling reaches the engine as one constraint, checked first.

_SCHEMA = {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}
_CANONICAL = json.dumps(_SCHEMA, separators=(",", ":"))


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"response_format": {"type": "json_object"}}, StructuredOutput(json_object=True)),
        (
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "p", "schema": _SCHEMA, "strict": True},
                }
            },
            StructuredOutput(json=_CANONICAL),
        ),
        ({"structured_outputs": {"json": _SCHEMA}}, StructuredOutput(json=_CANONICAL)),
        ({"guided_json": json.dumps(_SCHEMA)}, StructuredOutput(json=_CANONICAL)),
        ({"structured_outputs": {"regex": "[a-z]+"}}, StructuredOutput(regex="[a-z]+")),
        ({"guided_regex": "[a-z]+"}, StructuredOutput(regex="[a-z]+")),
        ({"guided_choice": ["yes", "no"]}, StructuredOutput(choice=("yes", "no"))),
        ({"structured_outputs": {"grammar": 'root ::= "a" | "b"'}}, StructuredOutput(grammar='root ::= "a" | "b"')),
        ({"response_format": {"type": "text"}}, None),
    ],
)
async def test_every_structured_output_spelling_reaches_the_engine(
    http: httpx.AsyncClient, fake: FakeEngine, body: dict[str, Any], expected: StructuredOutput | None
) -> None:
    for path, request in (("/v1/chat/completions", _chat(**body)), ("/v1/completions", _text(**body))):
        response = await http.post(path, json=request)
        assert response.status_code == 200, response.text
        assert fake.requests[-1].params.structured_output == expected


@pytest.mark.parametrize(
    ("body", "param", "says"),
    [
        (
            {"response_format": {"type": "json_schema", "json_schema": {"schema": {"not": {"type": "string"}}}}},
            "response_format",
            "not",
        ),
        (
            {"response_format": {"type": "json_schema", "json_schema": {"schema": {"type": "strin"}}}},
            "response_format",
            "invalid",
        ),
        ({"response_format": {"type": "json_schema"}}, "response_format.json_schema", "json_schema"),
        ({"response_format": {"type": "xml"}}, "response_format.type", ""),
        ({"guided_regex": "a(b"}, "guided_regex", "parenthesis"),
        ({"structured_outputs": {"grammar": "root ::= foo"}}, "structured_outputs.grammar", "foo"),
        ({"guided_choice": []}, "guided_choice", "at least 1"),
        ({"guided_json": "{not json"}, "guided_json", "not JSON"),
        ({"response_format": {"type": "json_object"}, "guided_regex": "a"}, "guided_regex", "only one"),
    ],
)
async def test_constraints_that_cannot_be_enforced_are_400(
    http: httpx.AsyncClient, fake: FakeEngine, body: dict[str, Any], param: str, says: str
) -> None:
    error = assert_openai_error(await http.post("/v1/chat/completions", json=_chat(**body)), 400)
    assert error["param"] == param
    assert says in error["message"]
    assert not fake.requests


async def test_a_schemas_description_is_reported_ignored(http: httpx.AsyncClient) -> None:
    fmt = {"type": "json_schema", "json_schema": {"name": "p", "schema": _SCHEMA, "description": "A person"}}
    response = await http.post("/v1/chat/completions", json=_chat(response_format=fmt))
    assert response.headers["x-ignored-params"] == "response_format.json_schema.description"


async def test_a_schemas_property_order_is_kept(http: httpx.AsyncClient, fake: FakeEngine) -> None:
    """xgrammar makes the model write properties in the schema's order: it must be the client's."""
    schema = {"type": "object", "properties": {"z": {"type": "string"}, "a": {"type": "string"}}}
    fmt = {"type": "json_schema", "json_schema": {"name": "p", "schema": schema}}
    await http.post("/v1/chat/completions", json=_chat(response_format=fmt))
    constraint = fake.requests[0].params.structured_output
    assert constraint is not None and constraint.json is not None
    assert list(json.loads(constraint.json)["properties"]) == ["z", "a"]


# Tool calls, through the whole server.

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
CALL_TEXT = '{"tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris"}}]}'


@pytest.fixture
async def roomy(fake: FakeEngine, tiny: TinyModel) -> AsyncIterator[httpx.AsyncClient]:
    """A server whose engine takes 4,096 tokens: the tools' description is long in the tiny
    tokenizer, which spells most words a byte at a time."""
    fake.max_model_len = 4096
    app = create_app(ServerState(engine=fake, tokenization=tiny.tokenization, model_name=MODEL))
    async with app.router.lifespan_context(app), client(app) as http:
        yield http


@pytest.mark.parametrize(
    "tool_choice", [None, "auto", "required", {"type": "function", "function": {"name": "get_weather"}}]
)
async def test_tool_calls_whole_and_streamed(
    roomy: httpx.AsyncClient, fake: FakeEngine, tiny: TinyModel, tool_choice: Any
) -> None:
    """The tiny model's template knows no tools: ise's generic format, enforced by a grammar."""
    text = {
        None: CALL_TEXT,
        "auto": CALL_TEXT,
        "required": '[{"name": "get_weather", "parameters": {"city": "Paris"}}]',
    }
    reply = text.get(tool_choice if isinstance(tool_choice, str | None) else "named", '{"city": "Paris"}')
    fake.script = lambda _: tiny.reply(*[reply[i : i + 3] for i in range(0, len(reply), 3)])
    body = _chat(tools=[WEATHER], **({"tool_choice": tool_choice} if tool_choice is not None else {}))
    whole = (await roomy.post("/v1/chat/completions", json=body)).json()["choices"][0]
    constraint = fake.requests[0].params.structured_output
    assert constraint is not None and constraint.json is not None and "city" in constraint.json
    prompt = tiny.tokenization.decode(fake.requests[0].prompt_token_ids)
    assert "get_weather" in prompt and "The weather in a city" in prompt
    assert whole["finish_reason"] == "tool_calls" and whole["message"]["content"] is None
    [call] = whole["message"]["tool_calls"]
    assert (call["type"], call["function"]["name"]) == ("function", "get_weather")
    assert json.loads(call["function"]["arguments"]) == {"city": "Paris"}
    assert call["id"].startswith("call_")
    events = sse_chunks((await roomy.post("/v1/chat/completions", json={**body, "stream": True})).text)
    fragments = [t for e in events for c in e["choices"] for t in c["delta"].get("tool_calls", [])]
    assert fragments[0]["id"].startswith("call_") and fragments[0]["function"]["name"] == "get_weather"
    assert all(f["index"] == 0 and "id" not in f for f in fragments[1:])
    assert json.loads("".join(f["function"]["arguments"] for f in fragments)) == {"city": "Paris"}
    assert [c["finish_reason"] for e in events for c in e["choices"]][-1] == "tool_calls"


async def test_auto_tool_choice_may_answer_in_text(roomy: httpx.AsyncClient, fake: FakeEngine, tiny: TinyModel) -> None:
    fake.script = lambda _: tiny.reply('{"response": "Hello ', 'world!"}')
    whole = (await roomy.post("/v1/chat/completions", json=_chat(tools=[WEATHER]))).json()["choices"][0]
    assert (whole["message"]["content"], whole["finish_reason"]) == ("Hello world!", "stop")
    assert "tool_calls" not in whole["message"]
    events = sse_chunks((await roomy.post("/v1/chat/completions", json=_chat(tools=[WEATHER], stream=True))).text)
    assert "".join(c["delta"].get("content", "") for e in events for c in e["choices"]) == "Hello world!"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"tool_choice": "required"}, "tool_choice"),
        ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
        ({"tools": [{"type": "function", "function": {"name": "bad name!"}}]}, "tools.0.function.name"),
        (
            {
                "tools": [{"type": "function", "function": {"name": "f", "parameters": {"not": {}}, "strict": True}}],
                "tool_choice": "required",
            },
            "tools",
        ),
    ],
)
async def test_bad_tool_requests_are_400(roomy: httpx.AsyncClient, body: dict[str, Any], param: str) -> None:
    assert assert_openai_error(await roomy.post("/v1/chat/completions", json=_chat(**body)), 400)["param"] == param


async def test_a_non_strict_tools_unenforceable_keywords_are_named_not_refused(
    roomy: httpx.AsyncClient, fake: FakeEngine
) -> None:
    """Claude Code's tools use ``propertyNames``: a tool without ``strict`` is guidance, so its grammar
    enforces the rest of its schema and the keyword is named; a strict tool's is refused above."""
    parameters = {
        "type": "object",
        "properties": {"env": {"type": "object", "propertyNames": {"pattern": "^[A-Z]+$"}}, "n": {"type": "integer"}},
        "required": ["n"],
    }
    tool = {"type": "function", "function": {"name": "run", "parameters": parameters}}
    response = await roomy.post("/v1/chat/completions", json=_chat(tools=[tool], tool_choice="required"))
    assert response.status_code == 200, response.text
    assert response.headers["x-ignored-params"] == "tools.function.parameters.propertyNames"
    constraint = fake.requests[-1].params.structured_output
    assert constraint is not None and constraint.json is not None
    assert "propertyNames" not in constraint.json and '"n"' in constraint.json and '"integer"' in constraint.json


@pytest.mark.parametrize("stream", [False, True])
async def test_a_forced_call_cut_short_leaves_no_call_syntax_in_content(
    roomy: httpx.AsyncClient, fake: FakeEngine, tiny: TinyModel, stream: bool
) -> None:
    """tool_choice required: a model repeating calls until max_tokens leaves half a call behind."""
    text = '[{"name": "get_weather", "parameters": {"city": "Paris"}},\n{"name": "get_w'
    ids = tiny.ids(*[text[i : i + 4] for i in range(0, len(text), 4)])
    fake.script = lambda _: Reply(ids)
    body = _chat(tools=[WEATHER], tool_choice="required", max_tokens=len(ids), stream=stream)
    response = await roomy.post("/v1/chat/completions", json=body)
    if stream:
        deltas = [c["delta"] for e in sse_chunks(response.text) for c in e["choices"]]
        assert not "".join(d.get("content") or "" for d in deltas)
        names = [t["function"]["name"] for d in deltas for t in d.get("tool_calls", []) if "name" in t["function"]]
        assert names[0] == "get_weather"
    else:
        message = response.json()["choices"][0]["message"]
        assert message["content"] is None
        assert message["tool_calls"][0]["function"]["name"] == "get_weather"


async def test_a_template_that_knows_tools_gets_them_and_its_format_is_parsed(
    fake: FakeEngine, tiny: TinyModel
) -> None:
    """Hermes-style: the template renders the tools; auto needs no grammar; <tool_call> blocks become calls."""
    tokenization = Tokenization(tiny.path, tiny.info.vocab_size, chat_template=HERMES_TEMPLATE)
    fake.max_model_len = 4096
    call = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>'
    fake.script = lambda _: tiny.reply("Let me check. ", *[call[i : i + 5] for i in range(0, len(call), 5)])
    app = create_app(ServerState(engine=fake, tokenization=tokenization, model_name=MODEL))
    async with app.router.lifespan_context(app), client(app) as http:
        whole = (await http.post("/v1/chat/completions", json=_chat(tools=[WEATHER]))).json()["choices"][0]
        assert fake.requests[0].params.structured_output is None
        assert '"name": "get_weather"' in tokenization.decode(fake.requests[0].prompt_token_ids)
        assert whole["message"]["content"] == "Let me check."
        assert json.loads(whole["message"]["tool_calls"][0]["function"]["arguments"]) == {"city": "Oslo"}
        assert whole["finish_reason"] == "tool_calls"
        events = sse_chunks((await http.post("/v1/chat/completions", json=_chat(tools=[WEATHER], stream=True))).text)
        deltas = [c["delta"] for e in events for c in e["choices"]]
        assert "".join(d.get("content") or "" for d in deltas) == "Let me check."
        arguments = "".join(t["function"]["arguments"] for d in deltas for t in d.get("tool_calls", []))
        assert json.loads(arguments) == {"city": "Oslo"}


async def test_a_conversation_that_may_not_call_sees_its_calls_as_prose(
    roomy: httpx.AsyncClient, fake: FakeEngine, tiny: TinyModel
) -> None:
    """Found by a fresh user: shown its calls as JSON, the model wrote JSON again, as content."""
    call = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
    messages = [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": "18C"},
    ]
    for extra in ({"tools": [WEATHER], "tool_choice": "none"}, {}):
        await roomy.post("/v1/chat/completions", json=_chat(messages=messages, **extra))
        prompt = tiny.tokenization.decode(fake.requests[-1].prompt_token_ids)
        assert 'Called get_weather with {"city": "Paris"}.' in prompt and '"tool_calls"' not in prompt
    await roomy.post("/v1/chat/completions", json=_chat(messages=messages, tools=[WEATHER]))
    assert '{"tool_calls": [{"name": "get_weather"' in tiny.tokenization.decode(fake.requests[-1].prompt_token_ids)


async def test_tokenize_counts_tools_as_the_completion_is_charged(roomy: httpx.AsyncClient) -> None:
    call = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Rome"}'}}
    messages = [
        {"role": "user", "content": "Weather in Rome?"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": "Sunny"},
    ]
    for choice in ("auto", "required"):
        body = {"messages": messages, "tools": [WEATHER], "tool_choice": choice}
        count = (await roomy.post("/tokenize", json=body)).json()["count"]
        usage = (await roomy.post("/v1/chat/completions", json=_chat(**body))).json()["usage"]
        assert count == usage["prompt_tokens"]
        assert count > (await roomy.post("/tokenize", json={"messages": messages})).json()["count"]


# Reasoning: the thinking in reasoning_content, apart from the answer.


async def test_reasoning_goes_to_reasoning_content(fake: FakeEngine, tiny: TinyModel) -> None:
    fake.script = lambda _: tiny.reply("<th", "ink>The user ", "greets.</", "think>Hello", "!")
    api = ApiArgs(reasoning_parser="think")
    app = create_app(ServerState(engine=fake, tokenization=tiny.tokenization, model_name=MODEL, api=api))
    async with app.router.lifespan_context(app), client(app) as http:
        whole = (await http.post("/v1/chat/completions", json=_chat())).json()
        message = whole["choices"][0]["message"]
        assert (message["reasoning_content"], message["content"]) == ("The user greets.", "Hello!")
        reasoning_tokens = whole["usage"]["completion_tokens_details"]["reasoning_tokens"]
        assert 0 < reasoning_tokens < whole["usage"]["completion_tokens"]
        options = {"include_usage": True}
        events = sse_chunks(
            (await http.post("/v1/chat/completions", json=_chat(stream=True, stream_options=options))).text
        )
        deltas = [c["delta"] for e in events for c in e["choices"]]
        assert "".join(d.get("reasoning_content", "") for d in deltas) == "The user greets."
        assert "".join(d.get("content", "") for d in deltas) == "Hello!"
        assert events[-1]["usage"]["completion_tokens_details"]["reasoning_tokens"] == reasoning_tokens


async def test_a_constrained_answer_with_a_reasoning_parser_is_content(fake: FakeEngine, tiny: TinyModel) -> None:
    """The grammar holds from the first token, so deepseek_r1's implicit thinking cannot be there."""
    fake.script = lambda _: tiny.reply("yes")
    api = ApiArgs(reasoning_parser="deepseek_r1")
    app = create_app(ServerState(engine=fake, tokenization=tiny.tokenization, model_name=MODEL, api=api))
    async with app.router.lifespan_context(app), client(app) as http:
        constrained = await http.post("/v1/chat/completions", json=_chat(guided_choice=["yes", "no"]))
        message = constrained.json()["choices"][0]["message"]
        assert message["content"] == "yes" and "reasoning_content" not in message
        free = (await http.post("/v1/chat/completions", json=_chat())).json()["choices"][0]["message"]
        assert free["reasoning_content"] == "yes" and free["content"] is None
