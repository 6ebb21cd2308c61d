"""What ise reads from a model's configuration files, read in one place.

The engine needs the context length and the end-of-sequence tokens, the server the vocabulary
size (to refuse token ids the model has no row for) and the sampling defaults the model ships.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers import AutoConfig, GenerationConfig


@dataclass(frozen=True)
class ModelInfo:
    path: str  # a local directory or a hub id
    context_length: int  # max_position_embeddings (2048 where the config has none)
    vocab_size: int | None  # the embedding's rows
    eos_token_ids: frozenset[int]  # the generation config's, else the model config's
    generation_defaults: Mapping[str, Any]  # what generation_config.json sets explicitly

    @classmethod
    def load(cls, model: str | Path) -> ModelInfo:
        config = AutoConfig.from_pretrained(model)
        try:
            generation = GenerationConfig.from_pretrained(model)
        except OSError:  # a model without generation_config.json
            explicit: dict[str, Any] = {}
            eos = config.eos_token_id
        else:
            explicit = generation.to_diff_dict()
            eos = generation.eos_token_id
        ids = {eos} if isinstance(eos, int) else set(eos or ())
        vocab = getattr(config, "vocab_size", None)
        return cls(
            path=str(model),
            context_length=int(getattr(config, "max_position_embeddings", 2048)),
            vocab_size=int(vocab) if vocab else None,
            eos_token_ids=frozenset(int(i) for i in ids),
            generation_defaults=explicit,
        )
