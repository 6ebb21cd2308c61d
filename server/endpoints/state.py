"""What every route needs: the engine, the tokenizer, the model's names, the grammar compile workers,
and the gateway's state."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from fastapi import Request

from adapters.builtin_model import BUILTIN_MODEL_NAME, ensure_builtin_model
from adapters.engine import Engine
from adapters.factory import build_engine
from adapters.grammars import tokenizer_info
from adapters.model_info import ModelInfo
from server.config.settings import Settings
from server.endpoints.generation import SamplingDefaults
from server.endpoints.responses.store import ResponseStore
from server.gateway.gateway import Gateway
from server.gateway.options import GatewayArgs
from server.protocol.base import now
from server.protocol.errors import APIError
from server.text.grammar_workers import GrammarWorkers
from server.text.options import ApiArgs
from server.text.prompts import Prompts
from server.text.tokenization import Tokenization


@dataclass
class ServerState:
    engine: Engine
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

    def check_model(self, model: str) -> None:
        if model not in self.model_names:
            raise APIError(404, f"The model `{model}` does not exist.", param="model", code="model_not_found")


def get_state(request: Request) -> ServerState:
    state: ServerState = request.app.state.ise
    return state


def build_state(settings: Settings, engine_argv: list[str] | None = None) -> ServerState:
    """Resolve the model, build its engine and load the tokenizer; the model loads at app start.

    ``engine_argv``: flags ise does not declare, for vLLM's engine argument parser. Raises
    ``ValueError`` for settings the chosen engine cannot take.
    """
    model: str | Path
    if settings.model is None:
        model, default_name = ensure_builtin_model(settings.cache_dir), BUILTIN_MODEL_NAME
    else:
        model, default_name = settings.model, settings.model
    info = ModelInfo.load(model)
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
