"""Speculative decoding (the ngram method) on the CPU engine, with the real model.

What a user must see: the same greedy text as without it, in fewer engine steps where the answer
repeats its prompt, a seeded request's tokens unchanged, vLLM's acceptance counters on /metrics,
and a clear refusal of a configuration the CPU engine cannot run.
"""

from __future__ import annotations

import asyncio
import json
import random
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import openai
import pytest

from adapters.cpu.engine import CPUEngine
from adapters.cpu.ngram_index import NgramIndex
from adapters.engine import EngineRequest, SamplingParams
from server.text.tokenization import Tokenization
from tests.real.helpers import SMALL_SERVER, ServerHandle, cpu_engine, running_server, user
from tests.real.test_engine import ENGINE_OPTIONS

NGRAM = {"method": "ngram", "num_speculative_tokens": 4, "prompt_lookup_max": 3, "prompt_lookup_min": 2}
PASSAGE = (
    "The lighthouse stood on a rock at the mouth of the bay. Every night its keeper climbed the ninety "
    "steps, trimmed the wick and wound the clockwork that turned the lens."
)
COPY_TASKS = [
    f"Repeat this text exactly, word for word:\n\n{PASSAGE}",
    "Repeat this list exactly: apples, pears, plums, apples, pears, plums, apples, pears, plums.",
    "Name three rivers.",  # an answer that does not repeat its prompt: few drafts, none kept for nothing
]


def test_drafts_are_vllms_ngram_proposals() -> None:
    """The index proposes, token for token, what vLLM's own ngram proposer does on the same sequence."""
    from vllm.v1.spec_decode.ngram_proposer import _find_longest_matched_ngram_and_propose_tokens as vllm_propose

    rng = random.Random(7)
    for _ in range(500):
        tokens = [rng.randint(0, 3) for _ in range(rng.randint(1, 60))]
        min_n = rng.randint(1, 3)
        max_n, k = rng.randint(min_n, 5), rng.randint(1, 5)
        start = NgramIndex(min_n, max_n).continuation(tokens)
        ours = [] if start is None else tokens[start : start + k]
        assert ours == vllm_propose(np.array(tokens, dtype=np.int32), min_n, max_n, 10**6, k).tolist()


@pytest.fixture(scope="module")
def tokenization(server: ServerHandle) -> Tokenization:
    return Tokenization(server.model_dir)


@pytest.fixture(scope="module")
async def engines(server: ServerHandle) -> AsyncIterator[tuple[CPUEngine, CPUEngine]]:
    """The engine without and with speculation, on test_engine's small cache (preemption happens)."""
    plain = cpu_engine(server.model_dir, **ENGINE_OPTIONS)
    speculating = cpu_engine(server.model_dir, **ENGINE_OPTIONS, speculative_config=NGRAM)
    await plain.start()
    await speculating.start()
    yield plain, speculating
    await speculating.shutdown()
    await plain.shutdown()


async def _generate(engine: CPUEngine, name: str, prompt: list[int], params: SamplingParams) -> list[int]:
    tokens: list[int] = []
    async for out in engine.generate(EngineRequest(name, prompt, params)):
        tokens += out.new_token_ids
    return tokens


async def test_greedy_tokens_are_unchanged_in_fewer_steps(
    engines: tuple[CPUEngine, CPUEngine], tokenization: Tokenization
) -> None:
    plain, speculating = engines
    prompts = [tokenization.chat_prompt(user(task)) for task in COPY_TASKS]
    greedy = SamplingParams(max_tokens=48, temperature=0.0)
    steps_before = (plain.stats().steps, speculating.stats().steps)
    expected = [await _generate(plain, f"plain{i}", p, greedy) for i, p in enumerate(prompts)]
    solo = [await _generate(speculating, f"solo{i}", p, greedy) for i, p in enumerate(prompts)]
    stats = speculating.stats()
    assert solo == expected
    # The copying answers took their drafts: fewer forward passes for the same tokens.
    plain_steps = plain.stats().steps - steps_before[0]
    spec_steps = stats.steps - steps_before[1]
    assert stats.spec_decode_num_accepted_tokens > 20, stats
    assert spec_steps < plain_steps - 20, (spec_steps, plain_steps)
    assert sum(stats.spec_decode_num_accepted_tokens_per_pos) == stats.spec_decode_num_accepted_tokens
    # Batched, on a cache too small for all of them (preempted and recomputed): still the same.
    together = await asyncio.gather(
        *[_generate(speculating, f"batch{i}", p, greedy) for i, p in enumerate(prompts * 2)]
    )
    assert together == expected * 2
    after = speculating.stats()
    assert after.kv_blocks_used == 0 and after.running == 0


async def test_seeded_and_sampled_requests(engines: tuple[CPUEngine, CPUEngine], tokenization: Tokenization) -> None:
    """A seeded request is not speculated: its tokens are those it gets without speculation. An
    unseeded sampled one is, and ends as asked."""
    plain, speculating = engines
    prompt = tokenization.chat_prompt(user(COPY_TASKS[1]))
    seeded = SamplingParams(max_tokens=32, temperature=0.8, seed=11, ignore_eos=True)
    assert await _generate(speculating, "seeded", prompt, seeded) == await _generate(plain, "seeded", prompt, seeded)
    before = speculating.stats().spec_decode_num_drafts
    sampled = SamplingParams(max_tokens=40, temperature=0.5, ignore_eos=True)
    assert len(await _generate(speculating, "sampled", prompt, sampled)) == 40
    assert speculating.stats().spec_decode_num_drafts > before


def test_served_with_vllms_flag(server: ServerHandle, client: openai.OpenAI, tmp_path: Path) -> None:
    """``--speculative-config`` as vLLM takes it: the same streamed text as the server without it,
    and vLLM's speculative decoding counters on /metrics."""
    messages = user(COPY_TASKS[0])
    expected = (
        client.chat.completions.create(model=server.model, messages=messages, temperature=0, max_tokens=48)
        .choices[0]
        .message.content
    )
    args = [*SMALL_SERVER, "--speculative-config", json.dumps(NGRAM)]
    with (
        running_server(args, tmp_path / "ise.log") as spec,
        openai.OpenAI(base_url=spec.base_url, api_key="unused", max_retries=0, timeout=120) as spec_client,
    ):
        stream = spec_client.chat.completions.create(
            model=spec.model, messages=messages, temperature=0, max_tokens=48, stream=True
        )
        text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
        assert text == expected
        labels = {"model_name": spec.model, "engine": "0"}
        drafts = spec.metric("vllm:spec_decode_num_draft_tokens_total", **labels)
        accepted = spec.metric("vllm:spec_decode_num_accepted_tokens_total", **labels)
        assert 0 < accepted <= drafts
        assert spec.metric("vllm:spec_decode_num_accepted_tokens_per_pos_total", **labels, position="0") > 0
    assert "speculative decoding: ngram" in (tmp_path / "ise.log").read_text()


def test_a_configuration_the_cpu_engine_cannot_run_is_refused_at_start() -> None:
    config = {"method": "eagle", "model": "some/eagle-head", "num_speculative_tokens": 3}
    result = subprocess.run(
        [sys.executable, "-m", "ise", "serve", *SMALL_SERVER, "--speculative-config", json.dumps(config)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode != 0
    assert "--speculative-config" in result.stderr and "method" in result.stderr, result.stderr[-2000:]
