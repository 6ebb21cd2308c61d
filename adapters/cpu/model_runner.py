"""Runs the model over the paged KV cache: one forward pass per engine step."""

from __future__ import annotations

import logging
from collections.abc import Sequence as Seq
from pathlib import Path
from typing import Literal, Protocol

import torch
from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig, PreTrainedModel

from adapters.cpu.attention import ATTN_IMPLEMENTATION, StepLayout
from adapters.cpu.kernels import CPUKernels, cpu_kernels
from adapters.cpu.kv_cache import PagedKVCache
from adapters.cpu.llama import LlamaForward, unsupported_reason
from adapters.cpu.packed_linear import Quantization, pack_linears, quantization_problem
from adapters.cpu.scheduler import Chunk

ModelImpl = Literal["auto", "ise", "transformers"]

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


class Forward(Protocol):
    def __call__(
        self, ids: torch.Tensor, positions: torch.Tensor, layout: StepLayout, keep: torch.Tensor
    ) -> torch.Tensor: ...


class TransformersForward:
    """Any transformers causal LM, its attention routed to ise's paged cache."""

    def __init__(self, model: PreTrainedModel, kernels: CPUKernels, quantization: Quantization) -> None:
        self.model = model
        if model.dtype == torch.float32:
            count = pack_linears(model, kernels, quantization)
            log.info(
                "%d linear layers on ise's GEMM, %s weights", count, "int8" if quantization == "int8" else "float32"
            )

    def __call__(
        self, ids: torch.Tensor, positions: torch.Tensor, layout: StepLayout, keep: torch.Tensor
    ) -> torch.Tensor:
        out = self.model(
            input_ids=ids.unsqueeze(0),
            position_ids=positions.unsqueeze(0),
            use_cache=False,
            logits_to_keep=keep,
            ise_layout=layout,
        )
        logits: torch.Tensor = out.logits[0]
        return logits


def _forward(model: PreTrainedModel, impl: ModelImpl, kernels: CPUKernels, quantization: Quantization) -> Forward:
    reason = unsupported_reason(model.config)
    if impl == "ise" and reason:
        raise ValueError(f"--model-impl ise cannot run this model: {reason}; use auto or transformers")
    if impl == "transformers" or reason:
        log.info("Running the model through transformers%s", f" ({reason})" if reason else "")
        return TransformersForward(model, kernels, quantization)
    log.info("Running the model on ise's Llama-family forward")
    return LlamaForward(model, kernels, quantization)


class ModelRunner:
    def __init__(
        self,
        model_dir: str | Path,
        *,
        dtype: torch.dtype,
        kv_cache_bytes: int,
        block_size: int,
        kernel_dir: Path,
        model_impl: ModelImpl = "auto",
        quantization: Quantization = "none",
    ) -> None:
        problem = quantization_problem(quantization, dtype)
        if problem:
            raise ValueError(problem)
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype, attn_implementation=ATTN_IMPLEMENTATION)
        model.eval()
        self.kernels = cpu_kernels(kernel_dir)
        self.forward = _forward(model, model_impl, self.kernels, quantization)
        config = model.config
        shape = {
            "num_layers": config.num_hidden_layers,
            "block_size": block_size,
            "num_kv_heads": config.num_key_value_heads,
            "head_dim": getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads,
            "dtype": dtype,
        }
        num_blocks = kv_cache_bytes // PagedKVCache.bytes_per_block(**shape)
        self.cache = PagedKVCache(num_blocks=num_blocks, **shape)
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
        bs = self.cache.block_size
        ids: list[int] = []
        positions: list[int] = []
        slots: list[int] = []
        rows: list[int] = []
        sampled: list[Chunk] = []
        last: list[int] = []
        for row, chunk in enumerate(chunks):
            seq, start, n = chunk.seq, chunk.seq.num_computed, chunk.num_tokens
            table = seq.block_table
            ids += seq.token_ids()[start : start + n]
            positions += range(start, start + n)
            slots += [table[p // bs] * bs + p % bs for p in range(start, start + n)]
            rows += [row] * n
            if chunk.samples:
                sampled.append(chunk)
                last.append(len(ids) - 1)
        width = max(len(c.seq.block_table) for c in chunks)
        layout = StepLayout(
            cache=self.cache,
            kernels=self.kernels,
            slot_mapping=torch.tensor(slots, dtype=torch.int64),
            block_tables=torch.tensor(
                [c.seq.block_table + [0] * (width - len(c.seq.block_table)) for c in chunks], dtype=torch.int32
            ),
            table_rows=torch.tensor(rows, dtype=torch.int32),
            context_lens=torch.tensor([p + 1 for p in positions], dtype=torch.int32),
        )
        logits = self.forward(torch.tensor(ids), torch.tensor(positions), layout, torch.tensor(last, dtype=torch.long))
        return sampled, logits

    @torch.inference_mode()
    def prompt_logits(self, token_ids: list[int]) -> torch.Tensor:
        """Next-token logits [len(token_ids), vocab] after every position of one sequence.

        For scoring text (quality checks), not serving: the sequence takes the cache's first blocks,
        so the runner must not be serving requests at the same time.
        """
        n, bs = len(token_ids), self.cache.block_size
        blocks = -(-n // bs)
        if blocks > self.cache.num_blocks:
            raise ValueError(f"{n} tokens do not fit the KV cache of {self.cache.num_blocks * bs}")
        layout = StepLayout(
            cache=self.cache,
            kernels=self.kernels,
            slot_mapping=torch.arange(n, dtype=torch.int64),
            block_tables=torch.arange(blocks, dtype=torch.int32).unsqueeze(0),
            table_rows=torch.zeros(n, dtype=torch.int32),
            context_lens=torch.arange(1, n + 1, dtype=torch.int32),
        )
        positions = torch.arange(n)
        return self.forward(torch.tensor(token_ids), positions, layout, positions)
