"""Prometheus metrics: the engine's load, read at scrape time, and what the gateway counts."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, GCCollector, PlatformCollector, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, SummaryMetricFamily
from prometheus_client.registry import Collector

from adapters.engine import EngineBase
from server.gateway.admission import Admission
from server.gateway.goodput import Goodput
from server.gateway.key_usage import KeyUsage
from server.gateway.options import GatewayArgs
from server.gateway.request_record import RequestObserver
from server.gateway.vllm_metrics import ENGINE_INDEX, RequestMetrics, VLLMEngineCollector


class _EngineCollector(Collector):
    """Reads the engine's stats on each scrape, so the gauges are never stale."""

    def __init__(self, engine: EngineBase) -> None:
        self.engine = engine

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily | SummaryMetricFamily]:
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
        yield SummaryMetricFamily(
            "ise_abort_kv_release_seconds",
            "Time from aborting a request (its client gone) to its KV cache blocks being free",
            count_value=s.aborts_released,
            sum_value=s.abort_release_seconds,
        )


class _AdmissionCollector(Collector):
    """The server's own queue: requests admitted that have no first token yet."""

    def __init__(self, admission: Admission) -> None:
        self.admission = admission

    def collect(self) -> Iterator[GaugeMetricFamily]:
        a = self.admission
        yield GaugeMetricFamily(
            "ise_waiting_requests", "Admitted requests without a first token", value=a.waiting_requests
        )
        yield GaugeMetricFamily(
            "ise_waiting_prompt_tokens", "Prompt tokens of the admitted requests without a first token",
            value=a.waiting_tokens,
        )  # fmt: skip
        yield GaugeMetricFamily("ise_requests_in_flight", "Admitted requests not yet ended", value=len(a.tickets))
        yield GaugeMetricFamily("ise_draining", "1 once SIGTERM started a drain", value=int(a.draining))


class Metrics:
    """The server's Prometheus registry: ise's own series, vLLM's (``vllm_metrics.py``), and the process's."""

    def __init__(self, engine: EngineBase, admission: Admission, model_name: str, options: GatewayArgs) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(_EngineCollector(engine))
        self.registry.register(_AdmissionCollector(admission))
        self.registry.register(VLLMEngineCollector(engine, model_name))
        self.engine, self.model_name = engine, model_name
        self.requests: RequestMetrics | None = None  # once the engine started: its token buckets end at its context
        labels = (model_name, ENGINE_INDEX)
        ms = 1 / 1000
        ttft, tpot = options.slo_ttft_ms, options.slo_tpot_ms
        self.goodput = Goodput(self.registry, labels, ttft and ttft * ms, tpot and tpot * ms)
        self.key_usage = KeyUsage(self.registry, labels)
        self.observers: tuple[RequestObserver, ...] = ()  # what reads each request's record as it ends
        # The standard process_* and python_* series (memory, CPU, open files), as vLLM's /metrics has.
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        self.rejected = Counter(
            "ise_requests_rejected",
            "Requests refused before admission, by reason: unauthorized keys are not counted here "
            "(rate_limit_exceeded, server_overloaded, slo_exceeded, server_shutting_down)",
            ["reason"],
            registry=self.registry,
        )
        self.aborted = Counter(
            "ise_requests_aborted",
            "Admitted requests that ended before finishing: client_disconnect, send_timeout (a client that "
            "stopped reading), shutdown (ended by a drain's deadline)",
            ["reason"],
            registry=self.registry,
        )

    def engine_started(self) -> None:
        """Create the per-request series, whose token buckets end at the context the engine serves."""
        if self.requests is None:  # an app's lifespan may run again (a test client entering it twice)
            self.requests = RequestMetrics(self.registry, self.model_name, self.engine.max_model_len)
            self.observers = (self.requests.finished, self.goodput.finished, self.key_usage.finished, *self.observers)
