"""Linear layers with their weights prepacked once into oneDNN's blocked layout.

A plain float32 ``nn.Linear`` goes to MKL's sgemm, which re-reads the weight in its row-major
layout at every call; on the AVX2-only EPYC under this project it ran the decode step's shapes at
81-84 GFLOP/s (32 rows) and the 49k-wide vocabulary projection at 34. oneDNN with the weight
reordered ahead of time ran the same shapes at 113-124 and 80 GFLOP/s, and gives every row the
same result whatever the batch size (MKL's does not), which keeps batched output equal to solo
output. This is the packing torch.compile's CPU backend does when it freezes weights; ise does it
without a compile step.
"""

from __future__ import annotations

import torch
from torch import nn


class PackedLinear(nn.Module):
    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, batch_hint: int) -> None:
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.packed_weight = torch.ops.mkldnn._reorder_linear_weight(weight.detach(), batch_hint)
        self.bias = None if bias is None else bias.detach()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = torch.ops.mkldnn._linear_pointwise(x, self.packed_weight, self.bias, "none", [], "")
        return out


def can_pack(dtype: torch.dtype) -> bool:
    """Packing pays for float32; lower precisions already take oneDNN's own paths."""
    return dtype == torch.float32 and torch.backends.mkldnn.is_available()


def fast_linear(weight: torch.Tensor, bias: torch.Tensor | None, batch_hint: int) -> nn.Module:
    """The fastest layer computing ``x @ weight.T + bias`` for this dtype: packed where that pays."""
    if can_pack(weight.dtype):
        return PackedLinear(weight, bias, batch_hint)
    linear = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, dtype=weight.dtype)
    linear.weight = nn.Parameter(weight.detach(), requires_grad=False)
    if bias is not None:
        linear.bias = nn.Parameter(bias.detach(), requires_grad=False)
    return linear


def pack_linears(model: nn.Module, batch_hint: int) -> int:
    """Replace every ``nn.Linear`` in ``model`` by a packed one; return how many were replaced."""
    targets = [(name, module) for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    for name, module in targets:
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, attr, PackedLinear(module.weight, module.bias, batch_hint))
    return len(targets)
