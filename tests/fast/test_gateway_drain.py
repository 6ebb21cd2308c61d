"""Drain: once ``ise serve`` is told to stop, health fails and new requests are refused at once,
the running ones finish within ``--drain-timeout``, and what outlives it ends with an error.

The SIGTERM tests drive ``DrainingServer``, the uvicorn server ``ise serve`` runs, as its signal
handler would; tests/real/test_gateway_drain.py sends a real SIGTERM to a real process.
"""

from __future__ import annotations

import asyncio
import json
import signal

import httpx
import uvicorn
from fastapi import FastAPI

from server.gateway.drain import DrainingServer
from server.protocol.errors import APIError
from tests.fast.fake_engine import FakeEngine
from tests.fast.helpers import assert_refused, chat_request, client, metric, serving, state_of, text_request, until
from tests.fast.tiny_model import TinyModel
from tests.helpers import sse_payloads


async def test_draining_refuses_new_requests_and_fails_health(app: FastAPI, http: httpx.AsyncClient) -> None:
    state_of(app).gateway.admission.draining = True
    health = await http.get("/health")
    assert_refused(health, 503, "server_shutting_down")
    for path, body in [("/v1/completions", text_request()), ("/v1/chat/completions", chat_request())]:
        for stream in (False, True):
            refused = await http.post(path, json={**body, "stream": stream})
            assert_refused(refused, 503, "server_shutting_down")
            assert int(refused.headers["retry-after"]) >= 1
            assert "x-should-retry" not in refused.headers  # another replica may take it
    assert await metric(http, "ise_draining") == 1
    assert await metric(http, "ise_requests_rejected_total", reason="server_shutting_down") == 4
    assert (await http.get("/v1/models")).status_code == 200  # the rest of the API still answers


async def test_end_all_ends_a_stream_with_an_error_event_then_done(
    app: FastAPI, http: httpx.AsyncClient, fake: FakeEngine, tiny: TinyModel
) -> None:
    second = asyncio.Event()
    fake.script = lambda _: tiny.reply("Hello", " world", gates={1: second})
    running = asyncio.create_task(http.post("/v1/chat/completions", json=chat_request(stream=True)))
    await until(lambda: len(fake.emitted) == 1)
    admission = state_of(app).gateway.admission
    ended = admission.end_all(
        APIError(503, "The server shut down before the request finished.", code="server_shutting_down")
    )
    assert ended == 1
    response = await running
    assert response.status_code == 200
    events = sse_payloads(response.text)
    assert json.loads(events[1])["choices"][0]["delta"]["content"] == "Hello"
    assert json.loads(events[-2]) == {
        "error": {
            "message": "The server shut down before the request finished.",
            "type": "service_unavailable",
            "param": None,
            "code": "server_shutting_down",
        }
    }
    assert events[-1] == "[DONE]"
    assert fake.aborted == [fake.requests[0].request_id]
    assert not admission.tickets


async def test_end_all_ends_a_whole_request_with_503(
    app: FastAPI, http: httpx.AsyncClient, fake: FakeEngine, tiny: TinyModel
) -> None:
    gate = asyncio.Event()
    fake.script = lambda _: tiny.reply("Hello", " world", gates={0: gate})
    running = asyncio.create_task(http.post("/v1/completions", json=text_request()))
    await until(lambda: len(fake.requests) == 1)
    state_of(app).gateway.admission.end_all(APIError(503, "The server shut down.", code="server_shutting_down"))
    assert_refused(await running, 503, "server_shutting_down")
    assert fake.aborted == [fake.requests[0].request_id]


async def test_sigterm_lets_running_requests_finish(fake: FakeEngine, tiny: TinyModel) -> None:
    """``ise serve``'s server on SIGTERM: health fails and new requests are refused at once, while the
    requests already running finish, whole and streamed; then the server exits."""
    quick, slow = asyncio.Event(), asyncio.Event()
    replies = iter([tiny.reply("Hello", gates={0: quick}), tiny.reply("Hello", " world", gates={1: slow})])
    fake.script = lambda _: next(replies)
    # A drain timeout no loaded machine reaches: this test is about what happens inside it.
    async with serving(fake, tiny, drain_timeout=600.0) as app, client(app) as http:
        state = state_of(app)
        finishing = asyncio.create_task(http.post("/v1/completions", json=text_request()))
        streaming = asyncio.create_task(http.post("/v1/chat/completions", json=chat_request(stream=True)))
        await until(lambda: len(fake.requests) == 2)
        server = _sigterm(app)
        await until(lambda: server._drain is not None)
        assert state.gateway.admission.draining and not server.should_exit
        assert (await http.get("/health")).status_code == 503
        assert_refused(await http.post("/v1/completions", json=text_request()), 503, "server_shutting_down")
        quick.set()
        assert (await finishing).json()["choices"][0]["text"] == "Hello"
        assert not server.should_exit
        slow.set()
        events = sse_payloads((await streaming).text)
        assert "".join(json.loads(e)["choices"][0]["delta"].get("content", "") for e in events[:-1]) == "Hello world"
        assert server._drain is not None
        await asyncio.wait_for(server._drain, 10)
        assert server.should_exit
        assert await metric(http, "ise_requests_aborted_total", reason="shutdown") == 0


async def test_sigterm_ends_what_outlives_the_drain_timeout(fake: FakeEngine, tiny: TinyModel) -> None:
    """A stream still running when --drain-timeout ends gets a final error event and [DONE]."""
    fake.script = lambda _: tiny.reply("Hello", " world", gates={1: asyncio.Event()})
    async with serving(fake, tiny, drain_timeout=0.05) as app, client(app) as http:
        stuck = asyncio.create_task(http.post("/v1/chat/completions", json=chat_request(stream=True)))
        await until(lambda: len(fake.requests) == 1)
        server = _sigterm(app)
        await until(lambda: server._drain is not None)
        assert server._drain is not None
        await asyncio.wait_for(server._drain, 10)
        assert server.should_exit
        events = sse_payloads((await stuck).text)
        assert json.loads(events[-2])["error"]["code"] == "server_shutting_down" and events[-1] == "[DONE]"
        assert await metric(http, "ise_requests_aborted_total", reason="shutdown") == 1
        assert await metric(http, "ise_requests_in_flight") == 0


def _sigterm(app: FastAPI) -> DrainingServer:
    """The server ``ise serve`` runs, sent SIGTERM as its signal handler would receive it."""
    server = DrainingServer(uvicorn.Config(app), state_of(app).gateway)
    server._loop = asyncio.get_running_loop()  # as its startup records it
    server.handle_exit(signal.SIGTERM, None)
    return server


async def test_a_second_sigterm_stops_at_once(app: FastAPI) -> None:
    server = _sigterm(app)
    assert state_of(app).gateway.admission.draining and not server.should_exit
    server.handle_exit(signal.SIGTERM, None)
    assert server.should_exit
    await until(lambda: server._drain is not None)
    assert server._drain is not None
    await asyncio.wait_for(server._drain, 5)
