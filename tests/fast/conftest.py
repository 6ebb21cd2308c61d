"""The whole server in process, on a scripted engine and a tokenizer built in code: no model, no download.

Each test gets a fresh ``FakeEngine`` and app. The app's own lifespan (``create_app``'s, which
starts and shuts down the engine) is entered here, because httpx's ``ASGITransport`` does not
run lifespans. Clients talk to it through ``ASGITransport``: plain httpx for the bytes on the
wire, and the real openai SDK for what an OpenAI client makes of them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from types import SimpleNamespace

import httpx
import limits.storage.memory
import openai
import pytest
from fastapi import FastAPI

from adapters.model_info import ModelInfo
from server.endpoints.state import ServerState
from server.runtime.app import create_app
from server.text.tokenization import Tokenization
from tests.fast.fake_engine import FakeEngine
from tests.fast.helpers import WINDOW_START, Clock, client, sdk_client
from tests.fast.tiny_model import MODEL, TinyModel, build_model_dir


@pytest.fixture(scope="session")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> TinyModel:
    path = tmp_path_factory.mktemp("tiny-model")
    build_model_dir(path)
    # Read as ``ise serve`` reads a model: its metadata once, the tokenizer told the embedding's size.
    info = ModelInfo.load(path)
    return TinyModel(path, info, Tokenization(path, info.vocab_size, eos_token_ids=info.eos_token_ids))


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
    async with client(app) as http:
        yield http


@pytest.fixture
async def sdk(app: FastAPI) -> AsyncIterator[openai.AsyncOpenAI]:
    async with sdk_client(app) as c:
        yield c


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    """Rate limits on a clock that stands still (a second into a minute) until the test moves it,
    so a limit's window never rolls over between two requests by chance."""
    fake = Clock(WINDOW_START + 1.0)
    monkeypatch.setattr(limits.storage.memory, "time", SimpleNamespace(time=fake))
    return fake


@pytest.fixture
async def roomy(fake: FakeEngine, tiny: TinyModel) -> AsyncIterator[FastAPI]:
    """An app whose engine takes 4,096 tokens: tools' descriptions are long in the tiny tokenizer."""
    fake.max_model_len = 4096
    app = create_app(ServerState(engine=fake, tokenization=tiny.tokenization, model_name=MODEL))
    async with app.router.lifespan_context(app):
        yield app
