"""Runs the transformers model over the paged KV cache: one forward pass per engine step."""

from __future__ import annotations

import logging
from collections.abc import Sequence as Seq
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

from adapters.cpu.attention import ATTN_IMPLEMENTATION, PromptSegment, StepLayout
from adapters.cpu.kernels import paged_attention_kernel
from adapters.cpu.kv_cache import PagedKVCache
from adapters.cpu.packed_linear import can_pack, pack_linears
from adapters.cpu.scheduler import Chunk

log = logging.getLogger(__name__)


def model_context_length(model_dir: str | Path) -> int:
    config = AutoConfig.from_pretrained(model_dir)
    return int(getattr(config, "max_position_embeddings", 2048))


def eos_token_ids(model_dir: str | Path) -> frozenset[int]:
    """The tokens that end generation: the generation config's, else the model config's."""
    ids: set[int] = set()
    try:
        value = GenerationConfig.from_pretrained(model_dir).eos_token_id
    except OSError:
        value = AutoConfig.from_pretrained(model_dir).eos_token_id
    if isinstance(value, int):
        ids.add(value)
    elif value:
        ids.update(int(v) for v in value)
    return frozenset(ids)


class ModelRunner:
    def __init__(
        self, model_dir: str | Path, *, dtype: torch.dtype, kv_cache_bytes: int, block_size: int, kernel_dir: Path
    ) -> None:
        self.model = AutoModelForCausalLM.from_pretrained(
            model_dir, dtype=dtype, attn_implementation=ATTN_IMPLEMENTATION
        )
        self.model.eval()
        if can_pack(dtype):
            log.info("Packed %d linear layers for oneDNN", pack_linears(self.model, batch_hint=32))
        config = self.model.config
        shape = {
            "num_layers": config.num_hidden_layers,
            "block_size": block_size,
            "num_kv_heads": config.num_key_value_heads,
            "head_dim": getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads,
            "dtype": dtype,
        }
        num_blocks = kv_cache_bytes // PagedKVCache.bytes_per_block(**shape)
        self.cache = PagedKVCache(num_blocks=num_blocks, **shape)
        self.kernel = paged_attention_kernel(kernel_dir)
        log.info(
            "KV cache: %d blocks of %d tokens (%d tokens), %.2f GiB",
            num_blocks,
            block_size,
            num_blocks * block_size,
            self.cache.nbytes() / 2**30,
        )

    @torch.inference_mode()
    def step(self, chunks: Seq[Chunk]) -> tuple[list[Chunk], torch.Tensor]:
        """Compute every chunk in one forward pass over a packed row of tokens.

        Returns the chunks that end their sequence's known tokens, in order, and the next-token
        logits of each (one row per chunk).
        """
        ordered = sorted(chunks, key=lambda c: c.num_tokens > 1)  # decode tokens first
        num_decode = sum(1 for c in ordered if c.num_tokens == 1)
        bs = self.cache.block_size
        ids: list[int] = []
        positions: list[int] = []
        slots: list[int] = []
        prompts: list[PromptSegment] = []
        sampled: list[Chunk] = []
        last: list[int] = []
        for chunk in ordered:
            seq, start, n = chunk.seq, chunk.seq.num_computed, chunk.num_tokens
            table = seq.block_table
            # A later prompt chunk attends to its whole context, so map every position's slot.
            first = 0 if n > 1 and start else start
            chunk_slots = [table[p // bs] * bs + p % bs for p in range(first, start + n)]
            if n > 1:
                context = torch.tensor(chunk_slots) if start else None
                prompts.append(PromptSegment(offset=len(ids), length=n, start=start, context_slots=context))
            ids += seq.token_ids()[start : start + n]
            positions += range(start, start + n)
            slots += chunk_slots[start - first :]
            if chunk.samples:
                sampled.append(chunk)
                last.append(len(ids) - 1)
        decode = ordered[:num_decode]
        width = max((len(c.seq.block_table) for c in decode), default=0)
        layout = StepLayout(
            cache=self.cache,
            kernel=self.kernel,
            slot_mapping=torch.tensor(slots),
            num_decode=num_decode,
            block_tables=torch.tensor(
                [c.seq.block_table + [0] * (width - len(c.seq.block_table)) for c in decode], dtype=torch.int32
            ).view(num_decode, width),
            decode_rows=torch.arange(num_decode, dtype=torch.int32),
            context_lens=torch.tensor([c.seq.num_computed + 1 for c in decode], dtype=torch.int32),
            prompts=tuple(prompts),
        )
        out = self.model(
            input_ids=torch.tensor([ids]),
            position_ids=torch.tensor([positions]),
            use_cache=False,
            logits_to_keep=torch.tensor(last, dtype=torch.long),
            ise_layout=layout,
        )
        logits: torch.Tensor = out.logits[0]
        return sampled, logits
