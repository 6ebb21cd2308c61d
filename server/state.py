"""What every route needs: the engine, the tokenizer and the name clients call the model by."""

from __future__ import annotations

from dataclasses import dataclass, field

from fastapi import Request

from adapters.engine import Engine
from server.errors import APIError
from server.generation import SamplingDefaults
from server.protocol import now
from server.text import Tokenization


@dataclass
class ServerState:
    engine: Engine
    tokenization: Tokenization
    model_name: str
    aliases: tuple[str, ...] = ()  # further names clients may use (--served-model-name a b)
    sampling_defaults: SamplingDefaults = field(default_factory=SamplingDefaults)
    created: int = field(default_factory=now)

    @property
    def model_names(self) -> tuple[str, ...]:
        return (self.model_name, *self.aliases)

    def check_model(self, model: str) -> None:
        if model not in self.model_names:
            raise APIError(404, f"The model `{model}` does not exist.", param="model", code="model_not_found")


def get_state(request: Request) -> ServerState:
    state: ServerState = request.app.state.ise
    return state
