"""Embeddings, scores and rerank in process, on a tiny real BERT run by the real embedding engine.

The vectors are checked against sentence-transformers' own reading of the same directory, for each
pooling mode; the API's shapes and refusals as an OpenAI client meets them.
"""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from fastapi import FastAPI
from sentence_transformers import SentenceTransformer

from adapters.config import EngineArgs
from adapters.embedding.batching import pack, padded_tokens
from adapters.embedding.config import EmbeddingSpec, is_embedding_model
from adapters.embedding.engine import CPUEmbeddingEngine
from adapters.factory import build_embedder
from adapters.model_info import ModelInfo
from server.endpoints.state import ServerState
from server.gateway.options import GatewayArgs
from server.protocol.embeddings import MAX_EMBEDDING_INPUTS
from server.runtime.app import create_app
from server.text.tokenization import Tokenization
from tests.fast.fake_engine import FakeEngine
from tests.fast.helpers import client, sdk_client
from tests.fast.tiny_embedding_model import DIMENSIONS, MAX_SEQ_LENGTH, WORDS, build_embedding_model_dir
from tests.fast.tiny_model import MODEL, TinyModel

EMBED = "tiny-embed"
TEXTS = ["hello world", "the quick brown fox jumps over the lazy dog", "paris", "paris is the capital of france"]


def _engine(path: Path, **kwargs: float) -> CPUEmbeddingEngine:
    info = ModelInfo.load(path)
    return CPUEmbeddingEngine(path, EmbeddingSpec.load(path, info.context_length), **kwargs)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_embedding_model_dir(tmp_path_factory.mktemp("tiny-embed"))


def _app(path: Path, gateway: GatewayArgs | None = None) -> FastAPI:
    info = ModelInfo.load(path)
    state = ServerState(
        engine=_engine(path),
        tokenization=Tokenization(path, info.vocab_size),
        model_name=EMBED,
        gateway_args=gateway or GatewayArgs(),
    )
    return create_app(state)


@pytest.fixture
async def http(model_dir: Path) -> AsyncIterator[httpx.AsyncClient]:
    app = _app(model_dir)
    async with app.router.lifespan_context(app), client(app) as http:
        yield http


def _reference(path: Path, texts: list[str]) -> np.ndarray:
    model = SentenceTransformer(str(path), device="cpu")
    vectors: np.ndarray = model.encode(texts, convert_to_numpy=True)
    return vectors


# Packing


def test_packing_sorts_by_length_and_keeps_each_pass_within_the_budget() -> None:
    lengths = [50, 3, 48, 4, 5, 49, 2, 51]
    passes = pack(lengths, token_budget=160)
    assert sorted(i for p in passes for i in p) == list(range(len(lengths)))
    for p in passes:
        assert max(lengths[i] for i in p) * len(p) <= 160
    # The short inputs share a pass; the long ones are not padded into it.
    assert sorted(passes[0]) == [1, 3, 4, 6]
    arrival_order = [list(range(i, min(i + 3, len(lengths)))) for i in range(0, len(lengths), 3)]
    assert padded_tokens(lengths, passes) < padded_tokens(lengths, arrival_order)


def test_an_input_longer_than_the_budget_runs_alone() -> None:
    assert pack([300, 5, 6], token_budget=100) == [[1, 2], [0]]


# Configuration


@pytest.mark.parametrize("pooling", ["mean", "cls", "max", "lasttoken"])
async def test_vectors_match_sentence_transformers_for_each_pooling_mode(tmp_path: Path, pooling: str) -> None:
    path = build_embedding_model_dir(tmp_path / pooling, pooling=pooling, normalize=pooling != "max")
    engine = _engine(path)
    await engine.start()
    try:
        tokenizer = Tokenization(path).hf
        ids = [tokenizer(text)["input_ids"] for text in TEXTS]
        ours = np.stack(await engine.embed(ids))
    finally:
        await engine.shutdown()
    np.testing.assert_allclose(ours, _reference(path, TEXTS), atol=1e-5)
    norms = np.linalg.norm(ours, axis=1)
    assert np.allclose(norms, 1.0, atol=1e-5) == (pooling != "max")


def test_the_spec_is_read_from_the_modules(model_dir: Path, tmp_path: Path) -> None:
    spec = EmbeddingSpec.load(model_dir, 64)
    assert (spec.pooling, spec.normalize, spec.dimensions, spec.max_seq_length) == ("mean", True, 16, MAX_SEQ_LENGTH)
    assert is_embedding_model(model_dir)
    assert not is_embedding_model(tmp_path)
    dense = build_embedding_model_dir(tmp_path / "dense")
    modules = (dense / "modules.json").read_text()
    (dense / "modules.json").write_text(modules.replace("models.Normalize", "models.Dense"))
    with pytest.raises(ValueError, match="Dense"):
        EmbeddingSpec.load(dense, 64)


