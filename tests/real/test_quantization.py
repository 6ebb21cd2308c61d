"""``--quantization int8``: int8 weights, float32 arithmetic, within the stated quality tolerance.

The tolerance (benchmarks/RESULTS.md): on the built-in English passage, perplexity within 2% of
float32 and the most likely next token the same at 93% of positions or more. Measured: 0.75% and
95%.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import openai

from benchmarks import quality
from benchmarks.workloads import PROSE
from server.config.settings import Settings
from tests.real.helpers import ServerHandle, running_server, user


def test_int8_weights_score_text_within_tolerance(server: ServerHandle) -> None:
    reference, result = quality.measure(server.model_dir, Settings().cache_dir, ["int8"], PROSE)
    assert (reference.variant, result.variant) == ("float32", "int8")
    assert result.tokens > 300
    assert 1.0 < result.perplexity_ratio <= 1.02, result
    assert result.top1_agreement >= 0.93, result


def test_int8_server_answers_and_batches_exactly_like_solo(server: ServerHandle, tmp_path: Path) -> None:
    args = ["--dtype", "float32", "--quantization", "int8", "--max-num-seqs", "4"]
    prompts = ["The three primary colours are", "A good way to learn to cook is", "The tallest mountain is"]
    with running_server(args, tmp_path / "ise.log") as int8:
        with openai.OpenAI(base_url=int8.base_url, api_key="unused", max_retries=0, timeout=120) as client:
            reply = client.chat.completions.create(
                model=int8.model, messages=user("What is the capital of France?"), temperature=0, max_tokens=20
            )
            assert "Paris" in (reply.choices[0].message.content or "")
            solo = [
                client.completions.create(model=int8.model, prompt=p, temperature=0, max_tokens=24).choices[0].text
                for p in prompts
            ]

        async def together() -> list[str]:
            async with openai.AsyncOpenAI(base_url=int8.base_url, api_key="unused", max_retries=0, timeout=120) as c:
                replies = await asyncio.gather(
                    *[c.completions.create(model=int8.model, prompt=p, temperature=0, max_tokens=24) for p in prompts]
                )
            return [r.choices[0].text for r in replies]

        assert asyncio.run(together()) == solo
    assert "int8 weights" in (tmp_path / "ise.log").read_text()


def test_int8_refuses_a_dtype_it_cannot_run() -> None:
    cmd = [
        sys.executable,
        "-m",
        "ise",
        "serve",
        "--quantization",
        "int8",
        "--dtype",
        "bfloat16",
        "--port",
        "0",
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode != 0
    assert "--quantization int8 keeps the arithmetic in float32; use --dtype float32" in result.stderr
