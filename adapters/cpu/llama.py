"""ise's own forward pass for Llama-family decoders (Llama, Mistral, Qwen2), on ise's kernels.

transformers' modules spend a decode step of a small model mostly outside the matrix
multiplications: each layer is some sixty small torch ops (separate q, k and v projections,
rotary embedding and RMSNorm built from elementwise ops, a cache write per tensor), each paying
dispatch and an OpenMP wake-up. This forward fuses the q, k and v weights into one matrix and the
gate and up weights into another, and runs the elementwise work in three fused kernels, which
leaves nine calls per layer. The weights and the rotary embedding are taken from the loaded
transformers model, so it computes what transformers computes; models it does not cover run
through transformers with ise's attention plugged in.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel

from adapters.config import Quantization
from adapters.cpu.attention import AttentionMetadata, attend
from adapters.cpu.kernels import CPUKernels
from adapters.cpu.lm_head import lm_head
from adapters.cpu.packed_linear import fast_linear

FAMILY = frozenset({"llama", "mistral", "qwen2"})


def unsupported_reason(config: PretrainedConfig) -> str | None:
    """Why this forward cannot run the model exactly as transformers would, or None when it can."""
    if config.model_type not in FAMILY:
        return f"model type {config.model_type!r} is not one of {', '.join(sorted(FAMILY))}"
    if getattr(config, "hidden_act", "silu") != "silu":
        return f"activation {config.hidden_act!r} is not silu"
    if getattr(config, "sliding_window", None) is not None and getattr(config, "use_sliding_window", True):
        return "sliding-window attention"
    if getattr(config, "partial_rotary_factor", 1.0) != 1.0:
        return "partial rotary embedding"
    return None


@dataclass
class _Layer:
    input_norm: torch.Tensor
    qkv: nn.Module
    o: nn.Module
    post_norm: torch.Tensor
    gate_up: nn.Module
    down: nn.Module


def _fuse(kernels: CPUKernels, quantization: Quantization, *linears: nn.Linear) -> nn.Module:
    """One layer computing all of ``linears``' outputs side by side."""
    bias = None
    if any(lin.bias is not None for lin in linears):
        bias = torch.cat([lin.weight.new_zeros(lin.out_features) if lin.bias is None else lin.bias for lin in linears])
    return fast_linear(torch.cat([lin.weight for lin in linears]), bias, kernels, quantization)


class LlamaForward:
    def __init__(self, model: PreTrainedModel, kernels: CPUKernels, quantization: Quantization = "none") -> None:
        config = model.config
        self.kernels = kernels
        self.heads = config.num_attention_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.heads
        self.scale = self.head_dim**-0.5
        self.eps = float(config.rms_norm_eps)
        decoder = model.model
        self.embed = decoder.embed_tokens.weight.detach()
        self.rotary = decoder.rotary_emb
        # The last norm runs in float32 whatever the model's dtype: the logits are read off it.
        self.norm = decoder.norm.weight.detach().float()
        head = model.lm_head
        self.lm_head = lm_head(head.weight, head.bias, kernels)
        self.layers = [
            _Layer(
                input_norm=layer.input_layernorm.weight.detach(),
                qkv=_fuse(
                    kernels, quantization, layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj
                ),
                o=fast_linear(layer.self_attn.o_proj.weight, layer.self_attn.o_proj.bias, kernels, quantization),
                post_norm=layer.post_attention_layernorm.weight.detach(),
                gate_up=_fuse(kernels, quantization, layer.mlp.gate_proj, layer.mlp.up_proj),
                down=fast_linear(layer.mlp.down_proj.weight, layer.mlp.down_proj.bias, kernels, quantization),
            )
            for layer in decoder.layers
        ]

    def __call__(
        self, ids: torch.Tensor, positions: torch.Tensor, attn_metadata: AttentionMetadata, keep: torch.Tensor
    ) -> torch.Tensor:
        """Next-token logits [len(keep), vocab] of the packed rows ``keep``."""
        kernels, cache = self.kernels, attn_metadata.cache
        heads, dim = self.heads, self.head_dim
        tokens = ids.shape[0]
        residual = F.embedding(ids, self.embed)
        cos, sin = self.rotary(residual, positions.unsqueeze(0))
        cos, sin = cos[0].float().contiguous(), sin[0].float().contiguous()
        hidden = kernels.rms_norm(residual, None, self.layers[0].input_norm, self.eps)
        for index, layer in enumerate(self.layers):
            qkv = layer.qkv(hidden)
            kernels.rotary_cache_write(
                qkv, cos, sin, heads, cache.keys[index], cache.values[index], attn_metadata.slot_mapping
            )
            attended = attend(attn_metadata, index, qkv[:, : heads * dim].view(tokens, heads, dim), self.scale)
            hidden = kernels.rms_norm(layer.o(attended), residual, layer.post_norm, self.eps)
            mlp = layer.down(kernels.silu_mul(layer.gate_up(hidden)))
            if index + 1 < len(self.layers):
                hidden = kernels.rms_norm(mlp, residual, self.layers[index + 1].input_norm, self.eps)
        # The last residual sum and norm only at the kept rows, in float32 (a no-op cast in float32).
        final = kernels.rms_norm(mlp[keep].float(), residual[keep].float(), self.norm, self.eps)
        logits: torch.Tensor = self.lm_head(final)
        return logits
