"""Prometheus metrics: the engine's load, read at scrape time."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from adapters.engine import Engine


class _EngineCollector(Collector):
    """Reads the engine's stats on each scrape, so the gauges are never stale."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        s = self.engine.stats()
        yield GaugeMetricFamily("ise_num_requests_running", "Requests in the running batch", value=s.running)
        yield GaugeMetricFamily("ise_num_requests_waiting", "Requests queued for the batch", value=s.waiting)
        yield GaugeMetricFamily("ise_engine_alive", "1 while the engine can serve", value=int(self.engine.is_alive))
        yield GaugeMetricFamily("ise_kv_cache_blocks_used", "KV cache blocks held by requests", value=s.kv_blocks_used)
        yield GaugeMetricFamily("ise_kv_cache_blocks_total", "KV cache blocks in all", value=s.kv_blocks_total)
        yield GaugeMetricFamily(
            "ise_kv_cache_usage_ratio",
            "Fraction of the KV cache held by requests",
            value=s.kv_blocks_used / s.kv_blocks_total if s.kv_blocks_total else 0.0,
        )
        yield CounterMetricFamily("ise_engine_steps", "Engine steps (forward passes) run", value=s.steps)
        yield CounterMetricFamily(
            "ise_engine_tokens_computed", "Prompt and decode tokens run through the model", value=s.tokens_computed
        )
        yield CounterMetricFamily(
            "ise_prefix_cache_queried_tokens", "Prompt tokens looked up in the prefix cache",
            value=s.prefix_cache_queried_tokens,
        )  # fmt: skip
        yield CounterMetricFamily(
            "ise_prefix_cache_hit_tokens", "Prompt tokens found in the prefix cache, not recomputed",
            value=s.prefix_cache_hit_tokens,
        )  # fmt: skip
        yield CounterMetricFamily(
            "ise_num_preemptions", "Requests preempted (to be recomputed) when the KV cache ran out",
            value=s.preemptions,
        )  # fmt: skip


class Metrics:
    def __init__(self, engine: Engine) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(_EngineCollector(engine))
