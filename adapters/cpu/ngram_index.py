"""Where each n-gram of a sequence's tokens first occurred: the lookup behind ngram speculative decoding.

Kept apart from the proposer (``adapters.cpu.spec_decode``) because a ``Sequence`` holds one, and
the proposer reads sequences.
"""

from __future__ import annotations

from collections.abc import Sequence


class NgramIndex:
    """Where each n-gram of a sequence's tokens first occurred, for the lengths looked up.

    Grows with the sequence, a few dict entries per token (``max_n - min_n + 1``), so proposing
    after each step costs the new tokens only, not a search of the whole context (vLLM searches
    it afresh each step, in compiled code).
    """

    def __init__(self, min_n: int, max_n: int) -> None:
        self.lengths = range(min_n, max_n + 1)
        self.first: dict[tuple[int, ...], int] = {}  # n-gram -> the position just after its first occurrence
        self.indexed = 0  # n-grams ending before this position are in ``first``

    def continuation(self, tokens: Sequence[int]) -> int | None:
        """Where the tokens following the longest (then earliest) earlier match of the sequence's end start."""
        # An n-gram is indexed once a token follows it: the sequence's own suffix never matches itself.
        for end in range(self.indexed, len(tokens) - 1):
            for n in self.lengths:
                if n <= end + 1:
                    self.first.setdefault(tuple(tokens[end + 1 - n : end + 1]), end + 1)
        self.indexed = max(self.indexed, len(tokens) - 1)
        for n in reversed(self.lengths):
            if n <= len(tokens):
                start = self.first.get(tuple(tokens[len(tokens) - n :]))
                if start is not None:
                    return start
        return None
