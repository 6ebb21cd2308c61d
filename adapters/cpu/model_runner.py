"""Runs the transformers model over the slot KV cache: one forward pass per prefill or decode batch."""

from __future__ import annotations

import logging
from collections.abc import Sequence as Seq
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

from adapters.cpu.attention import ATTN_IMPLEMENTATION, PrefillSegment, StepLayout
from adapters.cpu.kv_cache import SlotKVCache

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PrefillItem:
    slot: int
    start: int
    token_ids: list[int]


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
        self,
        model_dir: str | Path,
        *,
        dtype: torch.dtype,
        num_slots: int,
        max_model_len: int,
    ) -> None:
        self.model = AutoModelForCausalLM.from_pretrained(
            model_dir, dtype=dtype, attn_implementation=ATTN_IMPLEMENTATION
        )
        self.model.eval()
        config = self.model.config
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        self.cache = SlotKVCache(
            num_layers=config.num_hidden_layers,
            num_slots=num_slots,
            num_kv_heads=config.num_key_value_heads,
            max_len=max_model_len,
            head_dim=head_dim,
            dtype=dtype,
        )
        log.info("KV cache: %d slots x %d tokens, %.2f GiB", num_slots, max_model_len, self.cache.nbytes() / 2**30)

    @torch.inference_mode()
    def prefill(self, items: Seq[PrefillItem]) -> torch.Tensor:
        """Run the new tokens of several requests as one packed row; return each one's last logits."""
        segments: list[PrefillSegment] = []
        ids: list[int] = []
        positions: list[int] = []
        last: list[int] = []
        offset = 0
        for item in items:
            n = len(item.token_ids)
            segments.append(PrefillSegment(slot=item.slot, start=item.start, offset=offset, length=n))
            ids.extend(item.token_ids)
            positions.extend(range(item.start, item.start + n))
            offset += n
            last.append(offset - 1)
        layout = StepLayout(cache=self.cache, prefill=tuple(segments))
        out = self.model(
            input_ids=torch.tensor([ids]),
            position_ids=torch.tensor([positions]),
            use_cache=False,
            logits_to_keep=torch.tensor(last),
            ise_layout=layout,
        )
        logits: torch.Tensor = out.logits[0]
        return logits

    @torch.inference_mode()
    def decode(self, token_ids: Seq[int], positions: Seq[int]) -> torch.Tensor:
        """One new token for each of the requests in slots ``0..n-1``; return their next logits."""
        pos = torch.tensor(positions)
        kv_len = int(pos.max()) + 1
        mask = (torch.arange(kv_len).unsqueeze(0) <= pos.unsqueeze(1)).view(len(positions), 1, 1, kv_len)
        layout = StepLayout(cache=self.cache, decode_positions=pos, decode_mask=mask)
        out = self.model(
            input_ids=torch.tensor(token_ids).unsqueeze(1),
            position_ids=pos.unsqueeze(1),
            use_cache=False,
            ise_layout=layout,
        )
        logits: torch.Tensor = out.logits[:, -1]
        return logits
