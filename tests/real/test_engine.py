"""The CPU engine itself, in process, with the real model and a deliberately small KV cache.

A small cache makes preemption, eviction and queueing happen with a handful of requests. Every
output is compared with the same request run alone (greedy, float32, where batching changes no
token), so whatever the engine does to schedule a request, its user sees the same text.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import aclosing
from pathlib import Path
from typing import Any

import pytest
from transformers import AutoConfig, LlamaConfig

from adapters.cpu.engine import CPUEngine
from adapters.cpu.llama import unsupported_reason
from adapters.cpu.numerics import has_bf16_kernels
from adapters.engine import EngineRequest, SamplingParams
from server.text.tokenization import Tokenization
from tests.real.helpers import ServerHandle, cpu_engine

BLOCK = 16
MAX_MODEL_LEN = 256
# Float32 blocks of the built-in model are 0.70 MiB; 24 of them hold 384 tokens, room for one
# full-length request but not for the bursts below.
KV_CACHE_BYTES = 24 * 2 * 30 * BLOCK * 3 * 64 * 4
ENGINE_OPTIONS: dict[str, Any] = {
    "max_model_len": MAX_MODEL_LEN,
    "max_num_seqs": 8,
    "max_num_batched_tokens": 256,
    "threads": 2,
    "kv_cache_gib": KV_CACHE_BYTES / 2**30,
    "block_size": BLOCK,
    "prefill_chunk_tokens": 32,
    "long_prefill_token_threshold": 64,
}


@pytest.fixture(scope="module")
async def engine(server: ServerHandle) -> AsyncIterator[CPUEngine]:
    cpu = cpu_engine(server.model_dir, **ENGINE_OPTIONS)
    await cpu.start()
    yield cpu
    await cpu.shutdown()


@pytest.fixture(scope="module")
def tokenization(server: ServerHandle) -> Tokenization:
    return Tokenization(server.model_dir)


def _prompt(tokenization: Tokenization, question: str, system: str = "You are a helpful assistant.") -> list[int]:
    return tokenization.chat_prompt([{"role": "system", "content": system}, {"role": "user", "content": question}])


async def _generate(engine: CPUEngine, name: str, prompt: list[int], max_tokens: int) -> list[int]:
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)
    tokens: list[int] = []
    async for out in engine.generate(EngineRequest(name, prompt, params)):
        tokens += out.new_token_ids
    return tokens


async def test_batched_equals_solo_across_preemption_and_prefix_hits(
    engine: CPUEngine, tokenization: Tokenization
) -> None:
    shared = "You are a terse assistant for a shipping company. " * 6  # a system prompt several blocks long
    prompts = [
        _prompt(tokenization, question, shared)
        for question in ["Where is my parcel?", "How do I return an item?", "Do you ship abroad?"]
    ] + [_prompt(tokenization, q) for q in ["Name three rivers.", "What is a prime number?", "Describe autumn."]]
    solo = [await _generate(engine, f"solo{i}", p, 60) for i, p in enumerate(prompts)]
    before = engine.stats()
    together = await asyncio.gather(*[_generate(engine, f"batch{i}", p, 60) for i, p in enumerate(prompts)])
    after = engine.stats()
    assert together == solo
    # Six requests of ~120 tokens do not fit in 384 tokens of cache at once: some were preempted
    # and recomputed, and the shared system prompt was found in the prefix cache.
    assert after.preemptions > before.preemptions
    assert after.prefix_cache_hit_tokens > before.prefix_cache_hit_tokens
    assert after.kv_blocks_used == 0 and after.running == 0 and after.waiting == 0


async def test_aborted_requests_free_their_blocks(engine: CPUEngine, tokenization: Tokenization) -> None:
    async def start_and_leave(index: int) -> int:
        params = SamplingParams(max_tokens=200, temperature=0.0, ignore_eos=True)
        request = EngineRequest(f"leaver{index}", _prompt(tokenization, f"Story number {index}:"), params)
        received = 0
        async with aclosing(engine.generate(request)) as outputs:
            async for out in outputs:
                received += len(out.new_token_ids)
                if received >= 5:
                    break  # closing the stream aborts the request
        return received

    assert await asyncio.gather(*[start_and_leave(i) for i in range(4)]) == [5] * 4
    for _ in range(100):
        stats = engine.stats()
        if stats.running == 0 and stats.kv_blocks_used == 0:
            break
        await asyncio.sleep(0.05)
    assert stats.running == 0 and stats.waiting == 0 and stats.kv_blocks_used == 0


async def test_burst_larger_than_the_cache_drains(engine: CPUEngine, tokenization: Tokenization) -> None:
    prompts = [_prompt(tokenization, f"Fact {i}: the number {i * 7} is") for i in range(16)]
    outputs = await asyncio.gather(*[_generate(engine, f"burst{i}", p, 60) for i, p in enumerate(prompts)])
    assert [len(o) for o in outputs] == [60] * 16
    stats = engine.stats()
    assert stats.waiting == 0 and stats.running == 0 and stats.kv_blocks_used == 0


async def test_ise_forward_computes_what_transformers_computes(engine: CPUEngine, tokenization: Tokenization) -> None:
    """The fused Llama-family forward (the default for the built-in model) against transformers'
    own modules on the same cache and kernels: same greedy tokens, through chunked prefill (the
    long prompt arrives in 32-token chunks while the others decode) and batching."""
    prompts = [
        _prompt(tokenization, "Explain what a compiler does, step by step. " * 4),
        _prompt(tokenization, "Name three rivers."),
        _prompt(tokenization, "Write a haiku about the sea."),
    ]
    reference = cpu_engine(Path(engine.config.model.path), **ENGINE_OPTIONS, model_impl="transformers")
    await reference.start()
    try:
        expected = await asyncio.gather(*[_generate(reference, f"hf{i}", p, 40) for i, p in enumerate(prompts)])
    finally:
        await reference.shutdown()
    assert engine.config.args.model_impl == "auto"
    got = await asyncio.gather(*[_generate(engine, f"ise{i}", p, 40) for i, p in enumerate(prompts)])
    assert got == expected


@pytest.mark.skipif(has_bf16_kernels(), reason="bfloat16 runs on oneDNN's kernels here, which batching changes")
async def test_bfloat16_batched_equals_solo_on_ise_gemm(engine: CPUEngine, tokenization: Tokenization) -> None:
    """Where the CPU has no bfloat16 arithmetic, bfloat16 weights run on ise's GEMM, whose fixed
    summation order makes greedy bfloat16 tokens independent of the batch too."""
    prompts = [_prompt(tokenization, q) for q in ["Name three rivers.", "What is a prime number?", "Describe autumn."]]
    bf16 = cpu_engine(Path(engine.config.model.path), **{**ENGINE_OPTIONS, "dtype": "bfloat16"})
    await bf16.start()
    try:
        solo = [await _generate(bf16, f"bsolo{i}", p, 24) for i, p in enumerate(prompts)]
        together = await asyncio.gather(*[_generate(bf16, f"bbatch{i}", p, 24) for i, p in enumerate(prompts)])
    finally:
        await bf16.shutdown()
    assert together == solo


def test_ise_forward_refuses_models_it_would_compute_differently() -> None:
    assert unsupported_reason(LlamaConfig()) is None
    assert "gpt2" in (unsupported_reason(AutoConfig.for_model("gpt2")) or "")
    assert "gelu" in (unsupported_reason(LlamaConfig(hidden_act="gelu")) or "")
    assert "sliding" in (unsupported_reason(AutoConfig.for_model("mistral", sliding_window=512)) or "")
