"""Linear layers on ise's own GEMM, weights packed once at load: float32, bfloat16, or int8 weight-only.

A plain float32 ``nn.Linear`` goes to MKL, and oneDNN with prepacked weights was the faster of
torch's two on the AVX2 EPYC under this project; ise's kernel (``linear`` in kernels.cpp) beat
both at every row count a step has: 1 row 39-49 GFLOP/s against oneDNN's 14-33, 32 rows 175-179
against 117-147, 2,048 rows 156-174 against 146-161. Its fixed summation order also makes each
row's result independent of the batch it is computed in, so batched output equals solo output
bit for bit.

bfloat16 weights take the same kernel where the CPU has no bfloat16 arithmetic (no AVX512-BF16
or AMX; oneDNN has no bfloat16 kernels for it and torch falls back to a slow reference GEMM): the
kernel widens each weight to float32 as it reads it, so half the bytes stream from memory, and
bfloat16 output is batch-invariant too. Where oneDNN has bfloat16 kernels (AMX, AVX512-BF16),
torch's layer runs them, over row counts from a small fixed set (``RowBucketedLinear``).

``--quantization int8`` stores the decoder layers' weights as int8, one scale per output column,
and keeps the arithmetic in float32: a quarter of the weight bytes stream from memory, which is
what bounds decoding a few requests, and batched output still equals solo output. Quantizing the
activations too (fbgemm's dynamic int8, one scale per call) ran the GEMMs faster but ruined
this model's perplexity: its activations have outlier channels (benchmarks/RESULTS.md).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from adapters.config import Quantization
from adapters.cpu.kernels import CPUKernels
from adapters.cpu.numerics import has_bf16_kernels


class PackedLinear(nn.Module):
    """``x @ weight.T + bias`` on ise's GEMM; float32 or bfloat16 in and out, as the weight."""

    def __init__(
        self, weight: torch.Tensor, bias: torch.Tensor | None, kernels: CPUKernels, quantization: Quantization
    ) -> None:
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.kernels = kernels
        self.packed_weight, self.scales = kernels.pack_linear_weight(
            weight.detach().contiguous(), quantization == "int8"
        )
        self.bias = None if bias is None else bias.detach().float().contiguous()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features).contiguous()
        out = self.kernels.linear(rows, self.packed_weight, self.scales, self.bias, self.out_features)
        return out.view(*x.shape[:-1], self.out_features)


# Row counts torch's layer is called with: powers of two up to 16, then multiples of 16 up to
# ROW_PIECE; more rows are computed ROW_PIECE at a time. oneDNN builds and caches a kernel for every
# problem shape it meets (up to its cache's capacity, 1,024 by default), and a serving engine meets
# every row count from 1 to --max-num-batched-tokens: the likely cause of bfloat16's memory growth
# over thousands of requests of varied lengths on an AMX Xeon (issue 25; not measurable on a CPU
# without these kernels). These buckets bound it to 20 shapes per weight, for at most 15 padded
# rows (AMX computes 16-row tiles anyway).
ROW_PIECE = 256


def row_bucket(rows: int) -> int:
    """The row count at most ROW_PIECE that ``rows`` is padded to."""
    if rows <= 16:
        return 1 << (rows - 1).bit_length()
    return -(-rows // 16) * 16


class RowBucketedLinear(nn.Module):
    """torch's linear layer (oneDNN: AMX or AVX512-BF16 kernels), called only with bucketed row counts."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.weight = weight.detach()
        self.bias = None if bias is None else bias.detach()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, x.shape[-1])
        pieces = []
        for start in range(0, rows.shape[0], ROW_PIECE):
            piece = rows[start : start + ROW_PIECE]
            padding = row_bucket(piece.shape[0]) - piece.shape[0]
            padded = F.pad(piece, (0, 0, 0, padding)) if padding else piece
            pieces.append(F.linear(padded, self.weight, self.bias)[: piece.shape[0]])
        out = pieces[0] if len(pieces) == 1 else torch.cat(pieces)
        return out.view(*x.shape[:-1], self.weight.shape[0])


def quantization_problem(quantization: Quantization, dtype: torch.dtype) -> str | None:
    """Why ``quantization`` cannot run with ``dtype``, or None when it can."""
    if quantization != "none" and dtype != torch.float32:
        return f"--quantization {quantization} keeps the arithmetic in float32; use --dtype float32"
    return None


def fast_linear(
    weight: torch.Tensor, bias: torch.Tensor | None, kernels: CPUKernels, quantization: Quantization = "none"
) -> nn.Module:
    """The fastest layer computing ``x @ weight.T + bias`` for this dtype, quantization and CPU."""
    if weight.dtype == torch.float32 or (weight.dtype == torch.bfloat16 and not has_bf16_kernels()):
        return PackedLinear(weight, bias, kernels, quantization)
    return RowBucketedLinear(weight, bias)


def pack_linears(model: nn.Module, kernels: CPUKernels, quantization: Quantization = "none") -> int:
    """Replace ``model``'s ``nn.Linear`` layers by ``fast_linear`` ones; return how many were replaced."""
    targets = [(name, module) for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    for name, module in targets:
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, attr, fast_linear(module.weight, module.bias, kernels, quantization))
    return len(targets)
