"""Anthropic's Messages API in process: what the anthropic SDK and Claude Code see.

The request is translated into chat's and served by chat's pipeline, so these tests hold what is
Anthropic's own: the translation (system blocks, tool_use / tool_result turns, thinking), the
stop reasons, the stream's typed events in order with its pings, the error shapes and statuses
on every Anthropic route (OpenAI's routes keep OpenAI's), ``x-api-key`` and ``count_tokens``.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import anthropic
import httpx
import httpx2
import pytest
from fastapi import FastAPI

from server.endpoints.messages import api as messages_api
from server.endpoints.state import ServerState
from server.protocol.messages_response import anthropic_error
from server.runtime.app import create_app
from server.text.options import ApiArgs
from tests.fast.fake_engine import FakeEngine, Reply
from tests.fast.helpers import Gated, client, serving, until
from tests.fast.tiny_model import MODEL, TinyModel
from tests.helpers import sse_typed_events

WEATHER = {
    "name": "get_weather",
    "description": "The weather in a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


def _message(**extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "max_tokens": 64, "messages": [{"role": "user", "content": "hi"}], **extra}


def _anthropic_error(response: httpx.Response, status: int, kind: str) -> str:
    """Anthropic's error shape with ``status`` and ``kind``; returns the message."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["type"] == "error" and set(body) == {"type", "error"}
    assert set(body["error"]) == {"type", "message"} and body["error"]["type"] == kind
    message: str = body["error"]["message"]
    return message


def _sdk(app: FastAPI, key: str = "x") -> anthropic.AsyncAnthropic:
    http_client = httpx2.AsyncClient(transport=httpx2.ASGITransport(app=app), base_url="http://test")
    return anthropic.AsyncAnthropic(base_url="http://test", api_key=key, http_client=http_client, max_retries=0)


