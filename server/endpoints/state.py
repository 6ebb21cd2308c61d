"""What every route needs: the engine, the tokenizer, the model's names, the grammar compile workers,
and the gateway's state."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from fastapi import Request

from adapters.builtin_model import BUILTIN_MODEL_NAME, ensure_builtin_model, resolve_builtin
from adapters.embedding.config import is_embedding_model
from adapters.embedding.engine import Embedder, is_embedder
from adapters.engine import Engine
from adapters.factory import build_embedder, build_engine
from adapters.grammars import tokenizer_info
from adapters.model_info import ModelInfo
from server.config.settings import Settings
from server.endpoints.generation import SamplingDefaults
from server.endpoints.responses.store import ResponseStore
from server.gateway.gateway import Gateway
from server.gateway.options import GatewayArgs
from server.protocol.base import now
from server.protocol.errors import APIError, invalid_request
from server.text.grammar_workers import GrammarWorkers
from server.text.options import ApiArgs
from server.text.prompts import Prompts
from server.text.tokenization import Tokenization

log = logging.getLogger(__name__)

# What a model does: generate text (chat, completions) or embed it.
Task = Literal["generate", "embed"]


@dataclass
class ServerState:
    engine: Engine | Embedder  # a generating model's engine, or an embedding model's
    tokenization: Tokenization
    model_name: str
    aliases: tuple[str, ...] = ()  # further names clients may use (--served-model-name a b)
    model_path: str | None = None  # where the model was loaded from: its /v1/models card's root, as in vLLM
    sampling_defaults: SamplingDefaults = field(default_factory=SamplingDefaults)
    created: int = field(default_factory=now)
    gateway_args: GatewayArgs = field(default_factory=GatewayArgs)
    api: ApiArgs = field(default_factory=ApiArgs)
    batch_slots: int | None = None  # the engine's --max-num-seqs, for predicting slot waits
    gateway: Gateway = field(init=False)
    prompts: Prompts = field(init=False)
    grammars: GrammarWorkers = field(init=False)
    responses: ResponseStore = field(init=False)  # /v1/responses' stored answers

    def __post_init__(self) -> None:
        self.gateway = Gateway(self.gateway_args, self.engine, self.batch_slots, self.model_name)
        self.prompts = Prompts(self.tokenization, self.engine)
        tok = self.tokenization
        self.grammars = GrammarWorkers(
            lambda: tokenizer_info(tok.hf, tok.model_vocab_size, tok.eos_token_ids),
            workers=self.api.grammar_compile_workers,
            timeout_s=self.api.grammar_compile_timeout,
            max_waiting=self.api.grammar_compile_queue,
        )
        api = self.api
        self.responses = ResponseStore(
            api.responses_store,
            max_entries=api.responses_store_max_entries,
            max_bytes=api.responses_store_max_bytes,
            ttl_s=api.responses_store_ttl,
        )

    @property
    def model_names(self) -> tuple[str, ...]:
        return (self.model_name, *self.aliases)

    def check_model(self, model: str, task: Task | None = None) -> None:
        """A 404 for a name the model is not served under; with ``task``, the 400 for a model that does not do it."""
        if model not in self.model_names:
            raise APIError(404, f"The model `{model}` does not exist.", param="model", code="model_not_found")
        if task == "generate":
            self.generator  # noqa: B018 -- raises for an embedding model
        elif task == "embed":
            self.embedder  # noqa: B018 -- raises for a generating model

    @property
    def generator(self) -> Engine:
        """The engine of a generating model, for chat, completions, Responses and Messages.

        Raises the 400 a client gets for asking an embedding model to generate.
        """
        if is_embedder(self.engine):
            raise invalid_request(
                f"The model `{self.model_name}` is an embedding model: it serves /v1/embeddings, /v1/score and "
                "/v1/rerank, not text generation.",
                param="model",
                code="model_not_supported",
            )
        return self.engine

    @property
    def embedder(self) -> Embedder:
        """The engine of an embedding model; raises the 400 for asking a generating model for embeddings."""
        if not is_embedder(self.engine):
            raise invalid_request(
                f"The model `{self.model_name}` is a generative (chat/completion) model: it has no embeddings; "
                "serve an embedding model (a sentence-transformers directory) for /v1/embeddings.",
                param="model",
                code="model_not_supported",
            )
        return self.engine


@dataclass
class Models:
    """Every model the server serves, each with its own state (engine, names, gateway); the first is the default.

    A request goes to the model its ``model`` field names; a name no model is served under goes to
    the default, whose ``check_model`` answers it with today's 404.
    """

    states: list[ServerState]
    by_name: dict[str, ServerState] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        for state in self.states:
            for name in state.model_names:
                if name in self.by_name:
                    raise ValueError(f"two models are served as `{name}`: give each its own --served-model-name")
                self.by_name[name] = state
        for state in self.states[1:]:
            state.responses = self.states[0].responses  # GET /v1/responses/{id} names no model
            # A key's requests and tokens per minute are the key's, whichever model they go to.
            state.gateway.rate_limits = self.states[0].gateway.rate_limits

    def route(self, model: object, *, embedding: bool = False) -> ServerState:
        """The model named ``model``; a request that names none goes to the default model, or for an
        embedding route (``embedding``) to the first embedding model served."""
        if isinstance(model, str):
            return self.by_name.get(model, self.states[0])
        if embedding:
            return next((state for state in self.states if is_embedder(state.engine)), self.states[0])
        return self.states[0]


async def get_state(request: Request) -> ServerState:
    """The state of the model the request names in its JSON body's ``model`` (the default model without one)."""
    return await _routed(request, embedding=False)


