"""Attention over the paged KV cache, for a step that packs every scheduled token into one row.

Every token's keys and values are written to the cache before attention, so each query token
simply attends to its own request's cached positions up to itself: decode tokens, prompt
starts and later prompt chunks alike, in one call of the paged kernel per layer. That kernel
reads the cache in place and takes a prompt's consecutive tokens together; measured against
torch's SDPA (which needs the context gathered and, for a later chunk, an explicit mask) it was
faster at every shape the engine meets: batched prompts, one long prompt, a later chunk over a
long context (figures in benchmarks/RESULTS.md).

The same function also plugs into transformers' attention interface, so models that ise's own
Llama-family forward does not cover still run on the paged cache: transformers computes their
projections, rotary embeddings and MLPs, ise decides where keys and values live and which of them
each query sees.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import AttentionInterface

from adapters.cpu.kernels import CPUKernels
from adapters.cpu.kv_cache import PagedKVCache

ATTN_IMPLEMENTATION = "ise_paged"


@dataclass(frozen=True)
class AttentionMetadata:
    """How this forward pass's packed tokens map to requests and cache slots."""

    cache: PagedKVCache
    kernels: CPUKernels
    slot_mapping: torch.Tensor  # [T] int64: cache slot each new token's keys and values go to
    block_tables: torch.Tensor  # [requests, max_blocks] int32: one row per request in the step
    seq_index: torch.Tensor  # [T] int32: the row of block_tables each token reads
    context_lens: torch.Tensor  # [T] int32: positions each token sees, itself included


def attend(attn_metadata: AttentionMetadata, layer: int, q: torch.Tensor, scale: float) -> torch.Tensor:
    """Attention of the step's queries ``q`` [T, H, D], whose keys and values are already in the
    cache. Returns [T, H * D]."""
    tokens, heads, head_dim = q.shape
    out = q.new_empty(tokens, heads * head_dim)
    attn_metadata.kernels.paged_attention(
        out,
        q,
        attn_metadata.cache.keys[layer],
        attn_metadata.cache.values[layer],
        attn_metadata.block_tables,
        attn_metadata.seq_index,
        attn_metadata.context_lens,
        attn_metadata.cache.block_size,
        scale,
    )
    return out


def transformers_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    *,
    ise_attn_metadata: AttentionMetadata,
    **_: object,
) -> tuple[torch.Tensor, None]:
    """transformers' attention interface over ``attend``: query [1, H, T, D], key and value
    [1, KVH, T, D] in, [1, T, H, D] out."""
    layer: int = module.layer_idx  # type: ignore[assignment]
    q = query[0].transpose(0, 1).contiguous()
    ise_attn_metadata.cache.write(
        layer, ise_attn_metadata.slot_mapping, key[0].transpose(0, 1), value[0].transpose(0, 1)
    )
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    out = attend(ise_attn_metadata, layer, q, scale)
    return out.view(q.shape).unsqueeze(0), None


AttentionInterface.register(ATTN_IMPLEMENTATION, transformers_attention)
