"""The paged key/value cache: per layer, one preallocated tensor of fixed-size blocks.

Which block holds which request's positions is the block manager's business; this class only
owns the memory. Layout ``[num_blocks, kv_heads, block_size, head_dim]``: one KV head's rows of a
block are one contiguous stretch (4 KB for the built-in model), which attention, reading one KV
head at a time, streams from memory in order.
"""

from __future__ import annotations

import torch

from adapters.model_info import KVLayout


class PagedKVCache:
    def __init__(self, layout: KVLayout, *, num_blocks: int, block_size: int, dtype: torch.dtype) -> None:
        shape = (num_blocks, layout.num_kv_heads, block_size, layout.head_dim)
        self.keys = [torch.zeros(shape, dtype=dtype) for _ in range(layout.num_layers)]
        self.values = [torch.zeros(shape, dtype=dtype) for _ in range(layout.num_layers)]
        self.num_blocks = num_blocks
        self.block_size = block_size

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self.keys, *self.values))

    def write(self, layer: int, slots: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        """Store the keys and values [T, KVH, D] of tokens at cache ``slots`` [T] of ``layer``."""
        _, kv_heads, block_size, head_dim = self.keys[layer].shape
        heads = torch.arange(kv_heads)
        rows = ((slots // block_size * kv_heads).unsqueeze(1) + heads) * block_size + (slots % block_size).unsqueeze(1)
        flat = rows.reshape(-1)
        self.keys[layer].view(-1, head_dim).index_copy_(0, flat, k.reshape(-1, head_dim))
        self.values[layer].view(-1, head_dim).index_copy_(0, flat, v.reshape(-1, head_dim))
