"""Token ids back into streamed text, one choice at a time, cut at the first stop string.

Detokenization uses tokenizers' ``DecodeStream``, which holds back bytes until they form whole
UTF-8 characters, so no stream ever shows U+FFFD for a character split across tokens. Stop
strings are matched here, on text, because they can span token boundaries.
"""

from __future__ import annotations

from collections.abc import Sequence

from tokenizers import Tokenizer
from tokenizers.decoders import DecodeStream


class TextStream:
    """Turns one choice's tokens into text deltas, stopping at the first stop string.

    Text that could still be the start of a stop string is held back until the next tokens
    settle it, so the stop text itself is never sent, even when it arrives a piece at a time.
    """

    def __init__(
        self, tokenizer: Tokenizer, stop: Sequence[str], min_tokens: int = 0, include_stop: bool = False
    ) -> None:
        """``include_stop``: vLLM's include_stop_str_in_output, the stop string ends the text."""
        self._tokenizer = tokenizer
        self._include_stop = include_stop
        self._decoder = DecodeStream(skip_special_tokens=True)
        self._stop = list(stop)
        self._min_tokens = min_tokens
        self._num_tokens = 0
        # vLLM's min_tokens: no stop string may end within the text of the first min_tokens tokens.
        self._stop_from = 0
        self._text = ""
        self._sent = 0
        self.stopped = False
        self.stop_string: str | None = None  # the stop string that ended the text (Anthropic reports it)

    def push(self, token_ids: Sequence[int]) -> str:
        """Add tokens; return the text that is now safe to send."""
        for token_id in token_ids:
            piece = self._decoder.step(self._tokenizer, token_id)
            if piece:
                self._text += piece
            self._num_tokens += 1
            if self._num_tokens <= self._min_tokens:
                self._stop_from = len(self._text)
            elif self._stop and self._cut_at_stop():
                return self._take(len(self._text))
        return self._take(len(self._text) - self._held_back())

    def flush(self) -> str:
        """The generation ended without a stop string: send what was held back."""
        return self._take(len(self._text))

    @property
    def text(self) -> str:
        return self._text

    def _cut_at_stop(self) -> bool:
        # A stop string can only end in text not yet searched (unsent, and past the min_tokens
        # text), so each is searched for from just before that.
        searched = max(self._sent, self._stop_from)
        found = ((self._text.find(s, max(0, searched - len(s) + 1)), s) for s in self._stop)
        hits = [(i, s) for i, s in found if i >= 0]
        if not hits:
            return False
        at, stop = min(hits)
        self._text = self._text[: at + len(stop) if self._include_stop else at]
        self.stopped = True
        self.stop_string = stop
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
