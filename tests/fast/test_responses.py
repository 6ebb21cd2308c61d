"""``/v1/responses`` in process: what a Responses client sends reaches the model as the chat prompt it
means, the answer comes back in OpenAI's shapes (whole, and as typed events in OpenAI's order), the
openai SDK parses both, stored responses continue conversations within their key only, and what
takes no effect is named."""

from __future__ import annotations

import json
from typing import Any

import httpx
import openai
import pytest
from fastapi import FastAPI
from starlette.testclient import TestClient, WebSocketDenialResponse

from server.endpoints.responses.store import ResponseStore, StoredResponse
from server.endpoints.state import ServerState
from server.gateway.options import GatewayArgs
from server.runtime.app import create_app
from server.text.options import ApiArgs
from tests.fast.fake_engine import FakeEngine
from tests.fast.helpers import client, sdk_client
from tests.fast.tiny_model import MODEL, TinyModel
from tests.helpers import sse_typed_events

WEATHER: Any = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


async def _stream(http: httpx.AsyncClient) -> list[tuple[str, dict[str, Any]]]:
    """The events of a streamed answer to "hi"."""
    response = await http.post("/v1/responses", json={"model": MODEL, "input": "hi", "stream": True})
    return sse_typed_events(response.text)


def _prompt(fake: FakeEngine, tiny: TinyModel, index: int = -1) -> str:
    return str(tiny.tokenization.hf.decode(fake.requests[index].prompt_token_ids))


# --- the answer ---


async def test_a_whole_answer_in_openais_shape(http: httpx.AsyncClient) -> None:
    body = {"model": MODEL, "input": "hi", "metadata": {"k": "v"}, "max_output_tokens": 50, "temperature": 0}
    response = await http.post("/v1/responses", json=body)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["id"].startswith("resp_") and answer["object"] == "response"
    assert (answer["status"], answer["model"], answer["incomplete_details"]) == ("completed", MODEL, None)
    [message] = answer["output"]
    assert message["id"].startswith("msg_")
    assert (message["type"], message["role"], message["status"]) == ("message", "assistant", "completed")
    assert message["content"] == [{"type": "output_text", "text": "Hello world!", "annotations": []}]
    assert answer["usage"] == {
        "input_tokens": 12,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": 5,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": 17,
    }
    # The request's settings are echoed as they took effect.
    assert (answer["metadata"], answer["max_output_tokens"], answer["temperature"]) == ({"k": "v"}, 50, 0.0)
    assert (answer["store"], answer["tool_choice"], answer["tools"], answer["text"]) == (
        True,
        "auto",
        [],
        {"format": {"type": "text"}},
    )
    assert "x-ignored-params" not in response.headers


async def test_the_stream_sends_openais_events_in_order(http: httpx.AsyncClient) -> None:
    response = await http.post("/v1/responses", json={"model": MODEL, "input": "hi", "stream": True})
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
    assert "[DONE]" not in response.text
    events = sse_typed_events(response.text)
    assert [name for name, _ in events] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        *["response.output_text.delta"] * 4,
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [data["sequence_number"] for _, data in events] == list(range(len(events)))
    item_id = events[2][1]["item"]["id"]
    deltas = [data for name, data in events if name == "response.output_text.delta"]
    assert all(d["item_id"] == item_id and d["output_index"] == 0 and d["content_index"] == 0 for d in deltas)
    assert all(d["logprobs"] == [] for d in deltas)  # always present (openai-python#2489)
    assert "".join(d["delta"] for d in deltas) == "Hello world!"
    assert events[0][1]["response"]["status"] == "in_progress"
    final = events[-1][1]["response"]
    assert final["status"] == "completed" and final["output"][0]["content"][0]["text"] == "Hello world!"
    assert final["usage"]["output_tokens"] == 5


