"""vLLM's metric names on ``/metrics``: present with vLLM's labels and types, and moved by exactly what
the API reported (usage), one observation per request, N - 1 gaps for a choice of N tokens."""

from __future__ import annotations

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam
from prometheus_client.parser import text_string_to_metric_families

from tests.fast.fake_engine import FakeEngine
from tests.fast.tiny_model import MODEL, TinyModel
from tests.helpers import metric_sample

LABELS = {"model_name": MODEL, "engine": "0"}


class Scrape:
    """One ``/metrics`` text, read by vLLM's labels."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __call__(self, name: str, **extra: str) -> float:
        return metric_sample(self.text, name, **LABELS, **extra)


async def samples(http: httpx.AsyncClient) -> Scrape:
    response = await http.get("/metrics")
    assert response.status_code == 200
    return Scrape(response.text)


async def test_counters_and_histograms_move_by_what_usage_reported(
    sdk: openai.AsyncOpenAI, http: httpx.AsyncClient, fake: FakeEngine, tiny: TinyModel
) -> None:
    fake.script = lambda _: tiny.reply("Hello world! The quick brown fox")
    messages: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Say hello"}]
    whole = await sdk.chat.completions.create(model=MODEL, messages=messages, n=2, max_tokens=40)
    stream = await sdk.chat.completions.create(
        model=MODEL, messages=messages, stream=True, stream_options={"include_usage": True}, max_tokens=30
    )
    chunks = [chunk async for chunk in stream]
    streamed = chunks[-1].usage
    assert whole.usage is not None and streamed is not None

    s = await samples(http)
    prompt = whole.usage.prompt_tokens + streamed.prompt_tokens
    generated = whole.usage.completion_tokens + streamed.completion_tokens
    assert s("vllm:prompt_tokens_total") == prompt
    assert s("vllm:generation_tokens_total") == generated
    assert s("vllm:request_success_total", finished_reason="stop") == 2
    for histogram in (
        "vllm:e2e_request_latency_seconds",
        "vllm:time_to_first_token_seconds",
        "vllm:request_queue_time_seconds",
        "vllm:request_prefill_time_seconds",
        "vllm:request_decode_time_seconds",
        "vllm:request_inference_time_seconds",
        "vllm:request_prompt_tokens",
        "vllm:request_generation_tokens",
        "vllm:request_params_n",
        "vllm:request_params_max_tokens",
        "vllm:request_time_per_output_token_seconds",
    ):
        assert s(histogram + "_count") == 2, histogram  # one observation per request, n=2 included
    assert s("vllm:request_prompt_tokens_sum") == prompt
    assert s("vllm:request_generation_tokens_sum") == generated
    assert s("vllm:request_params_n_sum") == 3
    assert s("vllm:request_params_max_tokens_sum") == 70
    # Three choices: each of N tokens has N - 1 gaps between them.
    assert s("vllm:inter_token_latency_seconds_count") == generated - 3
    assert s("vllm:request_params_max_tokens_bucket", le="+Inf") == 2


async def test_a_failed_request_counts_as_error(
    sdk: openai.AsyncOpenAI, http: httpx.AsyncClient, fake: FakeEngine, tiny: TinyModel
) -> None:
    fake.script = lambda _: tiny.reply("Hello world", fail_at=1)
    with pytest.raises(openai.APIError):
        await sdk.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
    s = await samples(http)
    assert s("vllm:request_success_total", finished_reason="error") == 1
    assert s("vllm:request_success_total", finished_reason="stop") == 0
    assert s("vllm:e2e_request_latency_seconds_count") == 1


async def test_engine_series_and_cache_info_have_vllm_names(http: httpx.AsyncClient) -> None:
    response = await http.get("/metrics")
    types = {family.name: family.type for family in text_string_to_metric_families(response.text)}
    expected = {
        "vllm:num_requests_running": "gauge",
        "vllm:num_requests_waiting": "gauge",
        "vllm:kv_cache_usage_perc": "gauge",
        "vllm:num_preemptions": "counter",
        "vllm:prefix_cache_queries": "counter",
        "vllm:prefix_cache_hits": "counter",
        "vllm:iteration_tokens_total": "histogram",
        "vllm:cache_config_info": "gauge",
        "vllm:prompt_tokens_cached": "counter",
        "process_resident_memory_bytes": "gauge",
    }
    assert {name: types.get(name) for name in expected} == expected
    assert 'vllm:cache_config_info{block_size="0",engine="0",num_gpu_blocks="0"} 1.0' in response.text


async def test_renamed_series_answer_to_their_older_names(sdk: openai.AsyncOpenAI, http: httpx.AsyncClient) -> None:
    """Dashboards in circulation query vllm:time_per_output_token_seconds and vllm:gpu_cache_usage_perc,
    the names before vLLM renamed them: the same samples answer there."""
    await sdk.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
    s = await samples(http)
    for suffix in ("_count", "_sum"):
        assert s("vllm:time_per_output_token_seconds" + suffix) == s("vllm:inter_token_latency_seconds" + suffix)
    assert s("vllm:time_per_output_token_seconds_count") > 0
    assert s("vllm:time_per_output_token_seconds_bucket", le="0.1") == s(
        "vllm:inter_token_latency_seconds_bucket", le="0.1"
    )
    assert s("vllm:gpu_cache_usage_perc") == s("vllm:kv_cache_usage_perc")
