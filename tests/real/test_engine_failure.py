"""An engine that dies mid-generation: in-flight requests end with an error, new ones get 503.

A real engine cannot be made to crash at a chosen step, so this test runs the real CPU engine
with its core's step made to raise after a few steps. That is the only fake part: the model, the
server, uvicorn and the openai SDK are all real.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import openai
import pytest

from adapters.cpu.engine_core import EngineCore
from adapters.cpu.scheduler import EngineCoreOutputs
from server.endpoints.state import ServerState
from server.runtime.app import create_app
from server.text.tokenization import Tokenization
from tests.helpers import assert_openai_error
from tests.real.helpers import ServerHandle, cpu_engine, serving_in_thread, user

CRASH_AFTER_STEPS = 5


class CrashingCore(EngineCore):
    def step(self) -> EngineCoreOutputs:
        if self.steps >= CRASH_AFTER_STEPS:
            raise RuntimeError("injected failure")
        return super().step()


@pytest.fixture(scope="module")
def crashing_server(server: ServerHandle) -> Iterator[str]:
    engine = cpu_engine(
        server.model_dir, CrashingCore, max_model_len=256, max_num_seqs=2, threads=1, kv_cache_gib=1 / 16
    )
    app = create_app(ServerState(engine=engine, tokenization=Tokenization(server.model_dir), model_name="crashy"))
    with serving_in_thread(app) as root:
        yield root


def test_crash_fails_requests_cleanly(crashing_server: str) -> None:
    client = openai.OpenAI(base_url=f"{crashing_server}/v1", api_key="unused", max_retries=0, timeout=60)
    stream = client.chat.completions.create(
        model="crashy", messages=user("Tell me a story."), max_tokens=100, stream=True
    )
    with pytest.raises(openai.APIError) as caught:
        for _ in stream:
            pass
    assert "engine" in str(caught.value.message).lower()
    with pytest.raises(openai.InternalServerError) as unavailable:
        client.chat.completions.create(model="crashy", messages=user("Hello?"), max_tokens=5)
    assert unavailable.value.status_code == 503
    health = httpx.get(f"{crashing_server}/health", timeout=10)
    assert assert_openai_error(health, 503)["type"] == "service_unavailable"