async def test_the_sdk_parses_both_and_the_stream_ends_as_the_whole_answer(sdk: openai.AsyncOpenAI) -> None:
    whole = await sdk.responses.create(model=MODEL, input="hi", instructions="Be brief.")
    assert whole.output_text == "Hello world!"
    async with sdk.responses.stream(model=MODEL, input="hi", instructions="Be brief.") as stream:
        deltas = [event.delta async for event in stream if event.type == "response.output_text.delta"]
        final = await stream.get_final_response()
    assert "".join(deltas) == final.output_text == whole.output_text
    assert final.usage == whole.usage and final.instructions == "Be brief."
    plain = await sdk.responses.create(model=MODEL, input="hi", stream=True)
    types = [event.type async for event in plain]
    assert types[0] == "response.created" and types[-1] == "response.completed"


@pytest.mark.parametrize("stream", [False, True])
async def test_running_out_of_max_output_tokens_is_incomplete(
    sdk: openai.AsyncOpenAI, fake: FakeEngine, tiny: TinyModel, stream: bool
) -> None:
    fake.script = lambda _: tiny.reply("Hello", " world", "!", " More")
    if stream:
        # OpenAI's own last event; the SDK's stream helper keeps a final response for response.completed only.
        async with sdk.responses.stream(model=MODEL, input="hi", max_output_tokens=2) as events:
            last = [event async for event in events][-1]
        assert last.type == "response.incomplete"
        answer = last.response
    else:
        answer = await sdk.responses.create(model=MODEL, input="hi", max_output_tokens=2)
    assert answer.status == "incomplete"
    assert answer.incomplete_details is not None and answer.incomplete_details.reason == "max_output_tokens"
    assert answer.model_dump()["output"][0]["status"] == "incomplete" and answer.output_text == "Hello wor"
    assert fake.requests[-1].params.max_tokens == 2


async def test_logprobs_when_included(http: httpx.AsyncClient) -> None:
    body = {"model": MODEL, "input": "hi", "include": ["message.output_text.logprobs"], "top_logprobs": 2}
    answer = (await http.post("/v1/responses", json=body)).json()
    logprobs = answer["output"][0]["content"][0]["logprobs"]
    assert "".join(entry["token"] for entry in logprobs).replace("Ġ", " ") == "Hello world!"
    assert all(len(entry["top_logprobs"]) == 2 for entry in logprobs)
    events = sse_typed_events((await http.post("/v1/responses", json={**body, "stream": True})).text)
    streamed = [lp for name, data in events if name == "response.output_text.delta" for lp in data["logprobs"]]
    assert streamed == logprobs


async def test_a_failure_mid_stream_is_an_error_event_then_response_failed(
    http: httpx.AsyncClient, fake: FakeEngine, tiny: TinyModel
) -> None:
    fake.script = lambda _: tiny.reply("Hello", " world", fail_at=1)
    events = sse_typed_events(
        (await http.post("/v1/responses", json={"model": MODEL, "input": "hi", "stream": True})).text
    )
    (error_name, error), (failed_name, failed) = events[-2:]
    assert (error_name, failed_name) == ("error", "response.failed")
    assert error["code"] == "server_error" and error["message"]
    assert failed["response"]["status"] == "failed" and failed["response"]["error"]["code"] == "server_error"
    assert [data["sequence_number"] for _, data in events] == list(range(len(events)))


# --- what the model is shown ---


async def test_input_items_become_the_chat_prompt(http: httpx.AsyncClient, fake: FakeEngine, tiny: TinyModel) -> None:
    body = {
        "model": MODEL,
        "instructions": "Be brief.",
        "input": [
            {"role": "developer", "content": "Answer in English."},
            {
                "type": "message",
                "role": "user",
                "content": [{"type": "input_text", "text": "Say "}, {"type": "input_text", "text": "hi"}],
            },
            {
                "type": "reasoning",
                "id": "rs_1",
                "summary": [],
                "content": [{"type": "reasoning_text", "text": "SECRET"}],
            },
            {"role": "assistant", "content": [{"type": "output_text", "text": "Hi!", "annotations": []}]},
            {"role": "user", "content": "Again"},
        ],
    }
    response = await http.post("/v1/responses", json=body)
    assert response.status_code == 200, response.text
    assert _prompt(fake, tiny) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>system\nAnswer in English.<|im_end|>\n"
        "<|im_start|>user\nSay hi<|im_end|>\n<|im_start|>assistant\nHi!<|im_end|>\n"
        "<|im_start|>user\nAgain<|im_end|>\n<|im_start|>assistant\n"
    )


