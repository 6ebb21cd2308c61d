"""The fast tier's embedding model: a tiny BERT with seeded random weights, as a sentence-transformers directory.

Small enough to run for real in milliseconds, so the embedding engine (batching, pooling,
normalization) is tested itself, against sentence-transformers' own reading of the same files.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import BertConfig, BertModel, BertTokenizer

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
WORDS = [
    "the",
    "quick",
    "brown",
    "fox",
    "jumps",
    "over",
    "lazy",
    "dog",
    "hello",
    "world",
    "paris",
    "france",
    "capital",
    "of",
    "is",
    "a",
    "an",
    "and",
    "to",
]
MAX_SEQ_LENGTH = 24
DIMENSIONS = 16
POOLING_KEYS = {
    "mean": "pooling_mode_mean_tokens",
    "cls": "pooling_mode_cls_token",
    "max": "pooling_mode_max_tokens",
    "lasttoken": "pooling_mode_lasttoken",
}


def build_embedding_model_dir(
    path: Path, pooling: str = "mean", normalize: bool = True, config_extra: dict[str, object] | None = None
) -> Path:
    """Write the model, its WordPiece tokenizer and its modules into ``path``; returns ``path``."""
    path.mkdir(parents=True, exist_ok=True)
    vocab = {word: i for i, word in enumerate([*SPECIALS, *WORDS])}
    wordpiece = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    wordpiece.normalizer = normalizers.BertNormalizer(lowercase=True)
    wordpiece.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    wordpiece.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])]
    )
    pad, unk, cls, sep, mask = SPECIALS
    BertTokenizer(
        tokenizer_object=wordpiece, pad_token=pad, unk_token=unk, cls_token=cls, sep_token=sep, mask_token=mask
    ).save_pretrained(path)
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=DIMENSIONS,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=64,
    )
    BertModel(config).save_pretrained(path)
    if config_extra:
        saved = json.loads((path / "config.json").read_text())
        (path / "config.json").write_text(json.dumps({**saved, **config_extra}))
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]
    if normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
    (path / "modules.json").write_text(json.dumps(modules))
    (path / "1_Pooling").mkdir(exist_ok=True)
    pooling_config: dict[str, object] = {"word_embedding_dimension": DIMENSIONS}
    pooling_config.update({key: mode == pooling for mode, key in POOLING_KEYS.items()})
    (path / "1_Pooling" / "config.json").write_text(json.dumps(pooling_config))
    (path / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": MAX_SEQ_LENGTH}))
    return path
