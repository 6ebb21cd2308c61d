"""Text on both sides of the engine: prompts into token ids, token ids back into streamed text.

Detokenization uses tokenizers' ``DecodeStream``, which holds back bytes until they form whole
UTF-8 characters, so no stream ever shows U+FFFD for a character split across tokens. Stop
strings are matched here, on text, because they can span token boundaries.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer
from tokenizers.decoders import DecodeStream
from transformers import AutoTokenizer

from server.errors import invalid_request


class TextStream:
    """Turns one choice's tokens into text deltas, stopping at the first stop string.

    Text that could still be the start of a stop string is held back until the next tokens
    settle it, so the stop text itself is never sent, even when it arrives a piece at a time.
    """

    def __init__(self, tokenizer: Tokenizer, stop: Sequence[str]) -> None:
        self._tokenizer = tokenizer
        self._decoder = DecodeStream(skip_special_tokens=True)
        self._stop = list(stop)
        self._text = ""
        self._sent = 0
        self.stopped = False

    def push(self, token_ids: Sequence[int]) -> str:
        """Add tokens; return the text that is now safe to send."""
        for token_id in token_ids:
            piece = self._decoder.step(self._tokenizer, token_id)
            if piece:
                self._text += piece
            if self._stop and self._cut_at_stop():
                return self._take(len(self._text))
        return self._take(len(self._text) - self._held_back())

    def flush(self) -> str:
        """The generation ended without a stop string: send what was held back."""
        return self._take(len(self._text))

    @property
    def text(self) -> str:
        return self._text

    def _cut_at_stop(self) -> bool:
        # A stop string can only end in text not yet sent, so search from just before it.
        longest = max(len(s) for s in self._stop)
        window_start = max(0, self._sent - longest + 1)
        hits = [i for i in (self._text.find(s, window_start) for s in self._stop) if i >= 0]
        if not hits:
            return False
        self._text = self._text[: min(hits)]
        self.stopped = True
        return True

    def _held_back(self) -> int:
        """Length of the longest tail of unsent text that begins some stop string."""
        unsent = self._text[self._sent :]
        for size in range(min(len(unsent), max((len(s) for s in self._stop), default=0) - 1), 0, -1):
            tail = unsent[-size:]
            if any(s.startswith(tail) for s in self._stop):
                return size
        return 0

    def _take(self, end: int) -> str:
        delta = self._text[self._sent : end]
        self._sent = max(self._sent, end)
        return delta


class Tokenization:
    """The model's tokenizer and chat template, as the API needs them."""

    def __init__(self, model: str | Path) -> None:
        self.hf = AutoTokenizer.from_pretrained(model)
        self.backend: Tokenizer = self.hf.backend_tokenizer

    def chat_prompt(self, messages: Sequence[Mapping[str, Any]]) -> list[int]:
        try:
            text = self.hf.apply_chat_template([dict(m) for m in messages], add_generation_prompt=True, tokenize=False)
        except Exception as exc:  # a template may raise on any message layout it does not accept
            raise invalid_request(f"The chat template rejected these messages: {exc}", param="messages") from exc
        # The template already wrote the special tokens it wants.
        return self.encode(str(text), add_special_tokens=False)

    def encode(self, text: str, *, add_special_tokens: bool = True) -> list[int]:
        return list(self.hf.encode(text, add_special_tokens=add_special_tokens))

    def decode(self, token_ids: Sequence[int]) -> str:
        return str(self.hf.decode(list(token_ids), skip_special_tokens=True))

    def vocab_size(self) -> int:
        return len(self.hf)

    def text_stream(self, stop: Sequence[str]) -> TextStream:
        return TextStream(self.backend, stop)
