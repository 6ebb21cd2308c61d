"""Linear layers on ise's own GEMM, weights packed once at load: float32, or int8 weight-only.

A plain float32 ``nn.Linear`` goes to MKL, and oneDNN with prepacked weights was the faster of
torch's two on the AVX2 EPYC under this project; ise's kernel (``linear`` in kernels.cpp) beat
both at every row count a step has: 1 row 39-49 GFLOP/s against oneDNN's 14-33, 32 rows 175-179
against 117-147, 2,048 rows 156-174 against 146-161. Its fixed summation order also makes each
row's result independent of the batch it is computed in, so batched output equals solo output
bit for bit. Other dtypes keep torch's layers, which reach oneDNN's bfloat16 and AMX kernels.

``--quantization int8`` stores the decoder layers' weights as int8, one scale per output column,
and keeps the arithmetic in float32: a quarter of the weight bytes stream from memory, which is
what bounds decoding a few requests, and batched output still equals solo output. Quantizing the
activations too (fbgemm's dynamic int8, one scale per call) ran the GEMMs faster but ruined
this model's perplexity: its activations have outlier channels (benchmarks/RESULTS.md).
"""

from __future__ import annotations

import torch
from torch import nn

from adapters.config import Quantization
from adapters.cpu.kernels import CPUKernels


class PackedLinear(nn.Module):
    def __init__(
        self, weight: torch.Tensor, bias: torch.Tensor | None, kernels: CPUKernels, quantization: Quantization
    ) -> None:
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.kernels = kernels
        self.packed_weight, self.scales = kernels.pack_linear_weight(
            weight.detach().float().contiguous(), quantization == "int8"
        )
        self.bias = None if bias is None else bias.detach().float().contiguous()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features).contiguous()
        out = self.kernels.linear(rows, self.packed_weight, self.scales, self.bias, self.out_features)
        return out.view(*x.shape[:-1], self.out_features)


def quantization_problem(quantization: Quantization, dtype: torch.dtype) -> str | None:
    """Why ``quantization`` cannot run with ``dtype``, or None when it can."""
    if quantization != "none" and dtype != torch.float32:
        return f"--quantization {quantization} keeps the arithmetic in float32; use --dtype float32"
    return None


def fast_linear(
    weight: torch.Tensor, bias: torch.Tensor | None, kernels: CPUKernels, quantization: Quantization = "none"
) -> nn.Module:
    """The fastest layer computing ``x @ weight.T + bias`` for this dtype and quantization."""
    if weight.dtype == torch.float32:
        return PackedLinear(weight, bias, kernels, quantization)
    linear = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, dtype=weight.dtype)
    linear.weight = nn.Parameter(weight.detach(), requires_grad=False)
    if bias is not None:
        linear.bias = nn.Parameter(bias.detach(), requires_grad=False)
    return linear


def pack_linears(model: nn.Module, kernels: CPUKernels, quantization: Quantization = "none") -> int:
    """Replace ``model``'s ``nn.Linear`` layers by ``fast_linear`` ones; return how many were replaced."""
    targets = [(name, module) for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    for name, module in targets:
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, attr, fast_linear(module.weight, module.bias, kernels, quantization))
    return len(targets)