async def test_a_function_call_round_trip(roomy: FastAPI, fake: FakeEngine, tiny: TinyModel) -> None:
    """tool_choice required: the call is enforced by a grammar; its result goes back as function_call_output."""
    reply = '[{"name": "get_weather", "parameters": {"city": "Paris"}}]'
    fake.script = lambda _: tiny.reply(*[reply[i : i + 3] for i in range(0, len(reply), 3)])
    async with sdk_client(roomy) as sdk:
        first = await sdk.responses.create(
            model=MODEL, input="Weather in Paris?", tools=[WEATHER], tool_choice="required"
        )
        [call] = first.output
        assert call.type == "function_call" and call.name == "get_weather" and call.id and call.id.startswith("fc_")
        assert json.loads(call.arguments) == {"city": "Paris"} and call.status == "completed"
        assert fake.requests[-1].params.structured_output is not None
        async with sdk.responses.stream(
            model=MODEL, input="Weather in Paris?", tools=[WEATHER], tool_choice="required"
        ) as stream:
            names = [event.type async for event in stream]
            streamed = await stream.get_final_response()
        assert names[2:4] == ["response.output_item.added", "response.function_call_arguments.delta"]
        assert "response.function_call_arguments.done" in names
        assert streamed.output[0].type == "function_call" and json.loads(streamed.output[0].arguments) == {
            "city": "Paris"
        }
        fake.script = lambda _: tiny.reply('{"response": "Sunny."}')
        second = await sdk.responses.create(
            model=MODEL,
            tools=[WEATHER],
            input=[
                {"role": "user", "content": "Weather in Paris?"},
                {"type": "function_call", "call_id": call.call_id, "name": "get_weather", "arguments": call.arguments},
                {"type": "function_call_output", "call_id": call.call_id, "output": "Sunny, 21 C"},
            ],
        )
    assert second.output_text == "Sunny."
    prompt = _prompt(fake, tiny)
    assert "get_weather" in prompt and "Sunny, 21 C" in prompt and "Paris" in prompt


async def test_namespace_tools_are_offered_and_calls_name_their_namespace(
    roomy: FastAPI, fake: FakeEngine, tiny: TinyModel
) -> None:
    fake.script = lambda _: tiny.reply('{"city": "Paris"}')
    tools = [{"type": "namespace", "name": "weather", "description": "Weather tools", "tools": [WEATHER]}]
    body = {"model": MODEL, "input": "hi", "tools": tools, "tool_choice": {"type": "function", "name": "get_weather"}}
    async with client(roomy) as http:
        answer = (await http.post("/v1/responses", json=body)).json()
    [call] = answer["output"]
    assert (call["name"], call["namespace"], json.loads(call["arguments"])) == (
        "get_weather",
        "weather",
        {"city": "Paris"},
    )


PATCH = '*** Begin Patch\n+print("h\u00e9")\n*** End Patch'  # quotes, newlines, a \u escape once encoded
APPLY_PATCH: Any = {"type": "custom", "name": "apply_patch", "description": "Edit files"}


