"""configs/grafana/: every series the dashboard's queries use is one ise's ``/metrics`` declares, under
the type the query assumes (``_bucket`` of a histogram, ``_total`` of a counter); the scrape config
points Prometheus at ``/metrics``."""

from __future__ import annotations

import json

import httpx
import yaml  # type: ignore[import-untyped, unused-ignore]

from tests.helpers import DASHBOARD, dashboard_series, exposed_series


async def test_every_series_the_dashboard_queries_is_on_metrics(http: httpx.AsyncClient) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    queried = dashboard_series(dashboard)
    # Latency percentiles, throughput, queue, KV usage, goodput and per-key tokens are all queried.
    assert {
        "vllm:time_to_first_token_seconds_bucket",
        "vllm:generation_tokens_total",
        "vllm:num_requests_waiting",
        "vllm:kv_cache_usage_perc",
        "ise_request_slo_total",
        "ise_api_key_generation_tokens_total",
    } <= queried
    exposed = exposed_series((await http.get("/metrics")).text)
    assert sorted(queried - exposed) == []


def test_the_scrape_config_reads_metrics() -> None:
    config = yaml.safe_load((DASHBOARD.parent / "prometheus.yml").read_text())
    [job] = config["scrape_configs"]
    assert job["metrics_path"] == "/metrics" and job["static_configs"][0]["targets"]
