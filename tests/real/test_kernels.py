"""ise's hand-written CPU kernels against plain torch on the same inputs.

The engine tests show that whole requests come out right; these pin each kernel down at the
shapes where a tiled, vectorized kernel goes wrong: contexts shorter than a vector, ragged tails
of a tile, blocks scattered over the cache, several query heads per KV head, both threads busy.
"""

from __future__ import annotations

import random

import pytest
import torch

from adapters.cpu.kernels import CPUKernels, cpu_kernels
from adapters.cpu.packed_linear import ROW_PIECE, RowBucketedLinear, row_bucket
from server.config.settings import Settings

BLOCK = 16


@pytest.fixture(scope="module")
def kernels() -> CPUKernels:
    return cpu_kernels(Settings().cache_dir)


def _reference_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, slots: list[list[int]], scale: float
) -> torch.Tensor:
    """Each query row [H, D] over its own context's cache rows, in float64."""
    heads, kv_heads = q.shape[1], k.shape[1]
    rows = []
    for t, context in enumerate(slots):
        index = torch.tensor(context)
        keys = k[index // BLOCK, :, index % BLOCK].double().repeat_interleave(heads // kv_heads, dim=1)  # [n, H, D]
        values = v[index // BLOCK, :, index % BLOCK].double().repeat_interleave(heads // kv_heads, dim=1)
        weights = torch.softmax(torch.einsum("hd,nhd->hn", q[t].double() * scale, keys), dim=-1)
        rows.append(torch.einsum("hn,nhd->hd", weights, values).reshape(-1))
    return torch.stack(rows)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
@pytest.mark.parametrize(("heads", "kv_heads", "head_dim"), [(9, 3, 64), (4, 4, 80), (8, 1, 128)])
def test_paged_attention_matches_torch(
    kernels: CPUKernels, dtype: torch.dtype, heads: int, kv_heads: int, head_dim: int
) -> None:
    """Decode tokens of several requests, then a prompt chunk: 11 tokens of one request, each
    seeing its context up to itself (more tokens than the kernel takes together, so two runs)."""
    rng = random.Random(0)
    torch.manual_seed(0)
    lengths = [1, 7, 8, 33, 100, 257]  # under a vector, ragged vector and tile tails, several blocks
    chunk = list(range(40, 51))  # context lengths of the chunk's tokens: positions 39..49
    num_blocks = sum(-(-n // BLOCK) for n in [*lengths, chunk[-1]]) + 5
    order = list(range(num_blocks))
    rng.shuffle(order)  # blocks scattered over the cache, as after eviction and reuse
    k = torch.randn(num_blocks, kv_heads, BLOCK, head_dim).to(dtype)
    v = torch.randn(num_blocks, kv_heads, BLOCK, head_dim).to(dtype)
    tables = [[order.pop() for _ in range(-(-n // BLOCK))] for n in [*lengths, chunk[-1]]]
    seq_index = [*range(len(lengths)), *[len(lengths)] * len(chunk)]
    context_lens = [*lengths, *chunk]
    slots = [
        [tables[row][p // BLOCK] * BLOCK + p % BLOCK for p in range(n)]
        for row, n in zip(seq_index, context_lens, strict=True)
    ]
    width = max(len(t) for t in tables)
    block_tables = torch.tensor([t + [0] * (width - len(t)) for t in tables], dtype=torch.int32)
    q = torch.randn(len(context_lens), heads, head_dim).to(dtype)
    out = torch.empty(len(context_lens), heads * head_dim, dtype=dtype)
    scale = head_dim**-0.5
    rows = torch.tensor(seq_index, dtype=torch.int32)
    kernels.paged_attention(
        out, q, k, v, block_tables, rows, torch.tensor(context_lens, dtype=torch.int32), BLOCK, scale
    )
    expected = _reference_attention(q, k, v, slots, scale)
    tolerance = 1e-5 if dtype == torch.float32 else 1e-2
    torch.testing.assert_close(out.double(), expected, rtol=tolerance, atol=tolerance)


@pytest.mark.parametrize("weights", ["float32", "int8", "bfloat16"])
@pytest.mark.parametrize(("k", "n"), [(576, 960), (1536, 37), (8, 16)])
def test_linear_matches_torch_and_gives_each_row_the_same_bits_at_any_batch(
    kernels: CPUKernels, k: int, n: int, weights: str
) -> None:
    torch.manual_seed(0)
    weight, bias = torch.randn(n, k), torch.randn(n)
    x = torch.randn(300, k)  # more rows than one row block holds, and a ragged tail of rows
    if weights == "bfloat16":  # bfloat16 in and out, float32 arithmetic
        weight, x = weight.bfloat16(), x.bfloat16()
    packed, scales = kernels.pack_linear_weight(weight, weights == "int8")
    if weights == "int8":
        # What the kernel must compute: the weights as their int8 codes times each column's scale.
        step = weight.abs().amax(dim=1, keepdim=True) / 127
        assert packed.dtype == torch.int8 and torch.allclose(scales, step.squeeze(1))
        weight = torch.round(weight / step) * step
    out = kernels.linear(x, packed, scales, bias, n)
    assert out.dtype == x.dtype
    expected = x.double() @ weight.double().T + bias.double()
    if weights == "bfloat16":  # the float32 sum, rounded to bfloat16 once
        torch.testing.assert_close(out, expected.bfloat16(), rtol=1e-2, atol=1e-4 * k**0.5)
    else:
        torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-4 * k**0.5)
    for rows in (slice(0, 1), slice(5, 12), slice(17, 49), slice(290, 300)):
        assert torch.equal(kernels.linear(x[rows].contiguous(), packed, scales, bias, n), out[rows])
    no_bias = kernels.linear(x[:3].contiguous(), packed, scales, None, n).float()
    if weights == "bfloat16":  # rounded once with the bias and once without
        torch.testing.assert_close(no_bias, out[:3].float() - bias, rtol=1e-2, atol=0.1)
    else:
        torch.testing.assert_close(no_bias, out[:3] - bias)


def test_row_bucketed_linear_computes_every_row_count_from_a_few_shapes() -> None:
    assert [row_bucket(r) for r in (1, 2, 3, 5, 16, 17, 33, 256)] == [1, 2, 4, 8, 16, 32, 48, 256]
    assert len({row_bucket(r) for r in range(1, ROW_PIECE + 1)}) == 20
    torch.manual_seed(0)
    weight, bias = torch.randn(37, 64), torch.randn(37)
    layer = RowBucketedLinear(weight, bias)
    for rows in (1, 3, 17, ROW_PIECE, 2 * ROW_PIECE + 5):
        x = torch.randn(2, rows, 64)
        torch.testing.assert_close(layer(x), torch.nn.functional.linear(x, weight, bias))
