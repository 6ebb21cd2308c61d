"""What a sentence-transformers directory says about its embeddings, read from its own files.

A sentence-transformers model is a pipeline of modules (``modules.json``): the transformer, a
``Pooling`` module whose ``config.json`` names how token states become one vector, and
optionally a ``Normalize`` module. ``sentence_bert_config.json`` caps the sequence length. ise
serves the pipelines made of these three (most embedding models); a module it cannot run (a
``Dense`` projection, say) is refused at start, naming it, rather than served with other vectors.

Matryoshka models (whose leading components are an embedding of their own) are declared as vLLM
reads them, in the model's ``config.json``: ``matryoshka_dimensions`` (the sizes it was trained
at) or ``is_matryoshka: true`` (any size).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

PoolingMode = Literal["mean", "cls", "max", "lasttoken"]

MODULES_FILE = "modules.json"
# sentence-transformers' Pooling config keys, by the mode each turns on.
_MODE_KEYS: dict[str, PoolingMode] = {
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_lasttoken": "lasttoken",
}
_UNSUPPORTED_KEYS = ("pooling_mode_mean_sqrt_len_tokens", "pooling_mode_weightedmean_tokens")
_TRANSFORMER, _POOLING, _NORMALIZE = "Transformer", "Pooling", "Normalize"


def is_embedding_model(model_dir: str | Path) -> bool:
    """Whether ``model_dir`` is a local sentence-transformers directory (its ``modules.json`` has a pooling step)."""
    modules = Path(model_dir) / MODULES_FILE
    if not modules.is_file():
        return False
    return any(_kind(m) == _POOLING for m in _read(modules))


@dataclass(frozen=True)
class EmbeddingSpec:
    """How one model's token states become its embedding, and its sizes."""

    pooling: PoolingMode
    normalize: bool  # a Normalize module follows the pooling: vectors have unit length
    dimensions: int  # components of a vector
    max_seq_length: int  # tokens one input may hold (sentence_bert_config.json, else the model's positions)
    matryoshka_dimensions: tuple[int, ...] | None = None  # sizes a client may truncate to; None: none
    any_dimensions: bool = False  # is_matryoshka: any size from 1 to ``dimensions``

    def check_dimensions(self, requested: int) -> str | None:
        """Why ``requested`` is not a size this model gives (None: it is)."""
        if requested == self.dimensions:
            return None
        if self.any_dimensions:
            return None if 1 <= requested < self.dimensions else f"it must be between 1 and {self.dimensions}"
        if self.matryoshka_dimensions is not None:
            if requested in self.matryoshka_dimensions:
                return None
            return f"this model was trained for {', '.join(map(str, self.matryoshka_dimensions))}"
        return f"this model is not a Matryoshka model: its embeddings have {self.dimensions} dimensions only"

    @classmethod
    def load(cls, model_dir: str | Path, model_positions: int) -> EmbeddingSpec:
        """Read the directory's modules; ``model_positions``: the transformer's own window.

        Raises ValueError naming the file and module ise cannot serve.
        """
        root = Path(model_dir)
        modules = _read(root / MODULES_FILE)
        kinds = [_kind(m) for m in modules]
        unknown = [
            m["type"]
            for m, kind in zip(modules, kinds, strict=True)
            if kind not in (_TRANSFORMER, _POOLING, _NORMALIZE)
        ]
        if unknown:
            raise ValueError(f"{root / MODULES_FILE}: ise cannot run the module(s) {', '.join(unknown)}")
        if kinds[:2] != [_TRANSFORMER, _POOLING] or kinds[2:] not in ([], [_NORMALIZE]):
            raise ValueError(
                f"{root / MODULES_FILE}: ise serves Transformer, Pooling and an optional Normalize, in that order; "
                f"this model has {', '.join(kinds)}"
            )
        pooling_file = root / modules[1].get("path", "") / "config.json"
        pooling = _read(pooling_file)
        modes = [mode for key, mode in _MODE_KEYS.items() if pooling.get(key)]
        unsupported = [key for key in _UNSUPPORTED_KEYS if pooling.get(key)]
        if unsupported or len(modes) != 1:
            raise ValueError(f"{pooling_file}: ise pools with exactly one of {', '.join(_MODE_KEYS)}")
        bert = root / "sentence_bert_config.json"
        max_seq = _read(bert).get("max_seq_length") if bert.is_file() else None
        config = _read(root / "config.json")
        trained = config.get("matryoshka_dimensions")
        return cls(
            pooling=modes[0],
            normalize=len(kinds) == 3,
            dimensions=int(pooling["word_embedding_dimension"]),
            max_seq_length=min(int(max_seq), model_positions) if max_seq else model_positions,
            matryoshka_dimensions=tuple(int(d) for d in trained) if trained else None,
            any_dimensions=bool(config.get("is_matryoshka")) and not trained,
        )


def _kind(module: dict[str, Any]) -> str:
    """``sentence_transformers.models.Pooling`` -> ``Pooling``."""
    return str(module.get("type", "")).rsplit(".", 1)[-1]


def _read(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: not a readable JSON file ({exc})") from exc
