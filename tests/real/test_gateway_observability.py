"""Goodput, usage by API key, and the load reports on a real server: the counters move by exactly what
the responses' usage reported, and routers read vLLM's ORCA header and ``/load``."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import openai
import pytest

from tests.helpers import metric_sample
from tests.real.helpers import SMALL_SERVER, ServerHandle, running_server, user

KEY = "sk-observed"


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerHandle]:
    # Targets no request on this machine misses, and one (1 ms per token) every request of two tokens misses.
    args = [*SMALL_SERVER, "--api-key", KEY, "--slo-ttft-ms", "600000", "--slo-tpot-ms", "1"]
    with running_server(args, tmp_path_factory.mktemp("keyed") / "ise.log") as handle:
        yield handle


def scrape(server: ServerHandle, name: str, **labels: str) -> float:
    response = httpx.get(f"{server.root_url}/metrics", headers={"authorization": f"Bearer {KEY}"}, timeout=10)
    assert response.status_code == 200
    return metric_sample(response.text, name, model_name=server.model, engine="0", **labels)


def test_usage_by_key_and_goodput_move_by_the_usage_reported(keyed: ServerHandle) -> None:
    client = openai.OpenAI(base_url=keyed.base_url, api_key=KEY, max_retries=0)
    answers = [
        client.chat.completions.create(
            model=keyed.model,
            messages=user("Count to ten."),
            max_tokens=8,
            temperature=0,
            extra_body={"ignore_eos": True},
        )
        for _ in range(2)
    ]
    prompt = sum(a.usage.prompt_tokens for a in answers if a.usage)
    generated = sum(a.usage.completion_tokens for a in answers if a.usage)
    assert scrape(keyed, "ise_api_key_requests_total", api_key_name="key-1") == 2
    assert scrape(keyed, "ise_api_key_prompt_tokens_total", api_key_name="key-1") == prompt
    assert scrape(keyed, "ise_api_key_generation_tokens_total", api_key_name="key-1") == generated
    assert scrape(keyed, "ise_request_slo_total", slo="ttft", outcome="met") == 2
    assert scrape(keyed, "ise_request_slo_total", slo="tpot", outcome="missed") == 2
    assert scrape(keyed, "ise_request_slo_total", slo="all", outcome="missed") == 2


def test_routers_read_the_orca_header_and_load(api_server: ServerHandle) -> None:
    body = {"model": api_server.model, "messages": user("Hi"), "max_tokens": 2}
    answer = httpx.post(
        f"{api_server.base_url}/chat/completions",
        json=body,
        headers={"endpoint-load-metrics-format": "TEXT"},
        timeout=300,
    )
    header = answer.headers["endpoint-load-metrics"]
    assert header.startswith("TEXT named_metrics.num_requests_waiting=")
    assert "named_metrics.kv_cache_usage_perc=" in header
    load = httpx.get(f"{api_server.root_url}/load", timeout=10).json()
    assert set(load) == {"server_load", "num_requests_running", "num_requests_waiting", "kv_cache_usage_perc"}
    assert load["server_load"] >= 0 and 0 <= load["kv_cache_usage_perc"] <= 1
