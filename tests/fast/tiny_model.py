"""The fast tier's model: a tokenizer and a config built in code, no weights, no download.

A byte-level BPE learnt from a line of English, with ChatML's specials, so prompts and replies are
scripted as text and tokenized as ``ise serve`` would tokenize them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, PreTrainedTokenizerFast

from adapters.model_info import ModelInfo
from server.text.tokenization import Tokenization
from tests.fast.fake_engine import Reply

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