async def test_a_custom_tool_call_is_its_free_text_whole_and_streamed(
    roomy: FastAPI, fake: FakeEngine, tiny: TinyModel
) -> None:
    """Codex's apply_patch: the model's JSON-wrapped text comes back as the call's plain ``input``; a
    stream sends it as input deltas that join up to it, cut wherever the tokens cut the escapes."""
    reply = json.dumps({"input": PATCH})
    fake.script = lambda _: tiny.reply(*[reply[i : i + 2] for i in range(0, len(reply), 2)])
    choice: Any = {"type": "custom", "name": "apply_patch"}
    async with sdk_client(roomy) as sdk:
        whole = await sdk.responses.create(model=MODEL, input="Fix it", tools=[APPLY_PATCH], tool_choice=choice)
        async with sdk.responses.stream(model=MODEL, input="Fix it", tools=[APPLY_PATCH], tool_choice=choice) as stream:
            events = [event async for event in stream]
            streamed = await stream.get_final_response()
    [call] = whole.output
    assert call.type == "custom_tool_call" and call.id is not None and call.id.startswith("ctc_")
    assert (call.name, call.input) == ("apply_patch", PATCH)
    assert streamed.output[0].type == "custom_tool_call" and streamed.output[0].input == PATCH
    deltas = [event.delta for event in events if event.type == "response.custom_tool_call_input.delta"]
    assert len(deltas) > 1 and "".join(deltas) == PATCH
    names = [event.type for event in events]
    assert names[2:4] == ["response.output_item.added", "response.custom_tool_call_input.delta"]
    assert names[-3:] == ["response.custom_tool_call_input.done", "response.output_item.done", "response.completed"]
    # The offered tool is a function of one string, enforced as the named choice asks.
    constraint = fake.requests[-1].params.structured_output
    assert constraint is not None and constraint.json is not None and '"input"' in constraint.json


async def test_a_custom_call_sent_back_reaches_the_prompt(roomy: FastAPI, fake: FakeEngine, tiny: TinyModel) -> None:
    body = {
        "model": MODEL,
        "tools": [APPLY_PATCH],
        "input": [
            {"role": "user", "content": "Fix it"},
            {"type": "custom_tool_call", "call_id": "call_1", "name": "apply_patch", "input": "*** Begin Patch"},
            {"type": "custom_tool_call_output", "call_id": "call_1", "output": "Done: 1 file"},
        ],
    }
    async with client(roomy) as http:
        response = await http.post("/v1/responses", json=body)
    assert response.status_code == 200, response.text
    prompt = _prompt(fake, tiny)
    assert "*** Begin Patch" in prompt and "Done: 1 file" in prompt and "apply_patch" in prompt


async def test_a_custom_tools_regex_is_enforced_and_lark_is_named(
    roomy: FastAPI, fake: FakeEngine, tiny: TinyModel
) -> None:
    fake.script = lambda _: tiny.reply('{"input": "42"}')
    regex = {**APPLY_PATCH, "format": {"type": "grammar", "syntax": "regex", "definition": "[0-9]+"}}
    lark = {**APPLY_PATCH, "format": {"type": "grammar", "syntax": "lark", "definition": "start: /[0-9]+/"}}
    choice = {"type": "custom", "name": "apply_patch"}
    async with client(roomy) as http:
        enforced = await http.post(
            "/v1/responses", json={"model": MODEL, "input": "n?", "tools": [regex], "tool_choice": choice}
        )
        named = await http.post(
            "/v1/responses", json={"model": MODEL, "input": "n?", "tools": [lark], "tool_choice": choice}
        )
    assert enforced.status_code == 200 and "x-ignored-params" not in enforced.headers
    assert enforced.json()["output"][0]["input"] == "42"
    constraint = fake.requests[0].params.structured_output
    assert constraint is not None and constraint.json is not None
    assert '"pattern": "[0-9]+"' in constraint.json.replace('":"', '": "')
    assert named.status_code == 200 and named.headers["x-ignored-params"] == "tools.custom.format"


async def test_text_format_json_schema_is_a_constraint(http: httpx.AsyncClient, fake: FakeEngine) -> None:
    schema = {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]}
    body = {"model": MODEL, "input": "hi", "text": {"format": {"type": "json_schema", "name": "x", "schema": schema}}}
    response = await http.post("/v1/responses", json=body)
    assert response.status_code == 200, response.text
    constraint = fake.requests[-1].params.structured_output
    assert constraint is not None and constraint.json is not None and json.loads(constraint.json) == schema
    assert response.json()["text"]["format"]["schema"] == schema