async def get_embedding_state(request: Request) -> ServerState:
    """As ``get_state``, but score and rerank requests may leave ``model`` out (vLLM's make it optional):
    those go to the first embedding model, not to a chat model listed before it."""
    return await _routed(request, embedding=True)


async def _routed(request: Request, *, embedding: bool) -> ServerState:
    models: Models = request.app.state.models
    if len(models.states) == 1:
        return models.states[0]
    state = models.route(await _model_field(request), embedding=embedding)
    request.state.model = state.model_name  # for the access log
    return state


def get_models(request: Request) -> Models:
    models: Models = request.app.state.models
    return models


async def _model_field(request: Request) -> object:
    """The body's ``model``; Starlette keeps the body read, so the route's own parsing reads it again for free."""
    if request.method != "POST":
        return None
    try:
        body = json.loads(await request.body())
    except ValueError:
        return None
    return body.get("model") if isinstance(body, dict) else None


def build_models(settings: Settings, engine_argv: list[str] | None = None) -> Models:
    """Every model the settings name: ``--model`` (the built-in chat model when neither it nor ``models``
    is set), then each of ``models`` with its own options over the server's.

    Raises ``ValueError`` for settings an engine cannot take, two models under one name, or
    several models whose memory shares add up to more than the machine has available.
    """
    each = [settings] if settings.model is not None or not settings.models else []
    for entry in settings.models:
        own = entry.model_dump(include=entry.model_fields_set - {"served_model_name"})
        each.append(settings.model_copy(update={**own, "served_model_name": entry.served_model_name, "models": []}))
    states = [build_state(one, engine_argv) for one in each]
    if len(states) > 1:
        check_memory(states, each)
    return Models(states)


def check_memory(states: list[ServerState], settings: list[Settings]) -> None:
    """Refuse models whose weights and KV caches together exceed the memory available now."""
    shares = []
    for state, one in zip(states, settings, strict=True):
        weights = sum(f.stat().st_size for f in Path(str(state.model_path)).glob("*.safetensors"))
        kv = 0 if is_embedder(state.engine) else int(one.kv_cache_gib * 2**30)
        shares.append((state.model_name, weights, kv))
    total = sum(w + kv for _, w, kv in shares)
    available = _available_memory()
    described = "; ".join(
        f"{name}: {w / 2**30:.2f} GiB weights + {kv / 2**30:.2f} GiB KV cache" for name, w, kv in shares
    )
    log.info("Memory shares (%.2f GiB of %.2f GiB available): %s", total / 2**30, available / 2**30, described)
    if total > available:
        raise ValueError(
            f"the models need {total / 2**30:.2f} GiB together ({described}), more than the "
            f"{available / 2**30:.2f} GiB available: lower a model's kv_cache_gib or serve fewer models"
        )


def _available_memory() -> int:
    """Bytes the machine can give without swapping: Linux's MemAvailable, else the free pages."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


def build_state(settings: Settings, engine_argv: list[str] | None = None) -> ServerState:
    """Resolve the model, build its engine and load the tokenizer; the model loads at app start.

    ``engine_argv``: flags ise does not declare, for vLLM's engine argument parser. Raises
    ``ValueError`` for settings the chosen engine cannot take.
    """
    model: str | Path
    if settings.model is None:
        model, default_name = ensure_builtin_model(settings.cache_dir), BUILTIN_MODEL_NAME
    else:
        model, default_name = resolve_builtin(settings.model, settings.cache_dir) or settings.model, settings.model
    info = ModelInfo.load(model)
    engine: Engine | Embedder
    if is_embedding_model(model):
        engine = build_embedder(settings, info, engine_argv or [])
    else:
        engine = build_engine(settings, info, cache_dir=settings.cache_dir, engine_argv=engine_argv or [])
    defaults = SamplingDefaults.from_model(info) if settings.generation_config == "auto" else SamplingDefaults()
    names = settings.served_model_name or [default_name]
    return ServerState(
        engine=engine,
        tokenization=Tokenization(
            model, info.vocab_size, chat_template=settings.chat_template, eos_token_ids=info.eos_token_ids
        ),
        model_name=names[0],
        aliases=tuple(names[1:]),
        model_path=str(model),
        sampling_defaults=defaults,
        gateway_args=settings,
        api=settings,
        batch_slots=settings.max_num_seqs,
    )
