"""How waiting inputs are packed into forward passes: by length, under a token budget.

A forward pass over a padded batch computes every row to its longest input's length, so mixing
a 200-token input with 5-token ones multiplies the work of the short ones forty-fold. Sorting the
waiting inputs by length and cutting them into passes whose padded size (longest x rows) stays
within the budget keeps the padding small and each pass's memory bounded, whatever arrives.
"""

from __future__ import annotations

from collections.abc import Sequence


def pack(lengths: Sequence[int], token_budget: int) -> list[list[int]]:
    """The inputs' indices, grouped into forward passes, shortest inputs first.

    Each pass's padded size (its longest input times its rows) is at most ``token_budget``,
    except a pass of one input longer than the budget by itself (it must run anyway).
    """
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    passes: list[list[int]] = []
    current: list[int] = []
    for index in order:
        # Ascending order: the input joining is the pass's longest.
        if current and lengths[index] * (len(current) + 1) > token_budget:
            passes.append(current)
            current = []
        current.append(index)
    if current:
        passes.append(current)
    return passes


def padded_tokens(lengths: Sequence[int], passes: Sequence[Sequence[int]]) -> int:
    """Tokens the passes compute, padding included (what packing keeps small)."""
    return sum(max(lengths[i] for i in p) * len(p) for p in passes if p)
