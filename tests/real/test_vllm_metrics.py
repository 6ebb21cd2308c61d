"""vLLM's metric names on a real server, on both engines: what dashboards, llm-d and KEDA read is there,
and moves by exactly what the responses' usage reported."""

from __future__ import annotations

import json
import time

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import metric_sample, sse_line
from tests.real.helpers import ServerHandle, user


def scrape_text(server: ServerHandle) -> str:
    response = httpx.get(f"{server.root_url}/metrics", timeout=10)
    assert response.status_code == 200
    return response.text


def value(text: str, server: ServerHandle, name: str, **extra: str) -> float:
    return metric_sample(text, name, model_name=server.model, engine="0", **extra)


def test_vllm_series_move_by_the_usage_reported(api_client: openai.OpenAI, api_server: ServerHandle) -> None:
    before = scrape_text(api_server)
    whole = api_client.chat.completions.create(
        model=api_server.model, messages=user("Name three colors."), max_tokens=12, temperature=0
    )
    stream = api_client.chat.completions.create(
        model=api_server.model,
        messages=user("Count to five."),
        max_tokens=10,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    streamed = [chunk for chunk in stream][-1].usage
    after = scrape_text(api_server)
    assert whole.usage is not None and streamed is not None

    def moved(name: str, **extra: str) -> float:
        return value(after, api_server, name, **extra) - value(before, api_server, name, **extra)

    assert moved("vllm:prompt_tokens_total") == whole.usage.prompt_tokens + streamed.prompt_tokens
    generated = whole.usage.completion_tokens + streamed.completion_tokens
    assert moved("vllm:generation_tokens_total") == generated
    assert moved("vllm:request_generation_tokens_sum") == generated
    reasons = [whole.choices[0].finish_reason]
    assert moved("vllm:request_success_total", finished_reason=reasons[0]) >= 1
    for histogram in ("e2e_request_latency", "time_to_first_token", "request_queue_time", "request_prefill_time"):
        assert moved(f"vllm:{histogram}_seconds_count") == 2, histogram
    assert moved("vllm:inter_token_latency_seconds_count") == generated - 2  # N tokens, N - 1 gaps, per request
    # The engine's own series: steps were taken, the cache is described for llm-d's scheduler.
    assert moved("vllm:iteration_tokens_total_count") >= 1
    info = [
        s.labels for f in text_string_to_metric_families(after) for s in f.samples if s.name == "vllm:cache_config_info"
    ]
    assert len(info) == 1 and int(info[0]["block_size"]) > 0 and int(info[0]["num_gpu_blocks"]) > 0
    assert 0 <= value(after, api_server, "vllm:kv_cache_usage_perc") <= 1
    assert metric_sample(after, "process_resident_memory_bytes") > 0


def test_server_timing_adds_up_and_agrees_with_the_client(api_server: ServerHandle) -> None:
    body = {"model": api_server.model, "messages": user("Name a fruit."), "max_tokens": 8, "temperature": 0}
    whole = httpx.post(f"{api_server.base_url}/chat/completions", json=body, timeout=300)
    parts = dict(part.split(";dur=") for part in whole.headers["server-timing"].split(", "))
    timing = {name: float(ms) for name, ms in parts.items()}
    assert set(timing) == {"queue", "prefill", "ttft", "decode", "total"}
    assert timing["ttft"] == pytest.approx(timing["queue"] + timing["prefill"], abs=0.01)
    assert timing["ttft"] + timing["decode"] <= timing["total"] + 0.01

    started = time.monotonic()
    client_ttft = None
    with httpx.stream(
        "POST",
        f"{api_server.base_url}/chat/completions",
        json={**body, "stream": True, "stream_options": {"include_usage": True}},
        timeout=300,
    ) as stream:
        events = []
        for line in stream.iter_lines():
            payload = sse_line(line)
            if payload is None or payload == "[DONE]":
                continue
            event = json.loads(payload)
            if client_ttft is None and event["choices"] and event["choices"][0]["delta"].get("content"):
                client_ttft = (time.monotonic() - started) * 1000  # the first token, as the client sees it
            events.append(event)
    server = events[-1]["usage"]["server_timing"]
    assert client_ttft is not None
    # The server's clock starts after the request arrived and parsed: never later than the client's.
    assert server["ttft"] <= client_ttft
    assert client_ttft - server["ttft"] < 1000
