"""vLLM's server options that ise honours under vLLM's names, as a deployment that sets them sees them:
usage on every stream, no API docs, quiet probe paths, prompts logged up to a length."""

from __future__ import annotations

import json
import logging

import pytest

from server.endpoints.state import ServerState
from server.runtime.app import create_app
from server.text.options import ApiArgs
from tests.fast.fake_engine import FakeEngine
from tests.fast.helpers import client, serving
from tests.fast.tiny_model import MODEL, TinyModel
from tests.helpers import sse_payloads

CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "Say hello to the user"}], "stream": True}


async def test_force_include_usage_ends_every_stream_with_usage(fake: FakeEngine, tiny: TinyModel) -> None:
    state = ServerState(
        engine=fake, tokenization=tiny.tokenization, model_name=MODEL, api=ApiArgs(enable_force_include_usage=True)
    )
    app = create_app(state)
    async with app.router.lifespan_context(app), client(app) as http:
        events = sse_payloads((await http.post("/v1/chat/completions", json=CHAT)).text)
        whole = (await http.post("/v1/chat/completions", json={**CHAT, "stream": False})).json()
    *chunks, usage, done = events
    assert done == "[DONE]"
    last = json.loads(usage)
    assert last["choices"] == [] and last["usage"].pop("server_timing")["total"] > 0  # ise's timings beside usage
    assert last["usage"] == whole["usage"]
    assert all(json.loads(chunk)["usage"] is None for chunk in chunks)


async def test_disable_fastapi_docs_serves_no_docs(fake: FakeEngine, tiny: TinyModel) -> None:
    async with serving(fake, tiny, disable_fastapi_docs=True) as app, client(app) as http:
        for path in ("/docs", "/redoc", "/openapi.json"):
            assert (await http.get(path)).status_code == 404
        assert (await http.get("/v1/models")).status_code == 200
    async with serving(fake, tiny) as app, client(app) as http:
        assert (await http.get("/openapi.json")).status_code == 200


async def test_quiet_paths_get_no_log_line_and_prompts_are_cut_to_max_log_len(
    fake: FakeEngine, tiny: TinyModel, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    quiet = "/health,/metrics"
    async with (
        serving(fake, tiny, disable_access_log_for_endpoints=quiet, log_prompts=True, max_log_len=12) as app,
        client(app) as http,
    ):
        for path in ("/health", "/metrics", "/v1/models"):
            assert (await http.get(path)).status_code == 200
        await http.post("/v1/chat/completions", json={**CHAT, "stream": False})
    logged = [r.getMessage() for r in caplog.records if r.name == "ise.access"]
    assert [line.split()[1] for line in logged] == ["/v1/models", "/v1/chat/completions"]
    [prompt] = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Prompt: ")]
    assert prompt == "Prompt: [{'role': 'u"  # 12 characters of the prompt's repr
