"""Failures as clients see them. When the engine dies, every stream in flight ends with an error event
and ``[DONE]``, later requests get 503 and ``/health`` says 503, so a load balancer can take the
server out. When one request fails alone, only it gets an error (500); the others, and the server,
carry on. An unexpected bug still answers in OpenAI's error shape."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import openai
import pytest
from fastapi import FastAPI

from adapters.engine import EngineRequest
from tests.fast.fake_engine import FakeEngine, Reply, Script
from tests.fast.helpers import metric
from tests.fast.tiny_model import MODEL, TinyModel
from tests.helpers import assert_openai_error, openai_error, sse_payloads

NEVER = 3600.0  # a wait that outlasts any test: only the engine's death ends it


def _chat(content: str, **extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": content}], "max_tokens": 50, **extra}


def _script_by_prompt(tiny: TinyModel, failing: Reply, other: Reply) -> tuple[Script, asyncio.Event]:
    """Prompts that mention "fail" get ``failing``, the others ``other``; the event says one of those is in."""
    other_in_flight = asyncio.Event()

    def script(request: EngineRequest) -> Reply:
        if "fail" in tiny.tokenization.decode(request.prompt_token_ids):
            return failing
        other_in_flight.set()
        return other

    return script, other_in_flight


async def test_engine_death_mid_stream(http: httpx.AsyncClient, fake: FakeEngine, tiny: TinyModel) -> None:
    said = tiny.ids("Hello", " world")
    dying_reply = tiny.reply("Hello", " world", "!", fail_at=len(said), failure="engine")
    fake.script, in_flight = _script_by_prompt(tiny, dying_reply, tiny.reply("o", "k", delays=NEVER))
    bystander_call = asyncio.create_task(http.post("/v1/chat/completions", json=_chat("wait", stream=True)))
    await in_flight.wait()
    dying = await http.post("/v1/chat/completions", json=_chat("fail", stream=True))
    bystander = await bystander_call
    for response in (dying, bystander):
        assert response.status_code == 200  # the headers went out before the engine died
        *_, payload, done = sse_payloads(response.text)
        assert done == "[DONE]"
        error = openai_error(json.loads(payload))
        assert error["type"] == "service_unavailable"
        assert "engine" in error["message"]
    contents = [json.loads(e)["choices"][0]["delta"]["content"] for e in sse_payloads(dying.text)[1:-2]]
    assert "".join(contents) == "Hello world"
    assert not fake.is_alive

    later = await http.post("/v1/chat/completions", json=_chat("hi"))
    assert assert_openai_error(later, 503)["type"] == "service_unavailable"
    streamed = await http.post("/v1/completions", json={"model": MODEL, "prompt": "hi", "stream": True})
    assert streamed.status_code == 503  # refused before any event is sent
    health = await http.get("/health")
    assert assert_openai_error(health, 503)["type"] == "service_unavailable"
    assert await metric(http, "ise_engine_alive") == 0


async def test_sdk_sees_503_after_engine_death(sdk: openai.AsyncOpenAI, fake: FakeEngine, tiny: TinyModel) -> None:
    fake.script = lambda _: tiny.reply("Hello", fail_at=0, failure="engine")
    with pytest.raises(openai.InternalServerError) as died:
        await sdk.completions.create(model=MODEL, prompt="hi")
    assert died.value.status_code == 503
    with pytest.raises(openai.InternalServerError) as later:
        await sdk.completions.create(model=MODEL, prompt="hi")
    assert later.value.status_code == 503


@pytest.mark.parametrize("stream", [False, True])
async def test_one_failed_request_leaves_the_rest_alone(
    http: httpx.AsyncClient, fake: FakeEngine, tiny: TinyModel, stream: bool
) -> None:
    # The other request is still generating when this one fails.
    fake.script, in_flight = _script_by_prompt(
        tiny, tiny.reply("Hel", "lo", fail_at=1), tiny.reply("o", "k", delays=[0.0, 0.1])
    )
    fine_call = asyncio.create_task(http.post("/v1/chat/completions", json=_chat("wait", stream=stream)))
    await in_flight.wait()
    failed = await http.post("/v1/chat/completions", json=_chat("fail", stream=stream))
    assert not fine_call.done()
    fine = await fine_call
    if stream:
        assert failed.status_code == 200
        *_, payload, done = sse_payloads(failed.text)
        assert done == "[DONE]"
        body = json.loads(payload)
        texts = "".join(json.loads(e)["choices"][0]["delta"].get("content", "") for e in sse_payloads(fine.text)[:-1])
        assert texts == "ok"
    else:
        assert failed.status_code == 500
        body = failed.json()
        assert fine.status_code == 200 and fine.json()["choices"][0]["message"]["content"] == "ok"
    error = openai_error(body)
    assert error["type"] == "server_error"
    assert "injected failure" in error["message"]
    assert fake.is_alive
    assert (await http.get("/health")).status_code == 200
    fake.script = lambda _: tiny.reply("still here")
    again = await http.post("/v1/chat/completions", json=_chat("fail"))
    assert again.json()["choices"][0]["message"]["content"] == "still here"


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/v1/chat/completions", _chat("hi", guided_regex="a+"), "guided_regex"),
        ("/v1/chat/completions", _chat("hi", response_format={"type": "json_object"}), "response_format"),
        ("/v1/completions", {"model": MODEL, "prompt": "hi", "structured_outputs": {"regex": "a+"}},
         "structured_outputs.regex"),
    ],
)  # fmt: skip
@pytest.mark.parametrize("stream", [False, True])
async def test_a_constraint_at_a_dead_end_is_the_clients_400_naming_it(
    http: httpx.AsyncClient,
    fake: FakeEngine,
    tiny: TinyModel,
    path: str,
    body: dict[str, Any],
    param: str,
    stream: bool,
) -> None:
    """A constraint the model cannot spell is the request's fault: a 400 (or the stream's error
    event) naming the field that set it, with the output it reached, never a 500."""
    fake.script = lambda _: tiny.reply("a", "a", fail_at=1, failure="constraint")
    response = await http.post(path, json={**body, "stream": stream})
    if stream:
        assert response.status_code == 200
        *_, payload, done = sse_payloads(response.text)
        assert done == "[DONE]"
        error = openai_error(json.loads(payload))
    else:
        error = assert_openai_error(response, 400)
    assert error["type"] == "invalid_request_error" and error["param"] == param, error
    assert error["message"].startswith(f"'{param}' allows no token of this model's vocabulary after 1 output tokens")
    assert fake.is_alive and (await http.get("/health")).status_code == 200


async def test_unexpected_error_is_an_openai_500(app: FastAPI, fake: FakeEngine) -> None:
    def broken(request: EngineRequest) -> Reply:
        raise ValueError("a bug, not a failure the engine reports")

    fake.script = broken
    # Starlette re-raises an unhandled error after answering it; the client still gets the answer.
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        response = await client.post("/v1/chat/completions", json=_chat("hi"), headers={"x-request-id": "trace-1"})
    assert response.status_code == 500
    assert response.json() == {
        "error": {
            "message": "The server had an error while processing your request.",
            "type": "server_error",
            "param": None,
            "code": None,
        }
    }
    assert response.headers["x-request-id"] == "trace-1"