def test_matryoshka_models_declare_their_sizes_in_config_json(tmp_path: Path) -> None:
    trained = build_embedding_model_dir(tmp_path / "m", config_extra={"matryoshka_dimensions": [16, 8, 4]})
    spec = EmbeddingSpec.load(trained, 64)
    assert spec.check_dimensions(8) is None
    assert spec.check_dimensions(5) is not None
    any_size = EmbeddingSpec.load(build_embedding_model_dir(tmp_path / "a", config_extra={"is_matryoshka": True}), 64)
    assert any_size.check_dimensions(5) is None
    assert any_size.check_dimensions(17) is not None


# Dynamic batching


async def test_concurrent_requests_share_forward_passes_and_get_their_solo_vectors(model_dir: Path) -> None:
    engine = _engine(model_dir, batch_window_s=0.05)
    await engine.start()
    try:
        tokenizer = Tokenization(model_dir).hf
        ids = [tokenizer(text)["input_ids"] for text in TEXTS * 4]
        solo = [(await engine.embed([i]))[0] for i in ids]
        steps = engine.stats().steps
        together = await asyncio.gather(*(engine.embed([i]) for i in ids))
        passes = engine.stats().steps - steps
    finally:
        await engine.shutdown()
    assert passes < len(ids) / 2, passes  # 16 requests in a window of 50 ms: a few passes, not 16
    for alone, shared in zip(solo, together, strict=True):
        np.testing.assert_allclose(alone, shared[0], atol=1e-5)


# The HTTP API


