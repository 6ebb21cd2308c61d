"""Attention over the paged KV cache, for a step that packs every scheduled token into one row.

Tokens of decode steps and of short later chunks of a prompt come first and go through the paged
kernel together, each reading its own context in the cache in place, up to itself. Prompt starts
and long chunks go through torch's SDPA, which computes many queries per key far faster: a chunk
that starts a prompt attends to its own keys as computed, a long later chunk to its context
gathered from the cache.

The same function also plugs into transformers' attention interface, so models that ise's own
Llama-family forward does not cover still run on the paged cache: transformers computes their
projections, rotary embeddings and MLPs, ise decides where keys and values live and which of them
each query sees.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import AttentionInterface

from adapters.cpu.kernels import CPUKernels
from adapters.cpu.kv_cache import PagedKVCache

ATTN_IMPLEMENTATION = "ise_paged"


@dataclass(frozen=True)
class PromptSegment:
    """One request's chunk of several tokens in the packed row."""

    offset: int  # where its tokens begin in the packed row
    length: int
    start: int  # its position in the request: tokens already in the cache before this chunk
    context_blocks: torch.Tensor | None  # cache blocks holding positions 0..start+length-1; None when start is 0


@dataclass(frozen=True)
class StepLayout:
    """How this forward pass's packed tokens map to requests and cache slots.

    The first ``num_paged`` tokens attend through the paged kernel; prompt segments follow.
    """

    cache: PagedKVCache
    kernels: CPUKernels
    slot_mapping: torch.Tensor  # [T] int64: cache slot each new token's keys and values go to
    num_paged: int
    block_tables: torch.Tensor  # [requests, max_blocks] int32: one row per request among the paged tokens
    table_rows: torch.Tensor  # [num_paged] int32: the row of block_tables each paged token reads
    context_lens: torch.Tensor  # [num_paged] int32: positions each paged token sees, itself included
    prompts: tuple[PromptSegment, ...]


def attend(
    layout: StepLayout, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float
) -> torch.Tensor:
    """Attention of the step's queries ``q`` [T, H, D]; the new keys and values ``k``, ``v``
    [T, KVH, D] are already in the cache. Returns [T, H * D]."""
    tokens, heads, head_dim = q.shape
    cache = layout.cache
    out = q.new_empty(tokens, heads * head_dim)
    if layout.num_paged:
        layout.kernels.paged_attention(
            out[: layout.num_paged],
            q[: layout.num_paged],
            cache.keys[layer],
            cache.values[layer],
            layout.block_tables,
            layout.table_rows,
            layout.context_lens,
            layout.cache.block_size,
            scale,
        )
    for seg in layout.prompts:
        span = slice(seg.offset, seg.offset + seg.length)
        if seg.context_blocks is None:
            attended = _prompt_start(q[span], k[span], v[span], scale)
        else:
            context_k, context_v = cache.gather(layer, seg.context_blocks, seg.start + seg.length)
            attended = _prompt_continuation(q[span], context_k, context_v, seg.start, scale)
        out[span] = attended.reshape(seg.length, heads * head_dim)
    return out


def _prompt_start(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """A prompt's first chunk, causal over itself: q [L, H, D], k and v [L, KVH, D] -> [L, H, D].

    Keys and values are repeated for every query head, in four dimensions: the shape torch's
    fused CPU attention takes. With enable_gqa it falls back to its unfused path, measured 6x
    slower on a 1,500-token prompt.
    """
    group = q.shape[1] // k.shape[1]
    attended = F.scaled_dot_product_attention(
        q.transpose(0, 1).unsqueeze(0),
        k.repeat_interleave(group, dim=1).transpose(0, 1).unsqueeze(0),
        v.repeat_interleave(group, dim=1).transpose(0, 1).unsqueeze(0),
        is_causal=True,
        scale=scale,
    )
    return attended[0].transpose(0, 1)


def _prompt_continuation(
    q: torch.Tensor, context_k: torch.Tensor, context_v: torch.Tensor, start: int, scale: float
) -> torch.Tensor:
    """A later chunk of a prompt: q [L, H, D] at positions start.. over the cached context
    [KVH, start + L, D] -> [L, H, D].

    The query heads that share a KV head are stacked along the query axis ([KVH, group * L, D])
    instead of repeating the whole context for every query head: the context is long, the chunk
    short, so this copies a few rows instead of the whole context at every layer.
    """
    length, heads, dim = q.shape
    kv_heads = context_k.shape[0]
    group = heads // kv_heads
    stacked = q.view(length, kv_heads, group, dim).permute(1, 2, 0, 3).reshape(1, kv_heads, group * length, dim)
    # Query i sits at position start + i and sees positions 0..start + i.
    visible = torch.arange(start + length).unsqueeze(0) <= torch.arange(start, start + length).unsqueeze(1)
    attended = F.scaled_dot_product_attention(
        stacked,
        context_k.unsqueeze(0),
        context_v.unsqueeze(0),
        attn_mask=visible.repeat(group, 1),
        scale=scale,
    )
    return attended[0].view(kv_heads, group, length, dim).permute(2, 0, 1, 3)


def transformers_attention(
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
    """transformers' attention interface over ``attend``: query [1, H, T, D], key and value
    [1, KVH, T, D] in, [1, T, H, D] out."""
    layer: int = module.layer_idx  # type: ignore[assignment]
    q = query[0].transpose(0, 1).contiguous()
    k, v = key[0].transpose(0, 1), value[0].transpose(0, 1)
    ise_layout.cache.write(layer, ise_layout.slot_mapping, k, v)
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    out = attend(ise_layout, layer, q, k, v, scale)
    return out.view(q.shape).unsqueeze(0), None


AttentionInterface.register(ATTN_IMPLEMENTATION, transformers_attention)
