"""The sampler's top_p search against the full sort it replaces, without a model.

It was written for speed (``adapters/cpu/sampler.py`` says by how much); this test holds it to the
same answer: the same nucleus as a full sort.
"""

from __future__ import annotations

import pytest
import torch

from adapters.cpu.sampler import _nucleus


def _sorted_nucleus(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """top_p by sorting the whole row, as the sampler did before."""
    values, order = torch.sort(probs, descending=True)
    cumulative = torch.cumsum(values, dim=-1)
    drop = (cumulative - values) >= top_p
    drop[0] = False
    return torch.zeros_like(probs).scatter_(0, order, values.masked_fill(drop, 0.0))


@pytest.mark.parametrize("size", [7, 300, 49_152])
@pytest.mark.parametrize("spread", [0.1, 1.0, 4.0, 12.0])
@pytest.mark.parametrize("top_p", [1e-30, 0.3, 0.9, 0.999999])
def test_nucleus_is_the_one_a_full_sort_finds(size: int, spread: float, top_p: float) -> None:
    probs = torch.softmax(torch.randn(size, generator=torch.Generator().manual_seed(size)) * spread, dim=-1)
    assert torch.equal(_nucleus(probs, top_p), _sorted_nucleus(probs, top_p))
