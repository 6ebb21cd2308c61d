"""The whole server in process, on a scripted engine and a tokenizer built in code: no model, no download.

Each test gets a fresh ``FakeEngine`` and app. The app's own lifespan (``create_app``'s, which
starts and shuts down the engine) is entered here, because httpx's ``ASGITransport`` does not
run lifespans. Clients talk to it through ``ASGITransport``: plain httpx for the bytes on the
wire, and the real openai SDK for what an OpenAI client makes of them.
"""

from __future__ import annotations

import asyncio
import json
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import httpx2
import limits.storage.memory
import openai
import pytest
from fastapi import FastAPI
from prometheus_client.parser import text_string_to_metric_families
from starlette.types import Message
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, PreTrainedTokenizerFast

from adapters.model_info import ModelInfo
from server.endpoints.state import ServerState
from server.gateway.options import GatewayArgs
from server.runtime.app import create_app
from server.text.tokenization import Tokenization
from tests.fast.fake_engine import FakeEngine, Reply

MODEL = "fake"
CONTEXT_LENGTH = 256
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# A template that knows tools (Hermes-style): it renders them, and calls in the history, itself.
HERMES_TEMPLATE = (
    "{% if tools %}<|im_start|>system\nTools: {{ tools | tojson }}\nCall one as "
    '<tool_call>{"name": ..., "arguments": ...}</tool_call><|im_end|>\n{% endif %}'
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{% if m.get('tool_calls') %}{% for c in m['tool_calls'] %}<tool_call>{{ c['function'] | tojson }}</tool_call>"
    "{% endfor %}{% else %}{{ m['content'] }}{% endif %}<|im_end|>\n{% endfor %}"
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
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
        yield client


@pytest.fixture
async def sdk(app: FastAPI) -> AsyncIterator[openai.AsyncOpenAI]:
    # The openai SDK (pinned in requirements/constraints.txt) runs on httpx2, httpx's successor.
    http_client = httpx2.AsyncClient(transport=httpx2.ASGITransport(app=app), base_url="http://test")
    async with openai.AsyncOpenAI(base_url="http://test/v1", api_key="x", http_client=http_client, max_retries=0) as c:
        yield c


# The gateway in process (tests/fast/test_gateway_*.py): an app with the gateway's settings, a
# client with a key, the /metrics a user scrapes, and raw ASGI calls for what httpx would rewrite.


@asynccontextmanager
async def serving(
    engine: FakeEngine, tiny: TinyModel, *, batch_slots: int | None = None, **gateway: Any
) -> AsyncIterator[FastAPI]:
    """The app over ``engine`` with the gateway's settings ``gateway`` (``GatewayArgs``' fields), started.

    ``batch_slots``: the engine's batch size as ``ise serve`` tells the admission (``--max-num-seqs``).
    """
    state = ServerState(
        engine=engine,
        tokenization=tiny.tokenization,
        model_name=MODEL,
        gateway_args=GatewayArgs(**gateway),
        batch_slots=batch_slots,
    )
    app = create_app(state)
    async with app.router.lifespan_context(app):
        yield app


async def until(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    """Wait until ``condition()`` holds: state the app changes on its own tasks, polled."""
    async with asyncio.timeout(timeout_s):
        while not condition():  # noqa: ASYNC110  (no event to wait on: the state is the app's)
            await asyncio.sleep(0.002)


WINDOW_START = 1_800_000_000.0  # a multiple of 60: the start of one of the ``limits`` library's minutes


class Clock:
    """``time.time`` for the ``limits`` library's in-memory rate-limit windows, moved only by the test."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    """Rate limits on a clock that stands still (a second into a minute) until the test moves it,
    so a limit's window never rolls over between two requests by chance."""
    fake = Clock(WINDOW_START + 1.0)
    monkeypatch.setattr(limits.storage.memory, "time", SimpleNamespace(time=fake))
    return fake


def state_of(app: FastAPI) -> ServerState:
    state: ServerState = app.state.ise
    return state


def client(app: FastAPI, key: str | None = None, **headers: str) -> httpx.AsyncClient:
    """An httpx client of ``app`` sending ``Authorization: Bearer key`` when ``key`` is given."""
    if key is not None:
        headers["authorization"] = f"Bearer {key}"
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test", headers=headers)


def sdk_client(app: FastAPI, key: str = "x", max_retries: int = 0) -> openai.AsyncOpenAI:
    http_client = httpx2.AsyncClient(transport=httpx2.ASGITransport(app=app), base_url="http://test")
    return openai.AsyncOpenAI(base_url="http://test/v1", api_key=key, http_client=http_client, max_retries=max_retries)


async def metric(http: httpx.AsyncClient, name: str, **labels: str) -> float:
    """A sample's value as ``GET /metrics`` shows it (0 when absent, as Prometheus reads a missing counter)."""
    response = await http.get("/metrics")
    assert response.status_code == 200, response.text
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return sample.value
    return 0.0


@dataclass
class Exchange:
    """What an ASGI app sent for one request: the response's status, headers and body."""

    messages: list[Message]

    @property
    def status(self) -> int:
        [start] = [m for m in self.messages if m["type"] == "http.response.start"]
        status: int = start["status"]
        return status

    @property
    def headers(self) -> httpx.Headers:
        [start] = [m for m in self.messages if m["type"] == "http.response.start"]
        return httpx.Headers([(k.decode("latin-1"), v.decode("latin-1")) for k, v in start.get("headers", [])])

    @property
    def body(self) -> bytes:
        return b"".join(m.get("body", b"") for m in self.messages if m["type"] == "http.response.body")

    def json(self) -> Any:
        return json.loads(self.body)


async def asgi_call(
    app: FastAPI,
    method: str,
    raw_path: bytes,
    *,
    query: bytes = b"",
    headers: Sequence[tuple[bytes, bytes]] = ((b"host", b"test"),),
    chunks: Sequence[bytes] = (),
    send: Callable[[Message], Awaitable[None]] | None = None,
    hang_up: asyncio.Event | None = None,
    timeout_s: float = 5.0,
) -> Exchange:
    """One request to ``app`` as uvicorn hands it over: ``raw_path`` as the client sent it, ``path``
    percent-decoded from it; the body in ``chunks`` (several: a chunked upload); ``send`` sees each
    message before it is recorded (to stall it, or to set ``hang_up``). The client disconnects once
    the response is complete, or once ``hang_up`` is set."""
    path = raw_path.decode("ascii")
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": urllib.parse.unquote(path) if "%" in path else path,
        "raw_path": raw_path,
        "root_path": "",
        "query_string": query,
        "headers": list(headers),
        "server": ("test", 80),
        "client": ("127.0.0.1", 50000),
    }
    pending: list[Message] = [
        {"type": "http.request", "body": chunk, "more_body": i < len(chunks) - 1} for i, chunk in enumerate(chunks)
    ] or [{"type": "http.request", "body": b"", "more_body": False}]
    sent: list[Message] = []
    done = asyncio.Event()

    async def receive() -> Message:
        if pending:
            return pending.pop(0)
        waits = [asyncio.ensure_future(event.wait()) for event in (done, hang_up) if event is not None]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for wait in waits:
                wait.cancel()
        return {"type": "http.disconnect"}

    async def record(message: Message) -> None:
        if send is not None:
            await send(message)
        sent.append(message)
        if message["type"] == "http.response.body" and not message.get("more_body", False):
            done.set()

    async with asyncio.timeout(timeout_s):
        await app(scope, receive, record)
    return Exchange(sent)