async def test_a_message_whole_and_streamed(http: httpx.AsyncClient, tiny: TinyModel) -> None:
    whole = await http.post("/v1/messages?beta=true", json=_message())
    assert whole.status_code == 200, whole.text
    message = whole.json()
    assert message["id"].startswith("msg_") and (message["type"], message["role"]) == ("message", "assistant")
    assert message["model"] == MODEL
    assert message["content"] == [{"type": "text", "text": "Hello world!"}]
    assert (message["stop_reason"], message["stop_sequence"]) == ("end_turn", None)
    usage = message["usage"]
    counted = await http.post("/v1/messages/count_tokens", json={"model": MODEL, "messages": _message()["messages"]})
    assert counted.json() == {"input_tokens": usage["input_tokens"] + usage["cache_read_input_tokens"]}
    output_tokens = len(tiny.ids("Hello", " world", "!")) + 1  # and the EOS
    assert usage["output_tokens"] == output_tokens

    streamed = await http.post("/v1/messages", json=_message(stream=True))
    assert streamed.headers["content-type"].startswith("text/event-stream")
    events = sse_typed_events(streamed.text)
    assert all(name == data["type"] for name, data in events)
    names = [name for name, _ in events]
    assert names[:2] == ["message_start", "ping"]
    assert names[2] == "content_block_start" and names[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert set(names[3:-3]) == {"content_block_delta"}
    start = events[0][1]["message"]
    assert start["content"] == [] and start["stop_reason"] is None and start["usage"]["input_tokens"] > 0
    text = "".join(data["delta"]["text"] for name, data in events if name == "content_block_delta")
    assert text == "Hello world!"
    delta = events[-2][1]
    assert delta["delta"] == {"stop_reason": "end_turn", "stop_sequence": None}
    assert delta["usage"]["output_tokens"] == output_tokens


async def test_the_sdk_reads_messages_and_streams(app: FastAPI) -> None:
    async with _sdk(app) as sdk:
        message = await sdk.messages.create(model=MODEL, max_tokens=16, messages=[{"role": "user", "content": "hi"}])
        assert message.content[0].type == "text" and message.content[0].text == "Hello world!"
        async with sdk.messages.stream(
            model=MODEL, max_tokens=16, messages=[{"role": "user", "content": "hi"}]
        ) as stream:
            text = "".join([piece async for piece in stream.text_stream])
            final = await stream.get_final_message()
        assert text == "Hello world!" and final.stop_reason == "end_turn"
        assert final.usage.output_tokens == message.usage.output_tokens
        counted = await sdk.messages.count_tokens(model=MODEL, messages=[{"role": "user", "content": "hi"}])
        assert counted.input_tokens == message.usage.input_tokens + (message.usage.cache_read_input_tokens or 0)


async def test_stop_reasons(http: httpx.AsyncClient) -> None:
    stopped = (await http.post("/v1/messages", json=_message(stop_sequences=[" wor", "zzz"]))).json()
    assert stopped["content"] == [{"type": "text", "text": "Hello"}]
    assert (stopped["stop_reason"], stopped["stop_sequence"]) == ("stop_sequence", " wor")
    events = sse_typed_events(
        (await http.post("/v1/messages", json=_message(stop_sequences=[" wor"], stream=True))).text
    )
    assert events[-2][1]["delta"] == {"stop_reason": "stop_sequence", "stop_sequence": " wor"}
    cut = (await http.post("/v1/messages", json=_message(max_tokens=1))).json()
    assert (cut["stop_reason"], cut["stop_sequence"], cut["usage"]["output_tokens"]) == ("max_tokens", None, 1)


async def test_system_blocks_and_sampling_reach_the_chat_request(http: httpx.AsyncClient, fake: FakeEngine) -> None:
    system = [
        {"type": "text", "text": "You are terse.", "cache_control": {"type": "ephemeral"}},
        {"type": "text", "text": "Answer in English."},
    ]
    body = _message(system=system, temperature=0, top_p=0.5, top_k=3, metadata={"user_id": "u-1"})
    response = await http.post("/v1/messages", json=body)
    assert response.status_code == 200 and "x-ignored-params" not in response.headers
    params = fake.requests[0].params
    assert (params.temperature, params.top_p, params.top_k, params.max_tokens) == (0, 0.5, 3, 64)


async def test_system_text_is_in_the_prompt(http: httpx.AsyncClient, fake: FakeEngine, tiny: TinyModel) -> None:
    system = [{"type": "text", "text": "You are terse."}, {"type": "text", "text": "Say hello."}]
    await http.post("/v1/messages", json=_message(system=system))
    prompt = tiny.tokenization.decode(fake.requests[0].prompt_token_ids)
    assert "system\nYou are terse.\nSay hello.\nuser\nhi" in prompt


async def test_unknown_fields_and_thinking_without_a_parser_are_named(http: httpx.AsyncClient) -> None:
    body = _message(
        context_management={"edits": []},
        output_config={"effort": "high"},
        thinking={"type": "enabled", "budget_tokens": 8},
    )
    response = await http.post("/v1/messages", json=body)
    assert response.status_code == 200
    assert response.headers["x-ignored-params"] == "context_management, output_config, thinking"


async def test_thinking_blocks_with_a_reasoning_parser(fake: FakeEngine, tiny: TinyModel) -> None:
    fake.script = lambda _: tiny.reply("<th", "ink>The user ", "greets.</", "think>Hello", "!")
    app = create_app(
        ServerState(
            engine=fake, tokenization=tiny.tokenization, model_name=MODEL, api=ApiArgs(reasoning_parser="think")
        )
    )
    async with app.router.lifespan_context(app), client(app) as http:
        thinking = {"type": "enabled", "budget_tokens": 1024}
        whole = await http.post("/v1/messages", json=_message(thinking=thinking))
        assert whole.headers["x-ignored-params"] == "thinking.budget_tokens"  # the model thinks as long as it thinks
        assert whole.json()["content"] == [
            {"type": "thinking", "thinking": "The user greets.", "signature": ""},
            {"type": "text", "text": "Hello!"},
        ]
        events = sse_typed_events((await http.post("/v1/messages", json=_message(stream=True, thinking=thinking))).text)
        starts = [data["content_block"]["type"] for name, data in events if name == "content_block_start"]
        assert starts == ["thinking", "text"]
        deltas = [data["delta"] for name, data in events if name == "content_block_delta"]
        assert "".join(d.get("thinking", "") for d in deltas) == "The user greets."
        assert "".join(d.get("text", "") for d in deltas) == "Hello!"
        # A thinking block in the history is accepted and left out of the prompt.
        history = [
            {"role": "user", "content": "hi"},
            {
                "role": "assistant",
                "content": [
                    {"type": "thinking", "thinking": "SECRET", "signature": "s"},
                    {"type": "text", "text": "Hello!"},
                ],
            },
            {"role": "user", "content": "again"},
        ]
        assert (await http.post("/v1/messages", json=_message(messages=history))).status_code == 200
        assert "SECRET" not in tiny.tokenization.decode(fake.requests[-1].prompt_token_ids)


async def test_a_forced_tool_call_whole_and_streamed(roomy: FastAPI, fake: FakeEngine, tiny: TinyModel) -> None:
    reply = '{"city": "Paris"}'
    fake.script = lambda _: tiny.reply(*[reply[i : i + 3] for i in range(0, len(reply), 3)])
    body = _message(max_tokens=500, tools=[WEATHER], tool_choice={"type": "tool", "name": "get_weather"})
    async with client(roomy) as http:
        message = (await http.post("/v1/messages", json=body)).json()
        [call] = message["content"]
        assert (call["type"], call["name"], call["input"]) == ("tool_use", "get_weather", {"city": "Paris"})
        assert call["id"].startswith("toolu_") and message["stop_reason"] == "tool_use"
        constraint = fake.requests[0].params.structured_output
        assert constraint is not None and constraint.json is not None and "city" in constraint.json
        events = sse_typed_events((await http.post("/v1/messages", json={**body, "stream": True})).text)
    [start] = [data for name, data in events if name == "content_block_start"]
    assert start["content_block"]["type"] == "tool_use" and start["content_block"]["input"] == {}
    assert start["content_block"]["name"] == "get_weather" and start["content_block"]["id"].startswith("toolu_")
    partial = "".join(d["delta"]["partial_json"] for name, d in events if name == "content_block_delta")
    assert json.loads(partial) == {"city": "Paris"}
    assert events[-2][1]["delta"]["stop_reason"] == "tool_use"


async def test_claude_codes_tool_schemas_are_served_with_their_unenforceable_keywords_named(
    roomy: FastAPI, fake: FakeEngine, tiny: TinyModel
) -> None:
    """Claude Code's tools use ``propertyNames``, which structured decoding cannot enforce: the
    tools' grammar (auto, in the tiny model's generic format) enforces the rest and names it."""
    fake.script = lambda _: tiny.reply('{"response": "Hi"}')
    schema = {"type": "object", "properties": {"env": {"type": "object", "propertyNames": {"pattern": "^[A-Z_]+$"}}}}
    body = _message(max_tokens=500, tools=[WEATHER, {"name": "Bash", "input_schema": schema}])
    async with client(roomy) as http:
        response = await http.post("/v1/messages", json=body)
    assert response.status_code == 200, response.text
    assert response.json()["content"] == [{"type": "text", "text": "Hi"}]
    assert response.headers["x-ignored-params"] == "tools.input_schema.propertyNames"
    constraint = fake.requests[0].params.structured_output
    assert constraint is not None and constraint.json is not None
    assert "propertyNames" not in constraint.json and "Bash" in constraint.json


@pytest.mark.parametrize(("choice", "want"), [({"type": "any"}, "required"), ({"type": "none"}, "none")])
async def test_tool_choice_any_and_none(
    roomy: FastAPI, fake: FakeEngine, tiny: TinyModel, choice: dict[str, Any], want: str
) -> None:
    fake.script = lambda _: tiny.reply(
        '[{"name": "get_weather", "parameters": {"city": "Rome"}}]' if want == "required" else "Hi"
    )
    async with client(roomy) as http:
        message = (
            await http.post("/v1/messages", json=_message(max_tokens=500, tools=[WEATHER], tool_choice=choice))
        ).json()
    if want == "required":
        assert [(b["type"], b["input"]) for b in message["content"]] == [("tool_use", {"city": "Rome"})]
    else:
        assert message["content"] == [{"type": "text", "text": "Hi"}]
        assert fake.requests[0].params.structured_output is None


async def test_tool_use_and_tool_result_round_trip(roomy: FastAPI, fake: FakeEngine, tiny: TinyModel) -> None:
    """A call in the history and its result reach the model as chat's tool call and tool message."""
    fake.script = lambda _: tiny.reply('{"response": "It is 22 C."}')
    history = [
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Let me look."},
                {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}},
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": [{"type": "text", "text": "22 C"}]},
                {"type": "text", "text": "And so?"},
            ],
        },
    ]
    async with client(roomy) as http:
        message = (
            await http.post("/v1/messages", json=_message(max_tokens=500, messages=history, tools=[WEATHER]))
        ).json()
    assert message["content"] == [{"type": "text", "text": "It is 22 C."}] and message["stop_reason"] == "end_turn"
    prompt = tiny.tokenization.decode(fake.requests[0].prompt_token_ids)
    assert '{"tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris"}}]}' in prompt
    assert prompt.index("22 C") < prompt.index("And so?")


