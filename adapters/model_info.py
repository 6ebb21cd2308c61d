"""What ise reads from a model's configuration files, read in one place.

The engine needs the context length, the end-of-sequence tokens and what the KV cache keeps per
token; the server the vocabulary size (to refuse token ids the model has no row for) and the
sampling defaults the model ships.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers import AutoConfig, GenerationConfig, PretrainedConfig


@dataclass(frozen=True)
class KVLayout:
    """What the KV cache keeps of each token: a key and a value per layer and KV head."""

    num_layers: int
    num_kv_heads: int
    head_dim: int

    @classmethod
    def of(cls, config: PretrainedConfig) -> KVLayout:
        heads = config.num_attention_heads
        return cls(
            num_layers=config.num_hidden_layers,
            num_kv_heads=getattr(config, "num_key_value_heads", None) or heads,
            head_dim=getattr(config, "head_dim", None) or config.hidden_size // heads,
        )

    def num_blocks(self, cache_bytes: int, block_size: int, itemsize: int) -> int:
        """Blocks of ``block_size`` tokens that ``cache_bytes`` hold, at ``itemsize`` bytes a number."""
        return cache_bytes // (2 * self.num_layers * self.num_kv_heads * self.head_dim * itemsize * block_size)


@dataclass(frozen=True)
class ModelInfo:
    path: str  # a local directory or a hub id
    context_length: int  # max_position_embeddings (2048 where the config has none)
    vocab_size: int | None  # the embedding's rows
    eos_token_ids: frozenset[int]  # the generation config's, else the model config's
    generation_defaults: Mapping[str, Any]  # what generation_config.json sets explicitly
    kv_layout: KVLayout

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
            kv_layout=KVLayout.of(config),
        )