# --- what takes no effect, and what is refused ---


CODEX_EXTRAS: dict[str, Any] = {
    "reasoning": {"effort": "medium", "summary": "auto"},
    "include": ["reasoning.encrypted_content"],
    "prompt_cache_key": "abc",
    "client_metadata": {"x": "y"},
    "store": False,
    "tools": [
        WEATHER,
        {"type": "web_search"},
        {
            "type": "custom",
            "name": "apply_patch",
            "description": "Patch",
            "format": {"type": "grammar", "syntax": "lark", "definition": 'start: "*** Begin Patch"'},
        },
    ],
}


async def test_what_takes_no_effect_is_named(roomy: FastAPI) -> None:
    async with client(roomy) as http:
        response = await http.post("/v1/responses", json={"model": MODEL, "input": "hi", **CODEX_EXTRAS})
    assert response.status_code == 200, response.text
    assert response.headers["x-ignored-params"].split(", ") == [
        "client_metadata",
        "include.reasoning.encrypted_content",
        "prompt_cache_key",
        "reasoning.effort",
        "reasoning.summary",
        "tools.web_search",
        "tools.custom.format",
    ]


async def test_strict_refuses_what_would_be_ignored(fake: FakeEngine, tiny: TinyModel) -> None:
    state = ServerState(engine=fake, tokenization=tiny.tokenization, model_name=MODEL, api=ApiArgs(strict=True))
    app = create_app(state)
    async with app.router.lifespan_context(app), client(app) as http:
        response = await http.post("/v1/responses", json={"model": MODEL, "input": "hi", "prompt_cache_key": "k"})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "prompt_cache_key"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (
            {"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "http://x/y.png"}]}]},
            "input.0.content",
        ),
        ({"input": "hi", "background": True}, "background"),
        ({"input": "hi", "previous_response_id": "resp_nope"}, "previous_response_id"),
        ({"input": "hi", "tools": [WEATHER], "tool_choice": {"type": "web_search"}}, "tool_choice"),
        ({"input": "hi", "tool_choice": "required"}, "tool_choice"),
        ({"input": "hi", "max_output_tokens": 0}, "max_output_tokens"),
        ({"input": "hi", "text": {"format": {"type": "json_schema", "name": "x"}}}, "text.format.schema"),
        ({"input": []}, "input"),
        ({"input": [{"type": "nonsense"}]}, "input.0"),
    ],
)
async def test_refusals_name_the_parameter(http: httpx.AsyncClient, body: dict[str, Any], param: str) -> None:
    response = await http.post("/v1/responses", json={"model": MODEL, **body})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error"
    if param == "previous_response_id":
        assert error["code"] == "previous_response_not_found"
    if param == "input.0.content":
        assert "text-only" in error["message"]


async def test_a_websocket_attempt_is_refused_at_once(app: FastAPI) -> None:
    """Codex tries a WebSocket first and falls back to HTTP when the upgrade is refused."""
    with TestClient(app) as test, pytest.raises(WebSocketDenialResponse) as refused:
        test.websocket_connect("/v1/responses").__enter__()
    assert refused.value.status_code == 426
    assert "HTTP only" in refused.value.json()["error"]["message"]


# --- stored responses ---


async def test_previous_response_id_continues_the_conversation(
    http: httpx.AsyncClient, fake: FakeEngine, tiny: TinyModel
) -> None:
    first = (await http.post("/v1/responses", json={"model": MODEL, "input": "hi", "instructions": "Old."})).json()
    body = {"model": MODEL, "input": "Again", "previous_response_id": first["id"]}
    second = (await http.post("/v1/responses", json=body)).json()
    assert second["previous_response_id"] == first["id"]
    # The first turn's input and output are the prefix; its instructions are not carried over.
    assert _prompt(fake, tiny) == (
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nHello world!<|im_end|>\n"
        "<|im_start|>user\nAgain<|im_end|>\n<|im_start|>assistant\n"
    )
    third = {"model": MODEL, "input": "More", "previous_response_id": second["id"]}
    assert (await http.post("/v1/responses", json=third)).status_code == 200
    assert _prompt(fake, tiny).count("Hello world!") == 2


