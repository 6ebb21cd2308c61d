"""Attention over the paged KV cache, plugged into transformers' attention interface.

Registering our own attention function lets ise run any transformers model that dispatches
through ``ALL_ATTENTION_FUNCTIONS`` (Llama, Qwen, Mistral and most others) while owning the KV
cache and the batch layout: transformers computes projections, rotary embeddings and MLPs, we
decide where keys and values live and which of them each query sees.

A step packs every scheduled token of every request into one row. Single-token segments (decode)
go through the paged kernel together, reading the cache in place; longer segments (prompt chunks)
go through torch's SDPA, which computes many queries per key far faster: a chunk that starts a
prompt attends to its own keys as computed, a later chunk to its context gathered from the cache.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import AttentionInterface

from adapters.cpu.kv_cache import PagedKVCache

ATTN_IMPLEMENTATION = "ise_paged"

# q [T, H, D], k and v blocks [N, B, KVH, D], block tables [S, M], seq index [T], context length
# [T], scale -> [T, H, D]; see paged_attention.cpp.
PagedKernel = Callable[
    [torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, float], torch.Tensor
]


@dataclass(frozen=True)
class PromptSegment:
    """One request's chunk of several tokens in the packed row."""

    offset: int  # where its tokens begin in the packed row
    length: int
    start: int  # its position in the request: tokens already in the cache before this chunk
    context_slots: torch.Tensor | None  # cache slots of positions 0..start+length-1; None when start is 0


@dataclass(frozen=True)
class StepLayout:
    """How this forward pass's packed tokens map to requests and cache slots.

    The first ``num_decode`` tokens are single-token segments; prompt segments follow.
    """

    cache: PagedKVCache
    kernel: PagedKernel
    slot_mapping: torch.Tensor  # [T] cache slot each new token's keys and values go to
    num_decode: int
    block_tables: torch.Tensor  # [num_decode, max_blocks] int32
    decode_rows: torch.Tensor  # [num_decode] int32: the row of block_tables each decode token reads
    context_lens: torch.Tensor  # [num_decode] int32: positions each decode token sees, itself included
    prompts: tuple[PromptSegment, ...]


def paged_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    *,
    ise_layout: StepLayout,
    **_: object,
) -> tuple[torch.Tensor, None]:
    layout = ise_layout
    layer: int = module.layer_idx  # type: ignore[assignment]
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    cache_k, cache_v = layout.cache.keys[layer], layout.cache.values[layer]
    # query [1, H, T, D], key and value [1, KVH, T, D]: the packed row, as transformers gives it.
    q = query[0].transpose(0, 1)
    k = key[0].transpose(0, 1)
    v = value[0].transpose(0, 1)
    cache_k.index_copy_(0, layout.slot_mapping, k)
    cache_v.index_copy_(0, layout.slot_mapping, v)
    out = torch.empty_like(q)
    if layout.num_decode:
        blocks_k, blocks_v = layout.cache.blocked(layer)
        out[: layout.num_decode] = layout.kernel(
            q[: layout.num_decode].contiguous(),
            blocks_k,
            blocks_v,
            layout.block_tables,
            layout.decode_rows,
            layout.context_lens,
            scale,
        )
    for seg in layout.prompts:
        span = slice(seg.offset, seg.offset + seg.length)
        if seg.context_slots is None:
            ctx_k, ctx_v, mask, causal = key[:, :, span], value[:, :, span], None, True
        else:
            ctx_k = cache_k.index_select(0, seg.context_slots).transpose(0, 1).unsqueeze(0)
            ctx_v = cache_v.index_select(0, seg.context_slots).transpose(0, 1).unsqueeze(0)
            # Query i sits at position start + i and sees positions 0..start + i.
            visible = torch.arange(seg.start + seg.length).unsqueeze(0)
            mask, causal = visible <= torch.arange(seg.start, seg.start + seg.length).unsqueeze(1), False
        attended = F.scaled_dot_product_attention(
            query[:, :, span], ctx_k, ctx_v, attn_mask=mask, is_causal=causal, scale=scale, enable_gqa=True
        )
        out[span] = attended[0].transpose(0, 1)
    return out.unsqueeze(0), None


AttentionInterface.register(ATTN_IMPLEMENTATION, paged_attention)
