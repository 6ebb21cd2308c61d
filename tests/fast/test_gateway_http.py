"""The gateway's HTTP edges: the body limit, CORS, ``x-should-retry``, and the aborts /metrics counts.

Each is what a client sees: a 413 in OpenAI's shape instead of a parsed megabyte, browsers
allowed or not, an SDK that retries only what a retry can fix, and a stream whose client went
away (or stopped reading) aborted in the engine and counted by why.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import httpx
import openai
import pytest
from fastapi import FastAPI
from starlette.types import Message

from server.gateway.options import GatewayArgs
from tests.fast.fake_engine import FakeEngine
from tests.fast.helpers import Clock, asgi_call, client, metric, sdk_client, serving, until
from tests.fast.tiny_model import MODEL, TinyModel
from tests.helpers import assert_openai_error

HI = [{"role": "user", "content": "hi"}]
CHAT: dict[str, Any] = {"model": MODEL, "messages": HI, "max_tokens": 5}
NEVER = 3600.0
LIMIT = 1000


def _padded(size: int) -> bytes:
    """A valid chat request of exactly ``size`` bytes (padded with JSON whitespace)."""
    body = json.dumps(CHAT).encode()
    assert len(body) <= size
    return body[:-1] + b" " * (size - len(body)) + b"}"


# Body limit.


@pytest.fixture
async def limited(fake: FakeEngine, tiny: TinyModel) -> AsyncIterator[FastAPI]:
    async with serving(fake, tiny, max_request_body_bytes=LIMIT) as app:
        yield app


async def test_a_body_over_the_limit_is_413(limited: FastAPI, fake: FakeEngine) -> None:
    async with client(limited) as http:
        for size in (LIMIT + 1, 10 * LIMIT):
            response = await http.post(
                "/v1/chat/completions", content=_padded(size), headers={"content-type": "application/json"}
            )
            error = assert_openai_error(response, 413, "request_too_large")
            assert error["type"] == "invalid_request_error" and str(LIMIT) in error["message"]
            assert response.headers["x-should-retry"] == "false"
            assert len(response.headers["x-request-id"]) >= 16
        # At the limit, and just under it, the request is served.
        for size in (LIMIT, LIMIT - 1):
            response = await http.post(
                "/v1/chat/completions", content=_padded(size), headers={"content-type": "application/json"}
            )
            assert response.status_code == 200, response.text
            assert response.json()["choices"][0]["message"]["content"] == "Hello world!"
    assert len(fake.requests) == 2


def _raw_headers(**extra: bytes) -> list[tuple[bytes, bytes]]:
    return [(b"host", b"test"), (b"content-type", b"application/json"), *((k.encode(), v) for k, v in extra.items())]


async def test_a_chunked_body_over_the_limit_is_413(limited: FastAPI, fake: FakeEngine) -> None:
    """No Content-Length (a chunked upload): the body is counted as it arrives."""
    body = _padded(LIMIT + 1)
    pieces = [body[i : i + 100] for i in range(0, len(body), 100)]
    refused = await asgi_call(limited, "POST", b"/v1/chat/completions", headers=_raw_headers(), chunks=pieces)
    assert refused.status == 413
    assert refused.json()["error"]["code"] == "request_too_large"
    assert refused.headers["x-should-retry"] == "false"
    # A chunked body far larger than the limit is refused without reading all of it.
    endless = [b" " * 100] * 1000
    refused = await asgi_call(limited, "POST", b"/v1/chat/completions", headers=_raw_headers(), chunks=endless)
    assert refused.status == 413
    for size in (LIMIT, LIMIT - 1):
        body = _padded(size)
        served = await asgi_call(
            limited,
            "POST",
            b"/v1/chat/completions",
            headers=_raw_headers(),
            chunks=[body[i : i + 100] for i in range(0, len(body), 100)],
        )
        assert served.status == 200 and served.json()["choices"][0]["message"]["content"] == "Hello world!"
    assert len(fake.requests) == 2


async def test_a_declared_length_over_the_limit_is_413_before_the_body_is_parsed(limited: FastAPI) -> None:
    body = _padded(LIMIT * 2)
    refused = await asgi_call(
        limited,
        "POST",
        b"/v1/chat/completions",
        headers=_raw_headers(**{"content-length": str(len(body)).encode()}),
        chunks=[body[:500], body[500:]],
    )
    assert refused.status == 413 and refused.json()["error"]["code"] == "request_too_large"


async def test_the_default_limit_is_four_mib(http: httpx.AsyncClient) -> None:
    assert GatewayArgs().max_request_body_bytes == 4 * 1024 * 1024
    response = await http.post(
        "/v1/chat/completions", content=_padded(4 * 1024 * 1024 + 1), headers={"content-type": "application/json"}
    )
    assert_openai_error(response, 413, "request_too_large")


async def test_an_oversized_body_without_a_key_is_401(fake: FakeEngine, tiny: TinyModel) -> None:
    async with serving(fake, tiny, api_key=["k"], max_request_body_bytes=LIMIT) as app, client(app) as http:
        response = await http.post("/v1/chat/completions", content=_padded(LIMIT + 1))
        assert_openai_error(response, 401, "invalid_api_key")


# CORS.

ORIGIN = "https://app.example"
PREFLIGHT = {
    "origin": ORIGIN,
    "access-control-request-method": "POST",
    "access-control-request-headers": "authorization, content-type",
}


async def test_cors_is_off_by_default(http: httpx.AsyncClient) -> None:
    preflight = await http.options("/v1/chat/completions", headers=PREFLIGHT)
    assert preflight.status_code == 405  # an OPTIONS like any other: no route answers it
    assert not [h for h in preflight.headers if h.startswith("access-control-")]
    answer = await http.post("/v1/chat/completions", json=CHAT, headers={"origin": ORIGIN})
    assert answer.status_code == 200
    assert not [h for h in answer.headers if h.startswith("access-control-")]


@pytest.fixture
async def cors(fake: FakeEngine, tiny: TinyModel) -> AsyncIterator[FastAPI]:
    async with serving(fake, tiny, api_key=["k"], allowed_origins=[ORIGIN], requests_per_minute=100) as app:
        yield app


async def test_a_preflight_from_an_allowed_origin_needs_no_key(cors: FastAPI) -> None:
    async with client(cors) as anonymous:
        for path in ("/v1/chat/completions", "/v1/completions", "/v1/models"):
            preflight = await anonymous.options(path, headers=PREFLIGHT)
            assert preflight.status_code == 200, preflight.text
            assert preflight.headers["access-control-allow-origin"] == ORIGIN
            assert "POST" in preflight.headers["access-control-allow-methods"]
            allowed = preflight.headers["access-control-allow-headers"].lower()
            assert "authorization" in allowed and "content-type" in allowed
            assert "access-control-allow-credentials" not in preflight.headers
        # The request itself still needs the key; the browser may read why it failed.
        refused = await anonymous.post("/v1/chat/completions", json=CHAT, headers={"origin": ORIGIN})
        assert_openai_error(refused, 401, "invalid_api_key")
        assert refused.headers["access-control-allow-origin"] == ORIGIN
    async with client(cors, "k") as keyed:
        for stream in (False, True):
            answer = await keyed.post(
                "/v1/chat/completions", json={**CHAT, "stream": stream}, headers={"origin": ORIGIN}
            )
            assert answer.status_code == 200
            assert answer.headers["access-control-allow-origin"] == ORIGIN
            exposed = {h.strip() for h in answer.headers["access-control-expose-headers"].lower().split(",")}
            assert {"x-request-id", "retry-after", "x-ratelimit-remaining-requests"} <= exposed
            assert answer.headers["x-ratelimit-remaining-requests"].isdigit()


async def test_a_disallowed_origin_gets_no_cors_headers(cors: FastAPI) -> None:
    async with client(cors) as anonymous:
        preflight = await anonymous.options(
            "/v1/chat/completions", headers={**PREFLIGHT, "origin": "https://evil.example"}
        )
        assert preflight.status_code >= 400
        assert "access-control-allow-origin" not in preflight.headers
    async with client(cors, "k") as keyed:
        answer = await keyed.post("/v1/chat/completions", json=CHAT, headers={"origin": "https://evil.example"})
        assert answer.status_code == 200  # not a browser: served, but a browser may not read it
        assert "access-control-allow-origin" not in answer.headers
        for origin in ("https://app.example.evil.example", "http://app.example", "https://APP.example.", "null"):
            answer = await keyed.get("/v1/models", headers={"origin": origin})
            assert answer.headers.get("access-control-allow-origin") != origin


async def test_origins_as_a_json_list_or_commas_and_credentials(fake: FakeEngine, tiny: TinyModel) -> None:
    assert GatewayArgs(allowed_origins='["https://a.example", "https://b.example"]').allowed_origins == [
        "https://a.example",
        "https://b.example",
    ]
    assert GatewayArgs(allowed_origins="https://a.example, https://b.example").allowed_origins == [
        "https://a.example",
        "https://b.example",
    ]
    gateway: dict[str, Any] = {"allowed_origins": ["https://a.example", "https://b.example"], "allow_credentials": True}
    async with serving(fake, tiny, **gateway) as app, client(app) as http:
        for origin in ("https://a.example", "https://b.example"):
            preflight = await http.options("/v1/completions", headers={**PREFLIGHT, "origin": origin})
            assert preflight.headers["access-control-allow-origin"] == origin
            assert preflight.headers["access-control-allow-credentials"] == "true"


# x-should-retry: false where a retry cannot help, absent where it can.


async def test_permanent_errors_say_do_not_retry(http: httpx.AsyncClient, sdk: openai.AsyncOpenAI) -> None:
    for response, status in [
        (await http.post("/v1/chat/completions", json={**CHAT, "temperature": 5}), 400),
        (await http.post("/v1/chat/completions", content=b"{", headers={"content-type": "application/json"}), 400),
        (await http.post("/v1/chat/completions", json={**CHAT, "model": "nope"}), 404),
        (await http.get("/v1/nothing"), 404),
        (await http.get("/v1/chat/completions"), 405),
        (await http.post("/v1/chat/completions", json={**CHAT, "max_tokens": 10_000}), 400),
    ]:
        assert_openai_error(response, status)
        assert response.headers["x-should-retry"] == "false", (status, response.text)


async def test_a_rate_limit_and_a_failed_request_are_worth_a_retry(
    fake: FakeEngine, tiny: TinyModel, clock: Clock
) -> None:
    async with serving(fake, tiny, requests_per_minute=1) as app, client(app) as http:
        fake.script = lambda _: tiny.reply("Hello", " world", fail_at=1)  # this request fails alone: 500
        failed = await http.post("/v1/chat/completions", json=CHAT)
        assert_openai_error(failed, 500)
        assert "x-should-retry" not in failed.headers
        limited = await http.post("/v1/chat/completions", json=CHAT)
        assert_openai_error(limited, 429, "rate_limit_exceeded")
        assert "x-should-retry" not in limited.headers
        assert (await http.get("/health")).status_code == 200  # the engine lives on


async def test_a_dead_engine_says_do_not_retry(
    app: FastAPI, http: httpx.AsyncClient, fake: FakeEngine, tiny: TinyModel
) -> None:
    fake.script = lambda _: tiny.reply("Hello", " world", fail_at=1, failure="engine")
    dying = await http.post("/v1/chat/completions", json=CHAT)
    assert_openai_error(dying, 503, "engine_dead")
    assert dying.headers["x-should-retry"] == "false"
    for stream in (False, True):
        dead = await http.post("/v1/chat/completions", json={**CHAT, "stream": stream})
        assert_openai_error(dead, 503)
        assert dead.headers["x-should-retry"] == "false"
    health = await http.get("/health")
    assert_openai_error(health, 503, "engine_dead")
    assert health.headers["x-should-retry"] == "false"
    assert (await http.head("/health")).status_code == 503
    assert await metric(http, "ise_engine_alive") == 0
    requests = len(fake.requests)
    async with sdk_client(app, max_retries=2) as retrying:
        with pytest.raises(openai.InternalServerError):
            await retrying.chat.completions.create(model=MODEL, messages=HI)  # type: ignore[arg-type]
    assert len(fake.requests) == requests


async def test_every_dead_engine_503_says_engine_dead(
    http: httpx.AsyncClient, fake: FakeEngine, tiny: TinyModel
) -> None:
    fake.script = lambda _: tiny.reply("Hello", fail_at=0, failure="engine")
    assert_openai_error(await http.post("/v1/chat/completions", json=CHAT), 503, "engine_dead")
    assert_openai_error(await http.post("/v1/chat/completions", json=CHAT), 503, "engine_dead")


# Aborts, counted on /metrics by why.


def _stream_request(body: dict[str, Any]) -> bytes:
    return json.dumps({**body, "stream": True}).encode()


async def test_a_client_gone_mid_stream_is_counted(
    app: FastAPI, http: httpx.AsyncClient, fake: FakeEngine, tiny: TinyModel, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="ise.access")
    fake.script = lambda _: tiny.reply("Hello", " world", delays=[0.0, NEVER])
    hang_up = asyncio.Event()

    async def read(message: Message) -> None:
        if b'"content":"Hello"' in message.get("body", b""):
            hang_up.set()

    sent = await asgi_call(
        app,
        "POST",
        b"/v1/chat/completions",
        headers=_raw_headers(),
        chunks=[_stream_request(CHAT)],
        send=read,
        hang_up=hang_up,
    )
    assert sent.status == 200 and b"[DONE]" not in sent.body
    assert fake.aborted == [fake.requests[0].request_id]
    assert await metric(http, "ise_requests_aborted_total", reason="client_disconnect") == 1
    assert await metric(http, "ise_requests_aborted_total", reason="send_timeout") == 0
    assert await metric(http, "ise_requests_in_flight") == 0
    assert any("aborted=client_disconnect" in r.getMessage() for r in caplog.records if r.name == "ise.access")


async def test_a_client_gone_before_a_whole_answer_is_counted(
    app: FastAPI, http: httpx.AsyncClient, fake: FakeEngine, tiny: TinyModel
) -> None:
    hang_up = asyncio.Event()

    def script(_: Any) -> Any:
        hang_up.set()
        return tiny.reply("Hello", " world", delays=[0.0, NEVER])

    fake.script = script
    sent = await asgi_call(
        app,
        "POST",
        b"/v1/chat/completions",
        headers=_raw_headers(),
        chunks=[json.dumps(CHAT).encode()],
        hang_up=hang_up,
    )
    assert sent.status == 499
    assert fake.aborted == [fake.requests[0].request_id]
    assert await metric(http, "ise_requests_aborted_total", reason="client_disconnect") == 1


async def test_a_client_that_stops_reading_is_dropped_after_the_send_timeout(
    fake: FakeEngine, tiny: TinyModel, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="ise.access")
    fake.script = lambda _: tiny.reply("Hello", " world", delays=[0.0, NEVER])
    stalled = asyncio.Event()

    async def stop_reading(message: Message) -> None:
        if b'"content":"Hello"' in message.get("body", b""):
            stalled.set()
            await asyncio.Event().wait()  # the client's window is full: this send never completes

    async with serving(fake, tiny, stream_send_timeout=0.2) as app, client(app) as http:
        started = asyncio.get_running_loop().time()
        task = asyncio.create_task(
            asgi_call(
                app,
                "POST",
                b"/v1/chat/completions",
                headers=_raw_headers(),
                chunks=[_stream_request(CHAT)],
                send=stop_reading,
            )
        )
        await asyncio.wait_for(stalled.wait(), 5)
        await until(lambda: bool(fake.aborted))
        elapsed = asyncio.get_running_loop().time() - started
        assert 0.2 <= elapsed < 10
        assert fake.aborted == [fake.requests[0].request_id]
        assert await metric(http, "ise_requests_aborted_total", reason="send_timeout") == 1
        assert await metric(http, "ise_requests_aborted_total", reason="client_disconnect") == 0
        assert await metric(http, "ise_requests_in_flight") == 0
        await asyncio.wait_for(asyncio.gather(task, return_exceptions=True), 5)
    assert any("aborted=send_timeout" in r.getMessage() for r in caplog.records if r.name == "ise.access")
