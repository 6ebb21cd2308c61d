"""What every route needs: the engine, the tokenizer, the model's names, the grammar compile workers,
and the gateway's state."""

from __future__ import annotations

from dataclasses import dataclass, field

from fastapi import Request

from adapters.engine import Engine
from adapters.grammars import tokenizer_info
from server.admission import Admission
from server.api_config import ApiArgs
from server.errors import APIError
from server.gateway_config import GatewayArgs
from server.generation import SamplingDefaults
from server.grammar_workers import GrammarWorkers
from server.metrics import Metrics
from server.protocol import now
from server.rate_limits import RateLimits
from server.text import Tokenization


@dataclass
class ServerState:
    engine: Engine
    tokenization: Tokenization
    model_name: str
    aliases: tuple[str, ...] = ()  # further names clients may use (--served-model-name a b)
    model_path: str | None = None  # where the model was loaded from: its /v1/models card's root, as in vLLM
    sampling_defaults: SamplingDefaults = field(default_factory=SamplingDefaults)
    created: int = field(default_factory=now)
    gateway: GatewayArgs = field(default_factory=GatewayArgs)
    api: ApiArgs = field(default_factory=ApiArgs)
    batch_slots: int | None = None  # the engine's --max-num-seqs, for predicting slot waits
    admission: Admission = field(init=False)
    rate_limits: RateLimits = field(init=False, default_factory=RateLimits)
    metrics: Metrics = field(init=False)
    grammars: GrammarWorkers = field(init=False)

    def __post_init__(self) -> None:
        self.admission = Admission(self.gateway, self.batch_slots)
        self.metrics = Metrics(self.engine, self.admission)
        tok = self.tokenization
        self.grammars = GrammarWorkers(
            lambda: tokenizer_info(tok.hf, tok.model_vocab_size, self.engine.eos_token_ids),
            workers=self.api.grammar_compile_workers,
            timeout_s=self.api.grammar_compile_timeout,
            max_waiting=self.api.grammar_compile_queue,
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
