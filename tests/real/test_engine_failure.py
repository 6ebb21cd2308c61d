"""An engine that dies mid-generation: in-flight requests end with an error, new ones get 503.

A real engine cannot be made to crash at a chosen step, so this test runs the real CPU engine
with its step wrapped to raise after a few steps. That is the only fake part: the model, the
server, uvicorn and the openai SDK are all real.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
import torch

from adapters.cpu.engine import CPUEngine, CPUEngineConfig
from server.app import create_app
from server.settings import Settings
from server.state import ServerState
from server.text import Tokenization
from tests.real.conftest import ServerHandle, serving_in_thread, user

CRASH_AFTER_STEPS = 5


class CrashingEngine(CPUEngine):
    def _step(self) -> list[tuple[str, object]]:  # type: ignore[override]
        if self.steps >= CRASH_AFTER_STEPS:
            raise RuntimeError("injected failure")
        return super()._step()  # type: ignore[return-value]


@pytest.fixture(scope="module")
def crashing_server(server: ServerHandle) -> Iterator[str]:
    model_dir: Path = server.model_dir
    engine = CrashingEngine(
        CPUEngineConfig(
            model_dir=model_dir,
            dtype=torch.float32,
            max_model_len=256,
            max_num_seqs=2,
            max_num_batched_tokens=256,
            threads=1,
            kv_cache_bytes=64 * 2**20,
            kernel_dir=Settings().cache_dir,
        )
    )
    app = create_app(ServerState(engine=engine, tokenization=Tokenization(model_dir), model_name="crashy"))
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
    assert health.status_code == 503
    assert health.json()["error"]["type"] == "service_unavailable"