async def test_get_delete_and_input_items(sdk: openai.AsyncOpenAI, http: httpx.AsyncClient) -> None:
    made = await sdk.responses.create(
        model=MODEL, input=[{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]
    )
    got = await sdk.responses.retrieve(made.id)
    assert got.model_dump() == made.model_dump()
    items = await sdk.responses.input_items.list(made.id, order="asc")
    assert [item.model_dump()["content"][0]["text"] for item in items.data] == ["a", "b"]
    assert [item.id for item in (await sdk.responses.input_items.list(made.id)).data] == [i.id for i in items.data][
        ::-1
    ]
    deleted = await http.delete(f"/v1/responses/{made.id}")
    assert deleted.json() == {"id": made.id, "object": "response.deleted", "deleted": True}
    with pytest.raises(openai.NotFoundError):
        await sdk.responses.retrieve(made.id)
    assert (await http.delete(f"/v1/responses/{made.id}")).status_code == 404


async def test_a_streamed_response_is_stored_as_it_ended(http: httpx.AsyncClient) -> None:
    events = sse_typed_events(
        (await http.post("/v1/responses", json={"model": MODEL, "input": "hi", "stream": True})).text
    )
    final = events[-1][1]["response"]
    stored = await http.get(f"/v1/responses/{final['id']}")
    assert stored.json() == final
    replay = await http.get(f"/v1/responses/{final['id']}", params={"stream": "true"})
    assert replay.status_code == 400 and replay.json()["error"]["param"] == "stream"


async def test_store_false_keeps_nothing(http: httpx.AsyncClient) -> None:
    made = (await http.post("/v1/responses", json={"model": MODEL, "input": "hi", "store": False})).json()
    assert made["store"] is False
    assert (await http.get(f"/v1/responses/{made['id']}")).status_code == 404


async def test_another_key_cannot_see_a_response(fake: FakeEngine, tiny: TinyModel) -> None:
    state = ServerState(
        engine=fake, tokenization=tiny.tokenization, model_name=MODEL, gateway_args=GatewayArgs(api_key=["ka", "kb"])
    )
    app = create_app(state)
    async with app.router.lifespan_context(app), client(app, "ka") as alice, client(app, "kb") as bob:
        made = (await alice.post("/v1/responses", json={"model": MODEL, "input": "hi"})).json()
        for attempt in (
            bob.get(f"/v1/responses/{made['id']}"),
            bob.get(f"/v1/responses/{made['id']}/input_items"),
            bob.delete(f"/v1/responses/{made['id']}"),
        ):
            response = await attempt
            assert response.status_code == 404 and response.json()["error"]["param"] == "response_id"
        continued = await bob.post(
            "/v1/responses", json={"model": MODEL, "input": "x", "previous_response_id": made["id"]}
        )
        assert continued.status_code == 400
        assert (await alice.get(f"/v1/responses/{made['id']}")).status_code == 200


def _stored(size: int = 0) -> StoredResponse:
    return StoredResponse({"id": "x", "pad": "p" * size}, [], [])


def test_the_store_forgets_the_oldest_beyond_its_bounds_and_after_its_ttl() -> None:
    now = [1000.0]
    store = ResponseStore("memory", max_entries=2, max_bytes=10_000, ttl_s=60, clock=lambda: now[0])
    for name in ("a", "b", "c"):
        now[0] += 1
        store.put("", name, _stored())
    assert (store.get("", "a"), len(store)) == (None, 2)
    store.put("", "big", _stored(6_000))
    store.put("", "big2", _stored(6_000))  # both cannot fit in 10,000 bytes: the older goes
    assert store.get("", "big") is None and store.get("", "big2") is not None
    now[0] += 61
    assert store.get("", "big2") is None and len(store) == 0


def test_a_sqlite_store_keeps_responses_across_restarts(tmp_path: Any) -> None:
    location = f"sqlite:{tmp_path / 'responses.db'}"
    store = ResponseStore(location)
    store.put("scope", "resp_1", StoredResponse({"id": "resp_1"}, [{"id": "msg_1"}], []))
    store.close()
    again = ResponseStore(location)
    stored = again.get("scope", "resp_1")
    assert stored is not None and stored.input_items == [{"id": "msg_1"}]
    assert again.get("other", "resp_1") is None
    with pytest.raises(ValueError, match="memory"):
        ResponseStore("redis://x")


@pytest.mark.parametrize("text", ["hello " * 300, "x" * 100_000], ids=["tokens", "characters"])
async def test_a_prompt_over_the_context_names_the_input(http: httpx.AsyncClient, text: str) -> None:
    """Counted in tokens, or refused by its length before it is tokenized: either way the client's field."""
    response = await http.post("/v1/responses", json={"model": MODEL, "input": text})
    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["param"], error["code"]) == ("input", "context_length_exceeded")
    assert "the input" in error["message"]


