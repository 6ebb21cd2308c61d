"""Prometheus metrics: the engine's load, read at scrape time."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from adapters.engine import Engine


class _EngineCollector(Collector):
    """Reads the engine's stats on each scrape, so the gauges are never stale."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def collect(self) -> Iterator[GaugeMetricFamily]:
        stats = self.engine.stats()
        yield GaugeMetricFamily("ise_num_requests_running", "Requests in the running batch", value=stats.running)
        yield GaugeMetricFamily("ise_num_requests_waiting", "Requests queued for a slot", value=stats.waiting)
        yield GaugeMetricFamily("ise_engine_alive", "1 while the engine can serve", value=int(self.engine.is_alive))


class Metrics:
    def __init__(self, engine: Engine) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(_EngineCollector(engine))
