"""The vocabulary projection, returning float32 logits whatever dtype the model runs in.

A bfloat16 matrix product rounds its output to bfloat16: 8 bits of mantissa, a step of 0.0625
at a logit of 10. Next-token logits of a small model often lie that close together, so two
candidates come out exactly equal and the argmax picks the lower token id: the built-in model's
greedy answer to the README's question flipped from "The capital ..." to "L'Étoile ..." on that
rounding alone (issue 20; the share of tied positions is in benchmarks/RESULTS.md).

A float32 projection of the whole vocabulary would fix it at the cost of a float32 copy of the
largest matrix and a float32 product at every step. Only the best candidates can be reordered by
the rounding, so this keeps the fast bfloat16 product for the whole vocabulary and recomputes the
``REFINED_CANDIDATES`` best logits of each row in float32, from the model's own weights and the
float32 hidden state: a few hundred thousand multiply-adds a row instead of tens of millions.
Greedy choices, ``top_logprobs`` (at most 20) and the head of every sampled distribution then
carry float32 values; the tail keeps bfloat16's, which moves no choice a user can see.
"""

from __future__ import annotations

import torch
from torch import nn

from adapters.cpu.kernels import CPUKernels
from adapters.cpu.packed_linear import PackedLinear, fast_linear

# Above OpenAI's largest top_logprobs (20), with room for the near-ties the rounding can reorder.
REFINED_CANDIDATES = 32


class RefinedLogits(nn.Module):
    """``hidden @ weight.T + bias`` in the weight's dtype, its best entries recomputed in float32.

    ``hidden`` [..., hidden_size], any float dtype; returns float32 [..., vocab].
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, kernels: CPUKernels) -> None:
        super().__init__()
        self.weight = weight.detach()
        self.bias = None if bias is None else bias.detach()
        self.candidates = min(REFINED_CANDIDATES, self.weight.shape[0])
        # The whole vocabulary on the dtype's fast path (ise's GEMM where the CPU lacks bfloat16
        # kernels: torch's fallback there is several times slower).
        self.product = fast_linear(self.weight, self.bias, kernels)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        rows = hidden.reshape(-1, hidden.shape[-1])
        logits: torch.Tensor = self.product(rows.to(self.weight.dtype).contiguous()).float()
        top = logits.topk(self.candidates, dim=-1).indices
        exact = torch.einsum("rd,rkd->rk", rows.float(), self.weight[top].float())
        if self.bias is not None:
            exact += self.bias.float()[top]
        return logits.scatter_(1, top, exact).view(*hidden.shape[:-1], -1)


def lm_head(weight: torch.Tensor, bias: torch.Tensor | None, kernels: CPUKernels) -> nn.Module:
    """The vocabulary projection for ``weight``'s dtype: [rows, hidden] -> float32 [rows, vocab].

    float32 weights run on ise's GEMM, never quantized (the next token is read off its output).
    """
    if weight.dtype == torch.float32:
        return PackedLinear(weight, bias, kernels, "none")
    return RefinedLogits(weight, bias, kernels)