async def test_embeddings_in_float_and_base64_agree_with_sentence_transformers(
    http: httpx.AsyncClient, model_dir: Path
) -> None:
    floats = await http.post("/v1/embeddings", json={"model": EMBED, "input": TEXTS})
    assert floats.status_code == 200, floats.text
    body = floats.json()
    assert body["object"] == "list" and body["model"] == EMBED
    assert [d["index"] for d in body["data"]] == [0, 1, 2, 3]
    assert {d["object"] for d in body["data"]} == {"embedding"}
    vectors = np.array([d["embedding"] for d in body["data"]])
    assert vectors.shape == (len(TEXTS), DIMENSIONS)
    np.testing.assert_allclose(vectors, _reference(model_dir, TEXTS), atol=1e-5)
    tokens = sum(len(Tokenization(model_dir).hf(t)["input_ids"]) for t in TEXTS)
    assert body["usage"] == {"prompt_tokens": tokens, "total_tokens": tokens}
    b64 = await http.post("/v1/embeddings", json={"model": EMBED, "input": TEXTS, "encoding_format": "base64"})
    decoded = [np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4") for d in b64.json()["data"]]
    np.testing.assert_array_equal(np.stack(decoded), vectors.astype(np.float32))


async def test_token_ids_embed_as_their_text_does(http: httpx.AsyncClient, model_dir: Path) -> None:
    ids = Tokenization(model_dir).hf(TEXTS[1])["input_ids"]
    by_text = (await http.post("/v1/embeddings", json={"model": EMBED, "input": TEXTS[1]})).json()
    by_ids = (await http.post("/v1/embeddings", json={"model": EMBED, "input": ids})).json()
    by_lists = (await http.post("/v1/embeddings", json={"model": EMBED, "input": [ids, ids[:3]]})).json()
    assert by_ids["data"][0]["embedding"] == by_text["data"][0]["embedding"]
    assert by_lists["data"][0]["embedding"] == by_text["data"][0]["embedding"]
    assert len(by_lists["data"]) == 2 and by_lists["usage"]["prompt_tokens"] == len(ids) + 3


async def test_the_openai_sdk_decodes_its_default_base64(model_dir: Path) -> None:
    app = _app(model_dir)
    async with app.router.lifespan_context(app), sdk_client(app) as sdk:
        result = await sdk.embeddings.create(model=EMBED, input=TEXTS)  # the SDK asks for base64 by default
    np.testing.assert_allclose(np.array([d.embedding for d in result.data]), _reference(model_dir, TEXTS), atol=1e-5)
    assert result.usage.prompt_tokens > 0


@pytest.mark.parametrize(
    ("body", "param", "says"),
    [
        ({"input": ""}, "input", "empty"),
        ({"input": []}, "input", "empty"),
        ({"input": ["a", ""]}, "input", "empty"),
        ({"input": [[]]}, "input", "empty"),
        ({"input": ["a"] * (MAX_EMBEDDING_INPUTS + 1)}, "input", ""),
        ({"input": [5, 10_000]}, "input", "vocabulary"),
        ({"input": [-1]}, "input", ""),
        ({"input": " ".join(["a"] * MAX_SEQ_LENGTH)}, "input", f"at most {MAX_SEQ_LENGTH} tokens per input"),
        ({"input": " ".join(WORDS * 9)}, "input", f"maximum context length is {MAX_SEQ_LENGTH} tokens"),
        ({"input": "paris", "dimensions": 8}, "dimensions", "not a Matryoshka model"),
        ({"input": "paris", "encoding_format": "int8"}, "encoding_format", ""),
        ({"input": "paris", "truncate_prompt_tokens": MAX_SEQ_LENGTH + 1}, "truncate_prompt_tokens", "-1 or between"),
    ],
)
async def test_bad_embedding_requests_get_a_400_naming_the_field(
    http: httpx.AsyncClient, body: dict[str, object], param: str, says: str
) -> None:
    response = await http.post("/v1/embeddings", json={"model": EMBED, **body})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param and says in error["message"], error


async def test_long_inputs_are_truncated_when_asked(http: httpx.AsyncClient, model_dir: Path) -> None:
    ids = Tokenization(model_dir).hf(" ".join(WORDS * 3))["input_ids"]
    for side, kept in (("right", ids[:MAX_SEQ_LENGTH]), ("left", ids[-MAX_SEQ_LENGTH:])):
        body = {"model": EMBED, "input": ids, "truncate_prompt_tokens": -1, "truncation_side": side}
        truncated = (await http.post("/v1/embeddings", json=body)).json()
        direct = (await http.post("/v1/embeddings", json={"model": EMBED, "input": kept})).json()
        assert truncated["data"][0]["embedding"] == direct["data"][0]["embedding"]
        assert truncated["usage"]["prompt_tokens"] == MAX_SEQ_LENGTH


async def test_native_dimensions_are_accepted_and_unknown_fields_named(http: httpx.AsyncClient) -> None:
    body = {"model": EMBED, "input": "paris", "dimensions": DIMENSIONS, "user": "u1", "frobnicate": 1}
    response = await http.post("/v1/embeddings", json=body)
    assert response.status_code == 200, response.text
    assert response.headers["x-ignored-params"] == "frobnicate"
    assert len(response.json()["data"][0]["embedding"]) == DIMENSIONS


async def test_matryoshka_truncation_renormalizes(tmp_path: Path) -> None:
    app = _app(build_embedding_model_dir(tmp_path / "m", config_extra={"is_matryoshka": True}))
    async with app.router.lifespan_context(app), client(app) as http:
        full = (await http.post("/v1/embeddings", json={"model": EMBED, "input": "paris"})).json()
        cut = (await http.post("/v1/embeddings", json={"model": EMBED, "input": "paris", "dimensions": 4})).json()
    head = np.array(full["data"][0]["embedding"][:4])
    np.testing.assert_allclose(cut["data"][0]["embedding"], head / np.linalg.norm(head), atol=1e-6)


async def test_an_embedding_model_refuses_to_generate_and_an_unknown_model_is_404(http: httpx.AsyncClient) -> None:
    chat = await http.post(
        "/v1/chat/completions", json={"model": EMBED, "messages": [{"role": "user", "content": "hi"}]}
    )
    assert chat.status_code == 400 and "is an embedding model" in chat.json()["error"]["message"]
    completion = await http.post("/v1/completions", json={"model": EMBED, "prompt": "hi"})
    assert completion.status_code == 400 and completion.json()["error"]["param"] == "model"
    unknown = await http.post("/v1/embeddings", json={"model": "nope", "input": "hi"})
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "model_not_found"


async def test_a_generative_model_refuses_embeddings(fake: FakeEngine, tiny: TinyModel) -> None:
    app = create_app(ServerState(engine=fake, tokenization=tiny.tokenization, model_name=MODEL))
    async with app.router.lifespan_context(app), client(app) as http:
        for path, body in (
            ("/v1/embeddings", {"model": MODEL, "input": "hi"}),
            ("/v1/rerank", {"query": "hi", "documents": ["a"]}),
        ):
            response = await http.post(path, json=body)
            assert response.status_code == 400, response.text
            assert "is a generative" in response.json()["error"]["message"]


async def test_score_and_rerank_are_the_cosines_of_the_embeddings(http: httpx.AsyncClient, model_dir: Path) -> None:
    ref = _reference(model_dir, TEXTS)
    cosines = [float(ref[0] @ r / np.linalg.norm(ref[0]) / np.linalg.norm(r)) for r in ref[1:]]
    score = await http.post("/v1/score", json={"model": EMBED, "text_1": TEXTS[0], "text_2": TEXTS[1:]})
    assert score.status_code == 200, score.text
    data = score.json()["data"]
    assert [d["index"] for d in data] == [0, 1, 2] and {d["object"] for d in data} == {"score"}
    np.testing.assert_allclose([d["score"] for d in data], cosines, atol=1e-5)
    pairwise = (await http.post("/score", json={"queries": TEXTS[:2], "documents": TEXTS[2:]})).json()
    assert len(pairwise["data"]) == 2 and pairwise["usage"]["completion_tokens"] == 0
    for path in ("/rerank", "/v1/rerank", "/v2/rerank"):
        rerank = await http.post(path, json={"query": TEXTS[0], "documents": TEXTS[1:], "top_n": 2})
        assert rerank.status_code == 200, rerank.text
        results = rerank.json()["results"]
        best = sorted(range(3), key=lambda i: -cosines[i])[:2]
        assert [r["index"] for r in results] == best
        assert [r["document"]["text"] for r in results] == [TEXTS[1 + i] for i in best]
        np.testing.assert_allclose([r["relevance_score"] for r in results], [cosines[i] for i in best], atol=1e-5)


async def test_mismatched_score_lists_get_a_400(http: httpx.AsyncClient) -> None:
    response = await http.post("/v1/score", json={"text_1": ["a", "b"], "text_2": ["a", "b", "c"]})
    assert response.status_code == 400 and response.json()["error"]["param"] == "text_2"


async def test_a_full_queue_refuses_with_429(model_dir: Path) -> None:
    app = _app(model_dir, GatewayArgs(max_waiting_requests=1))
    async with app.router.lifespan_context(app), client(app) as http:
        body = {"model": EMBED, "input": TEXTS * 8}
        responses = await asyncio.gather(*(http.post("/v1/embeddings", json=body) for _ in range(6)))
    statuses = sorted(r.status_code for r in responses)
    assert statuses[0] == 200 and statuses[-1] == 429, statuses
    refused = next(r for r in responses if r.status_code == 429)
    assert refused.json()["error"]["code"] == "server_overloaded" and "retry-after" in refused.headers


def test_vllm_engine_arguments_are_refused_by_the_cpu_embedding_engine(model_dir: Path) -> None:
    with pytest.raises(ValueError, match="--enforce-eager: not an option of ise's CPU engine"):
        build_embedder(EngineArgs(engine="cpu"), ModelInfo.load(model_dir), ["--enforce-eager"])


def test_speculative_decoding_is_reported_ignored_for_an_embedding_model(
    model_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A server-wide --speculative-config (for a chat model served beside it) does not stop an embedder."""
    args = EngineArgs(engine="cpu", speculative_config={"method": "ngram", "num_speculative_tokens": 4})
    with caplog.at_level(logging.WARNING, logger="adapters.factory"):
        assert build_embedder(args, ModelInfo.load(model_dir)) is not None
    assert "--speculative-config is ignored for the embedding model" in caplog.text


async def test_a_failing_forward_pass_stops_the_engine_and_answers_503(model_dir: Path) -> None:
    app = _app(model_dir)
    async with app.router.lifespan_context(app), client(app) as http:
        engine = app.state.ise.engine
        assert isinstance(engine, CPUEmbeddingEngine)

        def fail(_: list[list[int]]) -> list[object]:
            raise RuntimeError("out of memory")

        engine._forward = fail  # type: ignore[method-assign,assignment]
        failed = await http.post("/v1/embeddings", json={"model": EMBED, "input": TEXTS})
        assert failed.status_code == 503 and failed.json()["error"]["code"] == "engine_dead"
        after = await http.post("/v1/embeddings", json={"model": EMBED, "input": "paris"})
        assert after.status_code == 503
        assert (await http.get("/health")).status_code == 503


async def test_bfloat16_weights_give_nearly_the_float32_vectors(model_dir: Path) -> None:
    tokenizer = Tokenization(model_dir).hf
    ids = [tokenizer(text)["input_ids"] for text in TEXTS]
    vectors = {}
    for dtype in (torch.float32, torch.bfloat16):
        engine = CPUEmbeddingEngine(model_dir, EmbeddingSpec.load(model_dir, 64), dtype=dtype)
        await engine.start()
        try:
            vectors[dtype] = np.stack(await engine.embed(ids))
        finally:
            await engine.shutdown()
    assert vectors[torch.bfloat16].dtype == np.float32  # pooled and normalized in float32
    np.testing.assert_allclose(vectors[torch.bfloat16], vectors[torch.float32], atol=3e-2)
    assert not np.array_equal(vectors[torch.bfloat16], vectors[torch.float32])
