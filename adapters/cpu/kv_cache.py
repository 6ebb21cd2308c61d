"""A preallocated key/value cache with one fixed slot per running request.

Nothing is copied or re-padded per step: a decode step attends to a view of the first slots.
To keep that view dense the scheduler keeps running requests in slots ``0..n-1`` and moves the
last request into the hole a finished one leaves, which costs one copy per departure, not per
step.
"""

from __future__ import annotations

import torch


class SlotKVCache:
    def __init__(
        self,
        *,
        num_layers: int,
        num_slots: int,
        num_kv_heads: int,
        max_len: int,
        head_dim: int,
        dtype: torch.dtype,
    ) -> None:
        # Zeros, not empty: masked-out positions still pass through the attention arithmetic,
        # and never-written memory could hold NaN bit patterns that poison the sums.
        shape = (num_slots, num_kv_heads, max_len, head_dim)
        self.keys = [torch.zeros(shape, dtype=dtype) for _ in range(num_layers)]
        self.values = [torch.zeros(shape, dtype=dtype) for _ in range(num_layers)]
        self.num_slots = num_slots
        self.max_len = max_len

    def move(self, src: int, dst: int, length: int) -> None:
        """Copy a request's first ``length`` cached positions from one slot to another."""
        for cache in (*self.keys, *self.values):
            cache[dst, :, :length] = cache[src, :, :length]

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self.keys, *self.values))