@pytest.mark.parametrize(
    ("body", "says"),
    [
        (_message(messages=[{"role": "user", "content": [{"type": "image", "source": {}}]}]), "text-only"),
        ({"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}, "max_tokens"),
        (_message(max_tokens=5000), "maximum context length is 256 tokens"),
        (_message(tool_choice={"type": "any"}), "tool_choice needs tools"),
        (
            _message(messages=[{"role": "assistant", "content": [{"type": "tool_result", "tool_use_id": "t"}]}]),
            "tool_result",
        ),
    ],
)
async def test_bad_requests_are_anthropic_400s(
    http: httpx.AsyncClient, fake: FakeEngine, body: dict[str, Any], says: str
) -> None:
    message = _anthropic_error(await http.post("/v1/messages", json=body), 400, "invalid_request_error")
    assert says in message
    assert not fake.requests


async def test_max_tokens_beyond_the_context_names_both_numbers(app: FastAPI) -> None:
    async with _sdk(app) as sdk:
        with pytest.raises(anthropic.BadRequestError) as caught:
            # Streamed, as Claude Code asks: the SDK refuses a whole answer this long itself.
            await sdk.messages.create(
                model=MODEL, max_tokens=32000, messages=[{"role": "user", "content": "hi"}], stream=True
            )
    message = caught.value.body["error"]["message"]  # type: ignore[index]
    assert (
        "256 tokens" in message and "32000 in the completion" in message and "CLAUDE_CODE_MAX_OUTPUT_TOKENS" in message
    )


async def test_unknown_model_and_path_are_not_found(http: httpx.AsyncClient) -> None:
    _anthropic_error(await http.post("/v1/messages", json=_message(model="claude-x")), 404, "not_found_error")
    _anthropic_error(await http.post("/v1/messages/batches", json={}), 404, "not_found_error")
    # OpenAI's routes keep OpenAI's shape.
    openai_404 = await http.post("/v1/chat/completions", json={**_message(model="claude-x"), "max_tokens": 4})
    assert openai_404.status_code == 404 and openai_404.json()["error"]["code"] == "model_not_found"


async def test_head_root_answers(http: httpx.AsyncClient) -> None:
    assert (await http.head("/")).status_code == 200


async def test_keys_as_anthropic_clients_send_them(fake: FakeEngine, tiny: TinyModel) -> None:
    async with serving(fake, tiny, api_key=["sk-right"]) as app:
        async with client(app) as http:
            message = _anthropic_error(await http.post("/v1/messages", json=_message()), 401, "authentication_error")
            assert "x-api-key" in message
            wrong = await http.post("/v1/messages", json=_message(), headers={"x-api-key": "sk-wrong"})
            _anthropic_error(wrong, 401, "authentication_error")
            for headers in ({"x-api-key": "sk-right"}, {"authorization": "Bearer sk-right"}):
                assert (await http.post("/v1/messages", json=_message(), headers=headers)).status_code == 200
            # x-api-key opens the OpenAI routes too; their errors stay OpenAI's.
            chat = {**_message(), "max_tokens": 4}
            assert (
                await http.post("/v1/chat/completions", json=chat, headers={"x-api-key": "sk-right"})
            ).status_code == 200
            assert (await http.post("/v1/chat/completions", json=chat)).json()["error"]["code"] == "invalid_api_key"
        async with _sdk(app, "sk-right") as sdk:
            assert (
                await sdk.messages.create(model=MODEL, max_tokens=8, messages=[{"role": "user", "content": "hi"}])
            ).content
        async with _sdk(app, "sk-wrong") as sdk:
            with pytest.raises(anthropic.AuthenticationError):
                await sdk.messages.create(model=MODEL, max_tokens=8, messages=[{"role": "user", "content": "hi"}])


async def test_a_key_over_its_rate_limit_is_429(fake: FakeEngine, tiny: TinyModel, clock: object) -> None:
    async with serving(fake, tiny, api_key=["k"], requests_per_minute=1) as app, client(app, "k") as http:
        assert (await http.post("/v1/messages", json=_message())).status_code == 200
        refused = await http.post("/v1/messages", json=_message())
        _anthropic_error(refused, 429, "rate_limit_error")
        assert int(refused.headers["retry-after"]) >= 1


async def test_a_body_over_the_limit_is_413(fake: FakeEngine, tiny: TinyModel) -> None:
    async with serving(fake, tiny, max_request_body_bytes=1000) as app, client(app) as http:
        body = _message(system="x" * 2000)
        _anthropic_error(await http.post("/v1/messages", json=body), 413, "request_too_large")
        assert (await http.post("/v1/chat/completions", json=body)).json()["error"]["type"] == "invalid_request_error"


async def test_an_overloaded_server_is_529_which_the_sdk_retries(fake: FakeEngine, tiny: TinyModel) -> None:
    gated = Gated(fake, tiny)
    async with serving(fake, tiny, max_waiting_requests=1) as app, client(app) as http:
        held = asyncio.create_task(http.post("/v1/messages", json=_message()))
        await until(lambda: len(fake.requests) == 1)
        for stream in (False, True):
            refused = await http.post("/v1/messages", json=_message(stream=stream))
            _anthropic_error(refused, 529, "overloaded_error")
            assert "retry-after" in refused.headers
        async with _sdk(app) as sdk:
            with pytest.raises(anthropic.InternalServerError) as caught:  # the SDK's class for 529
                await sdk.messages.create(model=MODEL, max_tokens=8, messages=[{"role": "user", "content": "hi"}])
            assert caught.value.status_code == 529
        gated.open_all()
        assert (await held).status_code == 200


async def test_a_failure_mid_stream_is_an_error_event(
    fake: FakeEngine, tiny: TinyModel, http: httpx.AsyncClient
) -> None:
    fake.script = lambda _: Reply(tiny.ids("Hello", " world", "!"), fail_at=1)
    events = sse_typed_events((await http.post("/v1/messages", json=_message(stream=True))).text)
    name, data = events[-1]
    assert name == "error" and data["type"] == "error" and data["error"]["type"] == "api_error"
    whole = await http.post("/v1/messages", json=_message())
    _anthropic_error(whole, 500, "api_error")


async def test_pings_at_the_keep_alive_interval_while_the_first_token_is_awaited(
    fake: FakeEngine, tiny: TinyModel
) -> None:
    fake.script = lambda _: tiny.reply("Hello", delays=[0.4])
    async with serving(fake, tiny, sse_keep_alive_interval=0.05) as app, client(app) as http:
        body = (await http.post("/v1/messages", json=_message(stream=True))).text
    names = [name for name, _ in sse_typed_events(body)]
    first_block = names.index("content_block_start")
    assert names[0] == "message_start" and names[1:first_block].count("ping") >= 3
    assert set(names[1:first_block]) == {"ping"}
    assert ": keep-alive" not in body  # Anthropic's event, not the comment line


async def test_no_periodic_pings_with_the_interval_at_zero(fake: FakeEngine, tiny: TinyModel) -> None:
    fake.script = lambda _: tiny.reply("Hello", delays=[0.3])
    async with serving(fake, tiny, sse_keep_alive_interval=0) as app, client(app) as http:
        names = [
            name for name, _ in sse_typed_events((await http.post("/v1/messages", json=_message(stream=True))).text)
        ]
    # Anthropic's stream always has its one ping after message_start; nothing more.
    assert names[:3] == ["message_start", "ping", "content_block_start"]


@pytest.mark.parametrize(
    ("status", "code", "want"),
    [
        (400, "context_length_exceeded", (400, "invalid_request_error")),
        (401, "invalid_api_key", (401, "authentication_error")),
        (404, "model_not_found", (404, "not_found_error")),
        (405, None, (405, "invalid_request_error")),
        (413, "request_too_large", (413, "request_too_large")),
        (429, "rate_limit_exceeded", (429, "rate_limit_error")),
        (429, "server_overloaded", (529, "overloaded_error")),
        (429, "slo_exceeded", (529, "overloaded_error")),
        (503, "server_shutting_down", (529, "overloaded_error")),
        (503, "engine_dead", (500, "api_error")),
        (500, None, (500, "api_error")),
    ],
)
def test_every_status_has_anthropics_type(status: int, code: str | None, want: tuple[int, str]) -> None:
    got_status, body = anthropic_error(status, code, "m")
    assert (got_status, body.error.type) == want


async def test_an_unexpected_failure_is_an_anthropic_500(
    http: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*_: object, **__: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(messages_api, "to_chat", broken)
    response = await http.post("/v1/messages", json=_message())
    message = _anthropic_error(response, 500, "api_error")
    assert "boom" not in message and len(response.headers["x-request-id"]) >= 16
