"""Runs the model over the paged KV cache and samples: one forward pass per engine step.

The runner turns what the scheduler decided into token ids (vLLM's ``execute_model``): it packs
the step's tokens into one row, runs the forward pass and samples each finished chunk's next token
inside, so no logits leave it; the sampler is where per-request logits work lives. The model
computes logits only at the positions that need them: each chunk's last position where it samples,
and the prompt positions of a request that asked for prompt logprobs. Constrained requests'
grammar bitmasks are filled on a worker thread while the forward pass runs.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Protocol

import torch
from transformers import AutoModelForCausalLM, PreTrainedModel

from adapters.config import ModelImpl, Quantization
from adapters.cpu.attention import ATTN_IMPLEMENTATION, AttentionMetadata
from adapters.cpu.kernels import CPUKernels, cpu_kernels
from adapters.cpu.kv_cache import PagedKVCache
from adapters.cpu.llama import LlamaForward, unsupported_reason
from adapters.cpu.lm_head import lm_head
from adapters.cpu.outputs import ModelRunnerOutput
from adapters.cpu.packed_linear import pack_linears
from adapters.cpu.sampler import Sampler, prompt_logprobs
from adapters.cpu.scheduler import SchedulerOutput
from adapters.cpu.structured_output import Grammar
from adapters.engine import TokenLogprobs
from adapters.model_info import KVLayout

log = logging.getLogger(__name__)


class Forward(Protocol):
    def __call__(
        self, ids: torch.Tensor, positions: torch.Tensor, attn_metadata: AttentionMetadata, keep: torch.Tensor
    ) -> torch.Tensor: ...


class TransformersForward:
    """Any transformers causal LM, its attention routed to ise's paged cache."""

    def __init__(self, model: PreTrainedModel, kernels: CPUKernels, quantization: Quantization) -> None:
        self.model = model
        head = model.get_output_embeddings()
        model.set_output_embeddings(lm_head(head.weight, head.bias, kernels))
        count = pack_linears(model, kernels, quantization)
        log.info("%d linear layers packed, %s weights", count, "int8" if quantization == "int8" else model.dtype)

    def __call__(
        self, ids: torch.Tensor, positions: torch.Tensor, attn_metadata: AttentionMetadata, keep: torch.Tensor
    ) -> torch.Tensor:
        out = self.model(
            input_ids=ids.unsqueeze(0),
            position_ids=positions.unsqueeze(0),
            use_cache=False,
            logits_to_keep=keep,
            ise_attn_metadata=attn_metadata,
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
        eos_token_ids: frozenset[int] = frozenset(),
    ) -> None:
        # Safetensors only: a pickled checkpoint (pytorch_model.bin) can run code when loaded.
        model = AutoModelForCausalLM.from_pretrained(
            model_dir, dtype=dtype, attn_implementation=ATTN_IMPLEMENTATION, use_safetensors=True
        )
        model.eval()
        self.kernels = cpu_kernels(kernel_dir)
        self.forward = _forward(model, model_impl, self.kernels, quantization)
        self.sampler = Sampler(eos_token_ids)
        # Grammar bitmasks are filled here while the forward pass runs (xgrammar and torch's
        # kernels both release the GIL).
        self._grammar_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ise-grammar")
        layout = KVLayout.of(model.config)
        num_blocks = layout.num_blocks(kv_cache_bytes, block_size, dtype.itemsize)
        self.cache = PagedKVCache(layout, num_blocks=num_blocks, block_size=block_size, dtype=dtype)
        log.info(
            "KV cache: %d blocks of %d tokens (%d tokens), %.2f GiB",
            num_blocks,
            block_size,
            num_blocks * block_size,
            self.cache.nbytes() / 2**30,
        )

    @torch.inference_mode()
    def execute_model(self, scheduler_output: SchedulerOutput) -> ModelRunnerOutput:
        """Compute the step in one forward pass over a packed row of tokens and sample.

        Returns the new tokens of each request whose chunk reaches its last known token (its
        next one, after the drafts the sampler kept), in the order of ``scheduler_output.sampling``
        (or the error that ended that request alone), and the prompt logprobs of the positions
        this step computed for requests that asked for them.
        """
        grammars = [r.seq.grammar for r in scheduler_output.sampling if r.seq.grammar is not None]
        masks = self._grammar_pool.submit(_fill_bitmasks, grammars) if grammars else None
        logits = self.forward_step(scheduler_output)
        sample_rows: list[int] = []
        prompt: dict[str, list[TokenLogprobs]] = {}
        row = 0
        for scheduled in scheduler_output.requests:
            positions = scheduled.prompt_logprob_positions
            if positions:
                seq = scheduled.seq
                num_top = seq.request.params.prompt_logprobs or 0
                following = [seq.all_token_ids[p + 1] for p in positions]
                prompt[seq.request_id] = prompt_logprobs(logits[row : row + len(positions)], following, num_top)
                row += len(positions)
            if scheduled.samples:
                rows = 1 + len(scheduled.draft_token_ids)
                sample_rows += range(row, row + rows)
                row += rows
        if prompt:
            logits = logits[sample_rows]
        if masks is not None:
            masks.result()
        return ModelRunnerOutput(self.sampler.sample(logits, scheduler_output.sampling), prompt)

    def forward_step(self, scheduler_output: SchedulerOutput) -> torch.Tensor:
        """Next-token logits at the positions the step keeps, request by request in order.

        Each request's ``prompt_logprob_positions`` first, then, where it samples, its chunk's last
        position and its drafts' positions: without prompt logprobs and drafts, one row per
        sampling request.
        """
        bs = self.cache.block_size
        ids: list[int] = []
        positions: list[int] = []
        slots: list[int] = []
        seq_index: list[int] = []
        keep: list[int] = []
        for index, scheduled in enumerate(scheduler_output.requests):
            seq, start, n = scheduled.seq, scheduled.num_computed_tokens, scheduled.num_scheduled_tokens
            table = seq.block_table
            drafts = scheduled.draft_token_ids
            offset = len(ids) - start  # the packed row's index of position 0 of this sequence
            ids += seq.all_token_ids[start : start + n - len(drafts)]
            ids += drafts
            positions += range(start, start + n)
            slots += [table[p // bs] * bs + p % bs for p in range(start, start + n)]
            seq_index += [index] * n
            keep += [offset + p for p in scheduled.prompt_logprob_positions]
            if scheduled.samples:
                keep += range(len(ids) - 1 - len(drafts), len(ids))
        tables = [r.seq.block_table for r in scheduler_output.requests]
        width = max(len(t) for t in tables)
        attn_metadata = AttentionMetadata(
            cache=self.cache,
            kernels=self.kernels,
            slot_mapping=torch.tensor(slots, dtype=torch.int64),
            block_tables=torch.tensor([t + [0] * (width - len(t)) for t in tables], dtype=torch.int32),
            seq_index=torch.tensor(seq_index, dtype=torch.int32),
            context_lens=torch.tensor([p + 1 for p in positions], dtype=torch.int32),
        )
        return self.forward(
            torch.tensor(ids), torch.tensor(positions), attn_metadata, torch.tensor(keep, dtype=torch.long)
        )

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
        attn_metadata = AttentionMetadata(
            cache=self.cache,
            kernels=self.kernels,
            slot_mapping=torch.arange(n, dtype=torch.int64),
            block_tables=torch.arange(blocks, dtype=torch.int32).unsqueeze(0),
            seq_index=torch.zeros(n, dtype=torch.int32),
            context_lens=torch.arange(1, n + 1, dtype=torch.int32),
        )
        positions = torch.arange(n)
        return self.forward(torch.tensor(token_ids), positions, attn_metadata, positions)


def _fill_bitmasks(grammars: list[Grammar]) -> None:
    for grammar in grammars:
        grammar.fill_bitmask()
