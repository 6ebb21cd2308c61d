"""Attention over the slot KV cache, plugged into transformers' attention interface.

Registering our own attention function lets ise run any transformers model that dispatches
through ``ALL_ATTENTION_FUNCTIONS`` (Llama, Qwen, Mistral and most others) while owning the KV
cache and the batch layout: transformers computes projections, rotary embeddings and MLPs, we
decide where keys and values live and which of them each query sees.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import AttentionInterface

from adapters.cpu.kv_cache import SlotKVCache

ATTN_IMPLEMENTATION = "ise_slots"


@dataclass(frozen=True)
class PrefillSegment:
    """One request's new tokens in a packed prefill batch."""

    slot: int
    start: int  # positions already in the cache before this step
    offset: int  # where its tokens begin in the packed batch
    length: int


@dataclass(frozen=True)
class StepLayout:
    """How this forward pass's tokens map to requests and cache slots.

    Prefill packs every new prompt into one row (``[1, total_tokens]``); decode puts one token
    per request in a batch of rows (``[n, 1]``) whose request ``i`` lives in slot ``i``.
    """

    cache: SlotKVCache
    prefill: tuple[PrefillSegment, ...] = ()
    decode_positions: torch.Tensor | None = None  # [n] position of each row's new token
    decode_mask: torch.Tensor | None = None  # [n, 1, 1, kv_len] True where a key is visible


def slot_attention(
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
    layer: int = module.layer_idx  # type: ignore[assignment]
    cache_k = ise_layout.cache.keys[layer]
    cache_v = ise_layout.cache.values[layer]
    if ise_layout.decode_positions is not None:
        out = _decode(query, key, value, cache_k, cache_v, ise_layout, scaling)
    else:
        out = _prefill(query, key, value, cache_k, cache_v, ise_layout.prefill, scaling)
    return out.transpose(1, 2).contiguous(), None


def _decode(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    cache_k: torch.Tensor,
    cache_v: torch.Tensor,
    layout: StepLayout,
    scaling: float | None,
) -> torch.Tensor:
    assert layout.decode_positions is not None and layout.decode_mask is not None
    batch, heads, _, head_dim = query.shape
    kv_heads = key.shape[1]
    rows = torch.arange(batch)
    cache_k[rows, :, layout.decode_positions] = key[:, :, 0]
    cache_v[rows, :, layout.decode_positions] = value[:, :, 0]
    kv_len = layout.decode_mask.shape[-1]
    # One query token per request: fold the query heads that share a KV head into the query
    # length axis, so grouped-query attention needs no repeated keys.
    grouped = query.reshape(batch, kv_heads, heads // kv_heads, head_dim)
    out = F.scaled_dot_product_attention(
        grouped,
        cache_k[:batch, :, :kv_len],
        cache_v[:batch, :, :kv_len],
        attn_mask=layout.decode_mask,
        scale=scaling,
    )
    return out.reshape(batch, heads, 1, head_dim)


def _prefill(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    cache_k: torch.Tensor,
    cache_v: torch.Tensor,
    segments: tuple[PrefillSegment, ...],
    scaling: float | None,
) -> torch.Tensor:
    outs = []
    for seg in segments:
        span = slice(seg.offset, seg.offset + seg.length)
        end = seg.start + seg.length
        cache_k[seg.slot, :, seg.start : end] = key[0, :, span]
        cache_v[seg.slot, :, seg.start : end] = value[0, :, span]
        q = query[:, :, span]
        if seg.start == 0:
            k, v, mask, causal = key[:, :, span], value[:, :, span], None, True
        else:
            k = cache_k[seg.slot : seg.slot + 1, :, :end]
            v = cache_v[seg.slot : seg.slot + 1, :, :end]
            q_pos = torch.arange(seg.start, end).unsqueeze(1)
            mask, causal = torch.arange(end).unsqueeze(0) <= q_pos, False
        outs.append(
            F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, scale=scaling, enable_gqa=True)
        )
    return torch.cat(outs, dim=2)


AttentionInterface.register(ATTN_IMPLEMENTATION, slot_attention)
