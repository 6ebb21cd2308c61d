"""The whole server in process, on a scripted engine and a tokenizer built in code: no model, no download.

Each test gets a fresh ``FakeEngine`` and app. The app's own lifespan (``create_app``'s, which
starts and shuts down the engine) is entered here, because httpx's ``ASGITransport`` does not
run lifespans. Clients talk to it through ``ASGITransport``: plain httpx for the bytes on the
wire, and the real openai SDK for what an OpenAI client makes of them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import httpx2
import openai
import pytest
from fastapi import FastAPI
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, PreTrainedTokenizerFast

from adapters.model_info import ModelInfo
from server.app import create_app
from server.state import ServerState
from server.text import Tokenization
from tests.fast.fake_engine import FakeEngine, Reply

MODEL = "fake"
CONTEXT_LENGTH = 256
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# A little English to learn merges from, so tokens are whole words or pieces of them; characters
# it lacks (accents, symbols) stay split into their UTF-8 bytes, one token each.
CORPUS = ["Hello world! The quick brown fox jumps over the lazy dog. Say hello to the user and the assistant."]


@dataclass(frozen=True)
class TinyModel:
    """A model directory with a tokenizer and config only, and helpers to script the fake with text."""

    path: Path
    info: ModelInfo
    tokenization: Tokenization

    @property
    def eos(self) -> int:
        [eos] = self.info.eos_token_ids
        return eos

    def ids(self, *pieces: str) -> list[int]:
        """The pieces' token ids, each piece tokenized alone: every boundary between them is a token boundary."""
        return [t for piece in pieces for t in self.tokenization.encode(piece, add_special_tokens=False)]

    def reply(self, *pieces: str, **kwargs: Any) -> Reply:
        """A reply that says the pieces, then EOS; ``kwargs`` are ``Reply``'s."""
        return Reply([*self.ids(*pieces), self.eos], **kwargs)


def build_model_dir(path: Path) -> None:
    """A byte-level BPE tokenizer with ChatML specials (``<|im_end|>`` its EOS) and a Llama config."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(CORPUS, trainer)
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, eos_token="<|im_end|>", pad_token="<|endoftext|>", chat_template=CHATML
    )
    hf.save_pretrained(path)
    LlamaConfig(
        vocab_size=tokenizer.get_vocab_size(),
        max_position_embeddings=CONTEXT_LENGTH,
        eos_token_id=hf.eos_token_id,
        pad_token_id=hf.pad_token_id,
        hidden_size=8,
        intermediate_size=16,
        num_hidden_layers=1,
        num_attention_heads=1,
        num_key_value_heads=1,
    ).save_pretrained(path)


@pytest.fixture(scope="session")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> TinyModel:
    path = tmp_path_factory.mktemp("tiny-model")
    build_model_dir(path)
    # Read as ``ise serve`` reads a model: its metadata once, the tokenizer told the embedding's size.
    info = ModelInfo.load(path)
    return TinyModel(path, info, Tokenization(path, info.vocab_size))


@pytest.fixture
def fake(tiny: TinyModel) -> FakeEngine:
    return FakeEngine(
        lambda _: tiny.reply("Hello", " world", "!"),
        eos_token_ids=tiny.info.eos_token_ids,
        max_model_len=tiny.info.context_length,
    )


@pytest.fixture
async def app(fake: FakeEngine, tiny: TinyModel) -> AsyncIterator[FastAPI]:
    app = create_app(ServerState(engine=fake, tokenization=tiny.tokenization, model_name=MODEL))
    async with app.router.lifespan_context(app):
        yield app


@pytest.fixture
async def http(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
        yield client


@pytest.fixture
async def sdk(app: FastAPI) -> AsyncIterator[openai.AsyncOpenAI]:
    # The openai SDK (pinned in requirements/constraints.txt) runs on httpx2, httpx's successor.
    http_client = httpx2.AsyncClient(transport=httpx2.ASGITransport(app=app), base_url="http://test")
    async with openai.AsyncOpenAI(base_url="http://test/v1", api_key="x", http_client=http_client, max_retries=0) as c:
        yield c
