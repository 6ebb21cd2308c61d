"""A request that fails inside the engine fails alone: the engine and every other request go on.

Every value the API accepts is bounded at the edge, so no real request can make sampling fail
any more; to prove the second wall, this server's sampler is made to raise for one chosen seed.
That is the only fake part: the engine loop, the model, the server, uvicorn and the openai SDK
are all real. The seeding wall is tried with a real value torch refuses, sent to the engine
directly, since the API refuses it first.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import httpx
import openai
import pytest
import torch

from adapters.cpu.engine import CPUEngine
from adapters.cpu.engine_core import CPUEngineConfig, EngineCore
from adapters.cpu.sampler import Sampler
from adapters.cpu.sequence import Sequence
from adapters.engine import EngineRequest, RequestFailedError, SamplingParams
from server.endpoints.state import ServerState
from server.runtime.app import create_app
from server.text.tokenization import Tokenization
from tests.real.helpers import ServerHandle, cpu_engine, serving_in_thread, user

POISON_SEED = 666
MODEL = "isolated"
STORY = user("Tell me a long story about a lighthouse keeper.")


class PoisonedSampler(Sampler):
    def _sample_row(self, row: torch.Tensor, seq: Sequence, draft: int | None) -> int:
        if seq.request.params.seed == POISON_SEED:
            raise RuntimeError("injected sampling failure")
        return super()._sample_row(row, seq, draft)


class PoisonedCore(EngineCore):
    def __init__(self, config: CPUEngineConfig) -> None:
        super().__init__(config)
        self.runner.sampler = PoisonedSampler(config.model.eos_token_ids)


@pytest.fixture(scope="module")
def isolated(server: ServerHandle) -> Iterator[tuple[str, CPUEngine]]:
    engine = cpu_engine(
        server.model_dir, PoisonedCore, max_model_len=512, max_num_seqs=8, threads=1, kv_cache_gib=1 / 16
    )
    app = create_app(ServerState(engine=engine, tokenization=Tokenization(server.model_dir), model_name=MODEL))
    with serving_in_thread(app) as root:
        yield root, engine


def test_failed_request_leaves_others_and_engine_running(isolated: tuple[str, CPUEngine]) -> None:
    root, engine = isolated
    client = openai.OpenAI(base_url=f"{root}/v1", api_key="unused", max_retries=0, timeout=120)
    healthy: list[str] = []
    finish: list[str | None] = []

    def bystander() -> None:
        stream = client.chat.completions.create(
            model=MODEL,
            messages=STORY,
            max_tokens=48,
            temperature=0.8,
            seed=1,
            stream=True,
            extra_body={"ignore_eos": True},
        )
        for chunk in stream:
            if chunk.choices:
                healthy.append(chunk.choices[0].delta.content or "")
                finish.append(chunk.choices[0].finish_reason)

    thread = threading.Thread(target=bystander)
    thread.start()
    poisoned = client.chat.completions.create(
        model=MODEL, messages=STORY, max_tokens=32, temperature=0.8, seed=POISON_SEED, stream=True
    )
    with pytest.raises(openai.APIError) as streamed:
        for _ in poisoned:
            pass
    assert "sampling failed" in streamed.value.message.lower()
    with pytest.raises(openai.InternalServerError) as whole:
        client.chat.completions.create(model=MODEL, messages=STORY, max_tokens=8, temperature=0.8, seed=POISON_SEED)
    assert whole.value.status_code == 500
    assert "sampling failed" in whole.value.message.lower()
    thread.join(timeout=120)
    assert finish[-1] == "length", "the other client's stream did not finish normally"
    assert "".join(healthy)
    assert httpx.get(f"{root}/health", timeout=10).status_code == 200
    after = client.chat.completions.create(model=MODEL, messages=user("Say hi."), max_tokens=4, temperature=0.8, seed=2)
    assert after.choices[0].finish_reason in ("stop", "length")
    assert engine.stats().running == 0 and engine.stats().kv_blocks_used == 0


async def test_refused_seed_fails_the_request_not_the_engine(isolated: tuple[str, CPUEngine]) -> None:
    _, engine = isolated
    request = EngineRequest("bad-seed", [1, 2, 3], SamplingParams(max_tokens=4, temperature=1.0, seed=2**64))
    with pytest.raises(RequestFailedError, match="could not be set up"):
        await anext(engine.generate(request))
    assert engine.is_alive