async def test_reasoning_is_its_own_item(fake: FakeEngine, tiny: TinyModel) -> None:
    """With a reasoning parser the thinking is a reasoning item before the message, whole and streamed."""
    fake.script = lambda _: tiny.reply("<think>", "Hmm", "</think>", "Hello")
    state = ServerState(
        engine=fake, tokenization=tiny.tokenization, model_name=MODEL, api=ApiArgs(reasoning_parser="think")
    )
    app = create_app(state)
    async with app.router.lifespan_context(app), client(app) as http, sdk_client(app) as sdk:
        answer = (await http.post("/v1/responses", json={"model": MODEL, "input": "hi"})).json()
        reasoning, message = answer["output"]
        assert reasoning["id"].startswith("rs_") and reasoning["content"] == [{"type": "reasoning_text", "text": "Hmm"}]
        assert message["content"][0]["text"] == "Hello"
        assert answer["usage"]["output_tokens_details"]["reasoning_tokens"] > 0
        events = sse_typed_events(
            (await http.post("/v1/responses", json={"model": MODEL, "input": "hi", "stream": True})).text
        )
        names = [name for name, _ in events]
        assert names.index("response.reasoning_text.done") < names.index("response.output_text.delta")
        assert "".join(d["delta"] for n, d in events if n == "response.reasoning_text.delta") == "Hmm"
        assert events[-1][1]["response"]["usage"] == answer["usage"]
        async with sdk.responses.stream(model=MODEL, input="hi") as stream:
            final = await stream.get_final_response()
        assert final.output_text == "Hello" and final.output[0].type == "reasoning"


async def test_parallel_calls_are_items_one_after_another(roomy: FastAPI, fake: FakeEngine, tiny: TinyModel) -> None:
    calls = [{"name": "get_weather", "parameters": {"city": city}} for city in ("Paris", "Rome")]
    reply = json.dumps(calls)
    fake.script = lambda _: tiny.reply(*[reply[i : i + 4] for i in range(0, len(reply), 4)])
    body = {"model": MODEL, "input": "Weather?", "tools": [WEATHER], "tool_choice": "required"}
    async with client(roomy) as http:
        whole = (await http.post("/v1/responses", json=body)).json()
        events = sse_typed_events((await http.post("/v1/responses", json={**body, "stream": True})).text)
    cities = [json.loads(item["arguments"])["city"] for item in whole["output"]]
    assert cities == ["Paris", "Rome"] and len({item["call_id"] for item in whole["output"]}) == 2
    opened_closed = [(name, data["output_index"]) for name, data in events if name.startswith("response.output_item")]
    assert opened_closed == [
        ("response.output_item.added", 0),
        ("response.output_item.done", 0),
        ("response.output_item.added", 1),
        ("response.output_item.done", 1),
    ]
    final = events[-1][1]["response"]
    assert [json.loads(item["arguments"])["city"] for item in final["output"]] == cities
    assert [data["sequence_number"] for _, data in events] == list(range(len(events)))
