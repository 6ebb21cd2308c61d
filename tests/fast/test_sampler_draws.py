"""The sampler's hand-written draws against the torch ops they replace (sort, multinomial), without a model.

They were written for speed (``adapters/cpu/sampler.py`` says by how much); these tests hold them
to the same answers: the same nucleus as a full sort, the same distribution as a multinomial draw.
"""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from adapters.cpu.sampler import _draw, _nucleus


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


def test_draws_follow_the_distribution_and_never_pick_a_zero() -> None:
    probs = torch.tensor([0.5, 0.0, 0.3, 0.2, 0.0])
    generator = torch.Generator().manual_seed(0)
    draws = 20_000
    counts = Counter(_draw(probs, generator) for _ in range(draws))
    assert set(counts) == {0, 2, 3}
    for token, p in [(0, 0.5), (2, 0.3), (3, 0.2)]:
        assert abs(counts[token] / draws - p) < 4 * (p * (1 - p) / draws) ** 0.5


@pytest.mark.parametrize(
    "probs", [torch.tensor([float("nan"), 0.5]), torch.zeros(3), torch.tensor([float("inf"), 1.0])]
)
def test_a_distribution_that_is_not_one_fails_the_draw(probs: torch.Tensor) -> None:
    with pytest.raises(ValueError, match="invalid distribution"):
        _draw(probs, torch.Generator().manual_seed(0))
