"""Every error in OpenAI's shape, ``{"error": {"message", "type", "param", "code"}}``, with the status
OpenAI SDKs map to their exceptions: never FastAPI's ``{"detail": ...}`` or a 422. And every
response, error or not, carries ``x-request-id`` (the client's own when it sent one)."""

from __future__ import annotations

from typing import Any

import httpx
import openai
import pytest

from tests.fast.tiny_model import MODEL
from tests.helpers import assert_openai_error

HI = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/v1/chat/completions", {"messages": HI, "temperature": 5}, "temperature"),
        ("/v1/chat/completions", {"messages": HI, "max_tokens": 0}, "max_tokens"),
        ("/v1/chat/completions", {"messages": HI, "n": 0}, "n"),
        ("/v1/chat/completions", {"messages": HI, "seed": 2**63}, "seed"),
        ("/v1/chat/completions", {"messages": []}, "messages"),
        ("/v1/chat/completions", {}, "messages"),
        ("/v1/chat/completions", {"messages": [{"role": "wizard", "content": "hi"}]}, "messages.0.role"),
        ("/v1/chat/completions", {"messages": HI, "top_logprobs": 2}, "top_logprobs"),
        ("/v1/chat/completions", {"messages": HI, "stop_token_ids": [10**9]}, "stop_token_ids"),
        ("/v1/chat/completions", {"messages": HI, "stream_options": {"include_usage": True}}, "stream_options"),
        ("/v1/chat/completions", {"messages": HI, "max_tokens": 5, "min_tokens": 6}, "min_tokens"),
        ("/v1/completions", {"prompt": []}, "prompt"),
        ("/v1/completions", {"prompt": [10**9]}, "prompt"),
        ("/v1/completions", {"prompt": "hi", "suffix": "!"}, "suffix"),
        ("/v1/completions", {"prompt": "hi", "top_p": 0}, "top_p"),
    ],
)
async def test_invalid_parameters_are_400_naming_the_param(
    http: httpx.AsyncClient, path: str, body: dict[str, Any], param: str
) -> None:
    error = assert_openai_error(await http.post(path, json={"model": MODEL, **body}), 400)
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param


async def test_context_overflow_says_the_numbers(http: httpx.AsyncClient, sdk: openai.AsyncOpenAI) -> None:
    for stream in (False, True):
        response = await http.post(
            "/v1/completions", json={"model": MODEL, "prompt": "hi", "max_tokens": 256, "stream": stream}
        )
        error = assert_openai_error(response, 400)
        assert (error["param"], error["code"]) == ("prompt", "context_length_exceeded")
        assert "256" in error["message"]
    with pytest.raises(openai.BadRequestError) as caught:
        await sdk.chat.completions.create(model=MODEL, messages=HI, max_tokens=1000)  # type: ignore[arg-type]
    assert caught.value.code == "context_length_exceeded"


async def test_malformed_json_is_400(http: httpx.AsyncClient) -> None:
    response = await http.post(
        "/v1/chat/completions", content=b'{"model": "x", "messages": [', headers={"content-type": "application/json"}
    )
    assert "JSON" in assert_openai_error(response, 400)["message"]


async def test_unknown_model_is_404(http: httpx.AsyncClient, sdk: openai.AsyncOpenAI) -> None:
    for response in (
        await http.post("/v1/chat/completions", json={"model": "gpt-17", "messages": HI}),
        await http.post("/v1/completions", json={"model": "gpt-17", "prompt": "hi", "stream": True}),
        await http.get("/v1/models/gpt-17"),
    ):
        error = assert_openai_error(response, 404)
        assert (error["type"], error["param"], error["code"]) == ("invalid_request_error", "model", "model_not_found")
        assert "gpt-17" in error["message"]
    with pytest.raises(openai.NotFoundError):
        await sdk.models.retrieve("gpt-17")
    assert (await sdk.models.retrieve(MODEL)).id == MODEL
    assert [m.id async for m in sdk.models.list()] == [MODEL]


async def test_unknown_route_and_wrong_method_name_what_is_not_served(
    http: httpx.AsyncClient, sdk: openai.AsyncOpenAI
) -> None:
    """Clients read any 404 as "no such model": the message says it is the URL, by method and path."""
    missing = assert_openai_error(await http.post("/v1/nothing-here", json={}), 404)
    assert missing == {
        "message": "Invalid URL (POST /v1/nothing-here): ise does not serve this path.",
        "type": "invalid_request_error",
        "param": None,
        "code": None,
    }
    wrong = await http.get("/v1/chat/completions")
    message = "Invalid method (GET /v1/chat/completions): ise serves this path with POST only."
    assert assert_openai_error(wrong, 405)["message"] == message
    assert wrong.headers["allow"] == "POST"
    probe = await http.delete("/health")
    message = assert_openai_error(probe, 405)["message"]
    assert message == "Invalid method (DELETE /health): ise serves this path with GET, HEAD only."
    assert probe.headers["allow"] == "GET, HEAD"
    with pytest.raises(openai.NotFoundError, match=r"Invalid URL \(GET /v1/fine_tuning/jobs\)"):
        await sdk.fine_tuning.jobs.list()


@pytest.mark.parametrize(
    ("method", "path", "body", "status"),
    [
        ("POST", "/v1/chat/completions", {"model": MODEL, "messages": HI}, 200),
        ("POST", "/v1/chat/completions", {"model": MODEL, "messages": HI, "stream": True}, 200),
        ("POST", "/v1/completions", {"model": MODEL, "prompt": "hi"}, 200),
        ("POST", "/v1/chat/completions", {"model": MODEL, "messages": HI, "n": 0}, 400),
        ("POST", "/v1/chat/completions", {"model": "gpt-17", "messages": HI}, 404),
        ("GET", "/v1/chat/completions", None, 405),
        ("GET", "/nowhere", None, 404),
        ("GET", "/v1/models", None, 200),
        ("GET", "/health", None, 200),
        ("GET", "/metrics", None, 200),
    ],
)
async def test_every_response_has_a_request_id(
    http: httpx.AsyncClient, method: str, path: str, body: dict[str, Any] | None, status: int
) -> None:
    mine = await http.request(method, path, json=body, headers={"x-request-id": "gateway-trace-42"})
    assert mine.status_code == status
    assert mine.headers.get_list("x-request-id") == ["gateway-trace-42"]
    theirs = await http.request(method, path, json=body)
    assert theirs.status_code == status
    generated = theirs.headers.get_list("x-request-id")
    assert len(generated) == 1 and len(generated[0]) >= 16 and generated[0] != "gateway-trace-42"
