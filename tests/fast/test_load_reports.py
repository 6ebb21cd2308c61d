"""Load reports for routers: vLLM's ORCA header when a request asks for it, and ``GET /load``."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from adapters.engine import EngineStats
from tests.fast.fake_engine import FakeEngine
from tests.fast.helpers import chat_request, text_request, until
from tests.fast.tiny_model import TinyModel

LOADED = EngineStats(running=2, waiting=3, kv_blocks_used=1, kv_blocks_total=4)


@pytest.fixture
def loaded(fake: FakeEngine, monkeypatch: pytest.MonkeyPatch) -> FakeEngine:
    monkeypatch.setattr(fake, "stats", lambda: LOADED)
    return fake


@pytest.mark.usefixtures("loaded")
@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions"])
async def test_the_orca_header_answers_in_the_format_asked(http: httpx.AsyncClient, path: str) -> None:
    body = chat_request() if "chat" in path else text_request()
    text = await http.post(path, json=body, headers={"endpoint-load-metrics-format": "TEXT"})
    assert text.headers["endpoint-load-metrics"] == (
        "TEXT named_metrics.num_requests_waiting=3.0, named_metrics.kv_cache_usage_perc=0.25"
    )
    as_json = await http.post(path, json=body, headers={"endpoint-load-metrics-format": "json"})
    kind, report = as_json.headers["endpoint-load-metrics"].split(" ", 1)
    assert kind == "JSON"
    assert json.loads(report) == {"named_metrics": {"num_requests_waiting": 3.0, "kv_cache_usage_perc": 0.25}}
    # A stream's headers carry the load as it starts.
    streamed = await http.post(path, json={**body, "stream": True}, headers={"endpoint-load-metrics-format": "text"})
    assert streamed.headers["endpoint-load-metrics"].startswith("TEXT named_metrics.num_requests_waiting=3.0")


@pytest.mark.usefixtures("loaded")
async def test_no_header_unless_asked_in_a_known_format(http: httpx.AsyncClient) -> None:
    plain = await http.post("/v1/chat/completions", json=chat_request())
    assert "endpoint-load-metrics" not in plain.headers
    unknown = await http.post(
        "/v1/chat/completions", json=chat_request(), headers={"endpoint-load-metrics-format": "xml"}
    )
    assert unknown.status_code == 200 and "endpoint-load-metrics" not in unknown.headers


async def test_load_counts_requests_in_flight(http: httpx.AsyncClient, fake: FakeEngine, tiny: TinyModel) -> None:
    idle = await http.get("/load")
    assert idle.json() == {
        "server_load": 0,
        "num_requests_running": 0,
        "num_requests_waiting": 0,
        "kv_cache_usage_perc": 0.0,
    }
    gate = asyncio.Event()
    fake.script = lambda _: tiny.reply("Hello", " world", gates={1: gate})
    pending = [asyncio.create_task(http.post("/v1/chat/completions", json=chat_request())) for _ in range(2)]
    await until(lambda: len(fake.emitted) == 2)
    busy = (await http.get("/load")).json()
    assert (busy["server_load"], busy["num_requests_running"]) == (2, 2)
    gate.set()
    await asyncio.gather(*pending)
    assert (await http.get("/load")).json()["server_load"] == 0
