"""Linear layers on ise's own float32 GEMM, their weights packed once at load.

A plain float32 ``nn.Linear`` goes to MKL, and oneDNN with prepacked weights was the faster of
torch's two on the AVX2 EPYC under this project; ise's kernel (``linear`` in kernels.cpp) beat
both at every row count a step has: 1 row 39-49 GFLOP/s against oneDNN's 14-33, 32 rows 175-179
against 117-147, 2,048 rows 156-174 against 146-161. Its fixed summation order also makes each
row's result independent of the batch it is computed in, so batched output equals solo output
bit for bit. Other dtypes keep torch's layers, which reach oneDNN's bfloat16 and AMX kernels.
"""

from __future__ import annotations

import torch
from torch import nn

from adapters.cpu.kernels import CPUKernels


class PackedLinear(nn.Module):
    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, kernels: CPUKernels) -> None:
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.kernels = kernels
        self.packed_weight = kernels.pack_linear_weight(weight.detach().contiguous())
        self.bias = None if bias is None else bias.detach().contiguous()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features).contiguous()
        out = self.kernels.linear(rows, self.packed_weight, self.bias, self.out_features)
        return out.view(*x.shape[:-1], self.out_features)


def can_pack(dtype: torch.dtype) -> bool:
    return dtype == torch.float32


def fast_linear(weight: torch.Tensor, bias: torch.Tensor | None, kernels: CPUKernels) -> nn.Module:
    """The fastest layer computing ``x @ weight.T + bias`` for this dtype: packed where that pays."""
    if can_pack(weight.dtype):
        return PackedLinear(weight, bias, kernels)
    linear = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, dtype=weight.dtype)
    linear.weight = nn.Parameter(weight.detach(), requires_grad=False)
    if bias is not None:
        linear.bias = nn.Parameter(bias.detach(), requires_grad=False)
    return linear


def pack_linears(model: nn.Module, kernels: CPUKernels) -> int:
    """Replace every ``nn.Linear`` in ``model`` by a packed one; return how many were replaced."""
    targets = [(name, module) for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    for name, module in targets:
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, attr, PackedLinear(module.weight, module.bias, kernels))
    return len(targets)
