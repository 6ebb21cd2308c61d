"""The paged key/value cache: per layer, one preallocated tensor of fixed-size blocks.

Which block holds which request's positions is the block manager's business; this class only
owns the memory. Layout ``[num_blocks * block_size, kv_heads, head_dim]``, flat over positions:
a new token's keys are written with one indexed copy per layer, and one position's keys for every
head form a contiguous row, which is what the attention kernel reads.
"""

from __future__ import annotations

import torch


class PagedKVCache:
    def __init__(
        self, *, num_layers: int, num_blocks: int, block_size: int, num_kv_heads: int, head_dim: int, dtype: torch.dtype
    ) -> None:
        shape = (num_blocks * block_size, num_kv_heads, head_dim)
        self.keys = [torch.zeros(shape, dtype=dtype) for _ in range(num_layers)]
        self.values = [torch.zeros(shape, dtype=dtype) for _ in range(num_layers)]
        self.num_blocks = num_blocks
        self.block_size = block_size

    @staticmethod
    def bytes_per_block(
        *, num_layers: int, block_size: int, num_kv_heads: int, head_dim: int, dtype: torch.dtype
    ) -> int:
        return 2 * num_layers * block_size * num_kv_heads * head_dim * dtype.itemsize

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self.keys, *self.values))
