"""``ise serve --model all-MiniLM-L6-v2``: the built-in embedding model, through the clients RAG stacks use.

The openai SDK (floats and its default base64, strings and token ids, batches), LangChain's
``OpenAIEmbeddings`` and ``litellm.embedding`` are called as their documentation shows, pointed at
ise. The vectors must match sentence-transformers' own for the same weights within 1e-4 per
component (float32), concurrent requests included (they share forward passes).
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import numpy.typing as npt
import openai
import pytest
from pydantic import SecretStr
from sentence_transformers import SentenceTransformer
from transformers import AutoTokenizer

from adapters.builtin_model import BUILTIN_EMBEDDING_MODEL_NAME, ensure_builtin_embedding_model
from server.config.settings import Settings
from tests.real.helpers import ServerHandle, running_server

MODEL = BUILTIN_EMBEDDING_MODEL_NAME
DIMENSIONS = 384
TEXTS = [
    "The capital of France is Paris.",
    "Bananas are yellow.",
    "A fast brown fox leaps over a sleepy dog, and then it runs far away into the forest to hide.",
    "ise serves embeddings.",
]
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def model_dir() -> Path:
    return ensure_builtin_embedding_model(Settings().cache_dir)


@pytest.fixture(scope="module")
def embedding_server(tmp_path_factory: pytest.TempPathFactory, model_dir: Path) -> Iterator[ServerHandle]:
    args = ["--model", MODEL, "--dtype", "float32", "--threads", "1"]
    with running_server(args, tmp_path_factory.mktemp("embed") / "ise.log", model=MODEL) as handle:
        yield handle


@pytest.fixture(scope="module")
def reference(model_dir: Path) -> SentenceTransformer:
    return SentenceTransformer(str(model_dir), device="cpu")


@pytest.fixture
def sdk(embedding_server: ServerHandle) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=embedding_server.base_url, api_key="unused", max_retries=0, timeout=120) as c:
        yield c


def _expected(reference: SentenceTransformer, texts: list[str]) -> npt.NDArray[np.float32]:
    vectors: npt.NDArray[np.float32] = reference.encode(texts, convert_to_numpy=True)
    return vectors


def test_openai_sdk_floats_and_base64_match_sentence_transformers(
    sdk: openai.OpenAI, reference: SentenceTransformer
) -> None:
    expected = _expected(reference, TEXTS)
    # Without encoding_format the SDK asks for base64 and decodes it itself; "float" asks for numbers.
    for result in (
        sdk.embeddings.create(model=MODEL, input=TEXTS),
        sdk.embeddings.create(model=MODEL, input=TEXTS, encoding_format="float"),
    ):
        assert [d.index for d in result.data] == list(range(len(TEXTS)))
        got = np.array([d.embedding for d in result.data])
        assert got.shape == (len(TEXTS), DIMENSIONS)
        np.testing.assert_allclose(got, expected, atol=TOLERANCE)
        assert result.usage.prompt_tokens == result.usage.total_tokens > len(TEXTS)
    single = sdk.embeddings.create(model=MODEL, input=TEXTS[0])
    np.testing.assert_allclose(single.data[0].embedding, expected[0], atol=TOLERANCE)


def test_token_ids_in_and_raw_base64_out(
    embedding_server: ServerHandle, sdk: openai.OpenAI, model_dir: Path, reference: SentenceTransformer
) -> None:
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    ids = [tokenizer(text)["input_ids"] for text in TEXTS]
    expected = _expected(reference, TEXTS)
    batch = sdk.embeddings.create(model=MODEL, input=ids)
    np.testing.assert_allclose([d.embedding for d in batch.data], expected, atol=TOLERANCE)
    one = sdk.embeddings.create(model=MODEL, input=ids[2])
    np.testing.assert_allclose(one.data[0].embedding, expected[2], atol=TOLERANCE)
    # Little-endian float32, base64, as the bytes on the wire (the SDK decodes them itself).
    body = {"model": MODEL, "input": TEXTS[:2], "encoding_format": "base64"}
    raw = httpx.post(f"{embedding_server.base_url}/embeddings", json=body, timeout=60).json()
    decoded = [np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4") for d in raw["data"]]
    np.testing.assert_allclose(decoded, expected[:2], atol=TOLERANCE)


def test_concurrent_batches_all_answered_with_their_own_vectors(
    sdk: openai.OpenAI, reference: SentenceTransformer
) -> None:
    texts = [f"{text} (variant {i})" for i in range(8) for text in TEXTS]
    expected = _expected(reference, texts)

    def one(i: int) -> list[list[float]]:
        chunk = texts[i * 4 : (i + 1) * 4] if i % 2 else texts[i * 4]
        return [d.embedding for d in sdk.embeddings.create(model=MODEL, input=chunk).data]

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(one, range(8)))
    for i, vectors in enumerate(results):
        want = expected[i * 4 : (i + 1) * 4] if i % 2 else expected[i * 4 : i * 4 + 1]
        np.testing.assert_allclose(vectors, want, atol=TOLERANCE)


def test_langchain_openai_embeddings(embedding_server: ServerHandle, reference: SentenceTransformer) -> None:
    from langchain_openai import OpenAIEmbeddings

    embeddings = OpenAIEmbeddings(
        model=MODEL,
        openai_api_base=embedding_server.base_url,
        openai_api_key=SecretStr("unused"),
        check_embedding_ctx_length=False,  # it would tokenize with tiktoken, for OpenAI's models
    )
    expected = _expected(reference, TEXTS)
    np.testing.assert_allclose(embeddings.embed_documents(TEXTS), expected, atol=TOLERANCE)
    np.testing.assert_allclose(embeddings.embed_query(TEXTS[0]), expected[0], atol=TOLERANCE)


def test_litellm_embedding(
    embedding_server: ServerHandle, reference: SentenceTransformer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # offline, as LiteLLM's docs say
    import litellm

    monkeypatch.setattr(litellm, "telemetry", False)
    result = litellm.embedding(
        model=f"openai/{MODEL}", api_base=embedding_server.base_url, api_key="unused", input=TEXTS
    )
    got = [item["embedding"] for item in result.data]
    np.testing.assert_allclose(got, _expected(reference, TEXTS), atol=TOLERANCE)
    assert result.usage is not None and result.usage.prompt_tokens > 0


def test_rerank_puts_the_relevant_document_first(embedding_server: ServerHandle) -> None:
    body = {"model": MODEL, "query": "Which city is the capital of France?", "documents": TEXTS}
    response = httpx.post(f"{embedding_server.root_url}/v1/rerank", json=body, timeout=60)
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert results[0]["index"] == 0 and results[0]["document"]["text"] == TEXTS[0]
    assert [r["relevance_score"] for r in results] == sorted((r["relevance_score"] for r in results), reverse=True)


def test_errors_a_user_meets(sdk: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as chat:
        sdk.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
    assert "is an embedding model" in str(chat.value)
    with pytest.raises(openai.BadRequestError) as too_long:
        sdk.embeddings.create(model=MODEL, input=[[1012] * 300])
    assert "at most 256 tokens" in str(too_long.value)
    truncated = sdk.embeddings.create(model=MODEL, input=[[1012] * 300], extra_body={"truncate_prompt_tokens": -1})
    assert truncated.usage.prompt_tokens == 256
    with pytest.raises(openai.BadRequestError) as dims:
        sdk.embeddings.create(model=MODEL, input="hi", dimensions=128)
    assert "dimensions" in str(dims.value)
    with pytest.raises(openai.NotFoundError):
        sdk.embeddings.create(model="no-such-model", input="hi")


def test_vllm_pooling_runner_serves_the_same_vectors(
    tmp_path: Path, model_dir: Path, reference: SentenceTransformer
) -> None:
    """``--engine vllm``: vLLM's pooling runner behind ise's API, the same vectors (float32, eager)."""
    args = ["--model", MODEL, "--engine", "vllm", "--dtype", "float32", "--enforce-eager", "--threads", "1"]
    with (
        running_server(args, tmp_path / "ise.log", model=MODEL) as server,
        openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0, timeout=300) as sdk,
    ):
        expected = _expected(reference, TEXTS)
        result = sdk.embeddings.create(model=MODEL, input=TEXTS)
        np.testing.assert_allclose([d.embedding for d in result.data], expected, atol=TOLERANCE)
        ids = AutoTokenizer.from_pretrained(model_dir)(TEXTS[1])["input_ids"]
        by_ids = sdk.embeddings.create(model=MODEL, input=ids, encoding_format="float")
        np.testing.assert_allclose(by_ids.data[0].embedding, expected[1], atol=TOLERANCE)
        card = sdk.models.list().data[0]
        assert card.model_extra is not None and card.model_extra["max_model_len"] == 256
        with pytest.raises(openai.BadRequestError, match="is an embedding model"):
            sdk.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
