"""``ise serve --model SmolLM2-135M-Instruct --model all-MiniLM-L6-v2``: a chat UI's RAG pair from one server.

Both names resolve to the built-in models (prepared from their PyPI wheels). Chat streams and
embedding batches are sent interleaved and concurrently, as a chat UI with document search sends
them; every one must be answered, each by its own model.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx
import openai
import pytest

from adapters.builtin_model import BUILTIN_EMBEDDING_MODEL_NAME, BUILTIN_MODEL_NAME
from tests.real.helpers import SMALL_SERVER, ServerHandle, running_server, user

CHUNKS = [f"Passage {i}: the river runs through the old city and past the harbour." for i in range(16)]


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerHandle]:
    args = ["--model", BUILTIN_MODEL_NAME, "--model", BUILTIN_EMBEDDING_MODEL_NAME, *SMALL_SERVER]
    with running_server(args, tmp_path_factory.mktemp("pair") / "ise.log") as handle:
        yield handle


def test_both_models_are_listed_with_what_they_do(pair: ServerHandle) -> None:
    cards = {card["id"]: card for card in httpx.get(f"{pair.base_url}/models", timeout=30).json()["data"]}
    assert cards[BUILTIN_MODEL_NAME]["capabilities"] == ["chat", "completion"]
    assert cards[BUILTIN_EMBEDDING_MODEL_NAME]["capabilities"] == ["embedding", "score", "rerank"]
    assert cards[BUILTIN_EMBEDDING_MODEL_NAME]["max_model_len"] == 256
    health = httpx.get(f"{pair.root_url}/health", timeout=30).json()
    assert health == {"status": "ok", "models": {BUILTIN_MODEL_NAME: "ok", BUILTIN_EMBEDDING_MODEL_NAME: "ok"}}


async def test_chat_streams_and_embedding_batches_interleaved_are_all_answered(pair: ServerHandle) -> None:
    sdk = openai.AsyncOpenAI(base_url=pair.base_url, api_key="unused", max_retries=0, timeout=300)

    async def chat(i: int) -> str:
        stream = await sdk.chat.completions.create(
            model=BUILTIN_MODEL_NAME, messages=user(f"Name a colour ({i})."), max_tokens=12, stream=True
        )
        return "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])

    async def embed(i: int) -> int:
        batch = CHUNKS[i % 4 * 4 : i % 4 * 4 + 4]
        result = await sdk.embeddings.create(model=BUILTIN_EMBEDDING_MODEL_NAME, input=batch)
        assert all(len(d.embedding) == 384 for d in result.data)
        return len(result.data)

    async with sdk:
        results = await asyncio.gather(*(chat(i) if i % 2 else embed(i) for i in range(12)))
    texts = [r for r in results if isinstance(r, str)]
    assert len(texts) == 6 and all(texts), texts
    assert [r for r in results if isinstance(r, int)] == [4] * 6


def test_each_model_refuses_the_other_ones_work(pair: ServerHandle) -> None:
    with openai.OpenAI(base_url=pair.base_url, api_key="unused", max_retries=0, timeout=60) as sdk:
        with pytest.raises(openai.BadRequestError, match="is an embedding model"):
            sdk.chat.completions.create(model=BUILTIN_EMBEDDING_MODEL_NAME, messages=user("hi"), max_tokens=4)
        with pytest.raises(openai.BadRequestError, match="is a generative"):
            sdk.embeddings.create(model=BUILTIN_MODEL_NAME, input="hi")
        with pytest.raises(openai.NotFoundError):
            sdk.embeddings.create(model="no-such-model", input="hi")
    log = pair.log_tail()
    assert f"model={BUILTIN_EMBEDDING_MODEL_NAME}" in log and f"model={BUILTIN_MODEL_NAME}" in log
