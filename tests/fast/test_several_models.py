"""One server, two models: a chat model (the scripted engine) and an embedding model (a tiny real BERT).

Requests go to the model their ``model`` field names; /v1/models, /health and /metrics show each;
one model's engine dying leaves the other serving.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from adapters.embedding.config import EmbeddingSpec
from adapters.embedding.engine import CPUEmbeddingEngine
from adapters.model_info import ModelInfo
from server.config.command_line import split_serve_args
from server.config.settings import ModelEntry, Settings
from server.endpoints import state as state_module
from server.endpoints.state import Models, ServerState, build_models
from server.gateway.options import GatewayArgs
from server.runtime.app import create_app
from server.text.tokenization import Tokenization
from tests.fast.fake_engine import FakeEngine
from tests.fast.helpers import client
from tests.fast.tiny_embedding_model import build_embedding_model_dir
from tests.fast.tiny_model import MODEL, TinyModel
from tests.helpers import metric_sample

EMBED = "tiny-embed"
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
EMBEDDING = {"model": EMBED, "input": ["hello world", "paris"]}


@pytest.fixture(scope="module")
def embed_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_embedding_model_dir(tmp_path_factory.mktemp("embed"))


def _embedding_state(path: Path, name: str = EMBED, options: GatewayArgs | None = None) -> ServerState:
    info = ModelInfo.load(path)
    engine = CPUEmbeddingEngine(path, EmbeddingSpec.load(path, info.context_length))
    tokenization = Tokenization(path, info.vocab_size)
    return ServerState(engine=engine, tokenization=tokenization, model_name=name, gateway_args=options or GatewayArgs())


@pytest.fixture
async def two(fake: FakeEngine, tiny: TinyModel, embed_dir: Path) -> AsyncIterator[FastAPI]:
    chat = ServerState(engine=fake, tokenization=tiny.tokenization, model_name=MODEL, aliases=("chat",))
    app = create_app(Models([chat, _embedding_state(embed_dir)]))
    async with app.router.lifespan_context(app):
        yield app


@pytest.fixture
async def http(two: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with client(two) as http:
        yield http


async def test_requests_go_to_the_model_they_name(http: httpx.AsyncClient) -> None:
    chat = await http.post("/v1/chat/completions", json=CHAT)
    assert chat.status_code == 200 and chat.json()["choices"][0]["message"]["content"] == "Hello world!"
    alias = await http.post("/v1/chat/completions", json={**CHAT, "model": "chat"})
    assert alias.status_code == 200 and alias.json()["model"] == "chat"
    embedded = await http.post("/v1/embeddings", json=EMBEDDING)
    assert embedded.status_code == 200 and len(embedded.json()["data"]) == 2
    wrong_kind = await http.post("/v1/embeddings", json={**EMBEDDING, "model": MODEL})
    assert wrong_kind.status_code == 400 and "is a generative" in wrong_kind.json()["error"]["message"]
    chat_to_embedder = await http.post("/v1/chat/completions", json={**CHAT, "model": EMBED})
    assert chat_to_embedder.status_code == 400 and "is an embedding model" in chat_to_embedder.text
    for path, body in (("/v1/chat/completions", CHAT), ("/v1/embeddings", EMBEDDING)):
        unknown = await http.post(path, json={**body, "model": "nope"})
        assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "model_not_found"


async def test_models_lists_each_with_what_it_does(http: httpx.AsyncClient, tiny: TinyModel) -> None:
    cards = {card["id"]: card for card in (await http.get("/v1/models")).json()["data"]}
    assert set(cards) == {MODEL, "chat", EMBED}
    assert cards[MODEL]["capabilities"] == ["chat", "completion"]
    assert cards[MODEL]["max_model_len"] == tiny.info.context_length
    assert cards[EMBED]["capabilities"] == ["embedding", "score", "rerank"]
    assert cards[EMBED]["max_model_len"] == 24
    one = await http.get(f"/v1/models/{EMBED}")
    assert one.status_code == 200 and one.json()["capabilities"][0] == "embedding"
    assert (await http.get("/v1/models/nope")).status_code == 404


async def test_one_engine_dying_leaves_the_other_serving(http: httpx.AsyncClient, fake: FakeEngine) -> None:
    healthy = await http.get("/health")
    assert healthy.json() == {"status": "ok", "models": {MODEL: "ok", "chat": "ok", EMBED: "ok"}}
    await fake.shutdown()
    health = await http.get("/health")
    assert health.status_code == 200
    assert health.json() == {"status": "degraded", "models": {MODEL: "engine_dead", "chat": "engine_dead", EMBED: "ok"}}
    chat = await http.post("/v1/chat/completions", json=CHAT)
    assert chat.status_code == 503 and chat.json()["error"]["code"] == "engine_dead"
    assert (await http.post("/v1/embeddings", json=EMBEDDING)).status_code == 200


async def test_metrics_label_each_models_series(http: httpx.AsyncClient) -> None:
    await http.post("/v1/embeddings", json=EMBEDDING)
    text = (await http.get("/metrics")).text
    assert metric_sample(text, "ise_engine_alive", model_name=MODEL) == 1
    assert metric_sample(text, "ise_engine_alive", model_name=EMBED) == 1
    assert metric_sample(text, "vllm:request_success_total", model_name=EMBED, engine="0", finished_reason="stop") == 1
    assert text.count("# TYPE process_cpu_seconds_total") == 1
    assert text.count("# TYPE ise_engine_alive") == 1


def test_two_models_under_one_name_are_refused(embed_dir: Path) -> None:
    with pytest.raises(ValueError, match="two models are served as `same`"):
        Models([_embedding_state(embed_dir, "same"), _embedding_state(embed_dir, "same")])


def test_several_models_on_the_command_line_and_in_toml(tmp_path: Path) -> None:
    split = split_serve_args(["--model", "a", "--dtype", "float32", "--model", "b", "c"], Settings.cli_flags())
    settings = Settings.load(split.ise)
    assert settings.model == "a" and [m.model for m in settings.models] == ["b", "c"]
    config = tmp_path / "two.toml"
    config.write_text(
        'model = "SmolLM2-135M-Instruct"\nkv_cache_gib = 1.5\n\n'
        '[[models]]\nmodel = "all-MiniLM-L6-v2"\nserved_model_name = ["embed", "minilm"]\n'
        "max_num_batched_tokens = 4096\n"
    )
    settings = Settings.load(["--config", str(config)])
    assert settings.models == [
        ModelEntry(model="all-MiniLM-L6-v2", served_model_name=["embed", "minilm"], max_num_batched_tokens=4096)
    ]


def test_each_model_takes_its_own_options_over_the_servers(tmp_path: Path) -> None:
    first, second = build_embedding_model_dir(tmp_path / "a"), build_embedding_model_dir(tmp_path / "b")
    entry = {"model": str(second), "served_model_name": ["b", "bee"], "max_num_batched_tokens": 64}
    settings = Settings.load(["--model", str(first), "--batch-window-ms", "7", "--models", json.dumps([entry])])
    models = build_models(settings)
    a, b = models.states
    assert a.model_names == (str(first),) and b.model_names == ("b", "bee")
    assert isinstance(a.engine, CPUEmbeddingEngine) and isinstance(b.engine, CPUEmbeddingEngine)
    assert (a.engine.max_batch_tokens, b.engine.max_batch_tokens) == (2048, 64)
    assert a.engine.batch_window_s == b.engine.batch_window_s == 0.007  # the server's, where the entry is silent


def test_models_that_need_more_memory_than_available_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, second = build_embedding_model_dir(tmp_path / "a"), build_embedding_model_dir(tmp_path / "b")
    settings = Settings.load(["--model", str(first), "--models", json.dumps([{"model": str(second)}])])
    monkeypatch.setattr(state_module, "_available_memory", lambda: 1000)
    with pytest.raises(ValueError, match=r"more than the 0.00 GiB available: lower a model's kv_cache_gib"):
        build_models(settings)


async def test_a_keys_rate_limit_counts_its_requests_to_every_model(
    fake: FakeEngine, tiny: TinyModel, embed_dir: Path
) -> None:
    """Two requests a minute for the key: one to the chat model, one to the embedder, and the third,
    to either, is over the key's limit (not a second allowance per model)."""
    options = GatewayArgs(api_key=["sk-one"], requests_per_minute=2)
    chat = ServerState(engine=fake, tokenization=tiny.tokenization, model_name=MODEL, gateway_args=options)
    app = create_app(Models([chat, _embedding_state(embed_dir, options=options)]))
    headers = {"Authorization": "Bearer sk-one"}
    async with app.router.lifespan_context(app), client(app) as http:
        first = await http.post("/v1/chat/completions", json=CHAT, headers=headers)
        second = await http.post("/v1/embeddings", json=EMBEDDING, headers=headers)
        third = await http.post("/v1/embeddings", json=EMBEDDING, headers=headers)
    assert (first.status_code, second.status_code, third.status_code) == (200, 200, 429)
    assert second.headers["x-ratelimit-remaining-requests"] == "0"


async def test_score_and_rerank_without_a_model_go_to_the_embedding_model(http: httpx.AsyncClient) -> None:
    """vLLM's score and rerank make ``model`` optional: left out, the embedding model answers, not
    the chat model served first."""
    rerank = await http.post("/v1/rerank", json={"query": "paris", "documents": ["paris", "hello world"]})
    assert rerank.status_code == 200, rerank.text
    assert [r["index"] for r in rerank.json()["results"]] == [0, 1]
    score = await http.post("/v1/score", json={"text_1": "paris", "text_2": ["paris", "hello world"]})
    assert score.status_code == 200, score.text
    chat = await http.post("/v1/chat/completions", json={"messages": CHAT["messages"]})
    assert chat.status_code == 400  # chat's model is required, as OpenAI's
