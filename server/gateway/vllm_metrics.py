"""vLLM's metrics under vLLM 0.32's names, types, labels and buckets.

Operators already have dashboards, alerts, routers (llm-d's inference scheduler, the Gateway API
Inference Extension) and autoscalers (KEDA) that read vLLM's series by name; ise exposes the same
series so they work unchanged, beside ise's own ``ise_*`` metrics.

Two sources, for both engines:
- per request, the API's view (``RequestRecord``, built by the request's ticket): latencies, token
  counts exactly as the response's usage reports them, ``n`` and ``max_tokens``, the finish reason.
  The queue, prefill and inference times start or end at the moment the engine first scheduled the
  request, which the engine reports (vLLM's own timestamp on ``--engine vllm``);
- per scrape, the engine's own stats (``EngineStats``): running and waiting requests, KV cache use,
  preemptions, prefix-cache lookups, tokens per step; on ``--engine vllm`` these are vLLM's.

Times are measured from admission, when the request reaches the engine (vLLM's arrival): ise's own
checks before it (parsing, tokenization, a compile) are not in them.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from adapters.engine import ITERATION_TOKENS_BUCKETS, EngineBase, EngineStats
from server.gateway.load import kv_cache_usage
from server.gateway.request_record import RequestRecord

LABELS = ("model_name", "engine")
ENGINE_INDEX = "0"  # one engine per server; vLLM labels its first engine "0"

# vLLM's bucket families (vllm/v1/metrics/buckets.py), so that histogram_quantile over ise's and
# vLLM's series agree bucket for bucket.
REQUEST_LATENCY_BUCKETS = (
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0, 480.0, 960.0,
    1920.0, 7680.0,
)  # fmt: skip
TIME_TO_FIRST_TOKEN_BUCKETS = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0,
    160.0, 640.0, 2560.0,
)  # fmt: skip
INTER_TOKEN_LATENCY_BUCKETS = (
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0,
)  # fmt: skip
REQUEST_PARAMS_N_BUCKETS = (1, 2, 5, 10, 20)


def request_tokens_buckets(max_model_len: int) -> list[float]:
    """vLLM's token-count buckets: 1, 2, 5, 10, 20, 50, ... up to the context window."""
    buckets: list[float] = []
    scale = 1
    while True:
        for mantissa in (1, 2, 5):
            if mantissa * scale > max_model_len:
                return buckets
            buckets.append(mantissa * scale)
        scale *= 10


class RequestMetrics:
    """The per-request series: one observation per request, token counters moved by its usage."""

    def __init__(self, registry: CollectorRegistry, model_name: str, max_model_len: int) -> None:
        labels = (model_name, ENGINE_INDEX)
        tokens = request_tokens_buckets(max_model_len)

        def histogram(name: str, doc: str, buckets: tuple[float, ...] | list[float]) -> Histogram:
            return Histogram(name, doc, LABELS, registry=registry, buckets=buckets).labels(*labels)

        def counter(name: str, doc: str) -> Counter:
            return Counter(name, doc, LABELS, registry=registry).labels(*labels)

        latency = REQUEST_LATENCY_BUCKETS
        self.ttft = histogram("vllm:time_to_first_token_seconds", "Time to first token", TIME_TO_FIRST_TOKEN_BUCKETS)
        itl = Histogram(
            "vllm:inter_token_latency_seconds",
            "Time between consecutive output tokens",
            LABELS,
            registry=registry,
            buckets=INTER_TOKEN_LATENCY_BUCKETS,
        )
        self.itl = itl.labels(*labels)
        # Its name before vLLM 0.11, which dashboards in circulation still query.
        registry.register(Renamed(itl, "vllm:time_per_output_token_seconds"))
        self.tpot = histogram(
            "vllm:request_time_per_output_token_seconds",
            "A request's decode time over its output tokens after the first (per sequence)",
            INTER_TOKEN_LATENCY_BUCKETS,
        )
        self.e2e = histogram("vllm:e2e_request_latency_seconds", "Request latency, admission to end", latency)
        self.queue = histogram(
            "vllm:request_queue_time_seconds", "Time waiting before the engine scheduled it", latency
        )
        self.prefill = histogram("vllm:request_prefill_time_seconds", "First scheduling to first token", latency)
        self.decode = histogram("vllm:request_decode_time_seconds", "First token to last token", latency)
        self.inference = histogram("vllm:request_inference_time_seconds", "First scheduling to last token", latency)
        self.prompt_tokens_hist = histogram("vllm:request_prompt_tokens", "Prompt tokens per request", tokens)
        self.generation_tokens_hist = histogram(
            "vllm:request_generation_tokens", "Generated tokens per request", tokens
        )
        self.params_n = histogram("vllm:request_params_n", "The n parameter per request", REQUEST_PARAMS_N_BUCKETS)
        self.params_max_tokens = histogram(
            "vllm:request_params_max_tokens", "The max_tokens parameter per request", tokens
        )
        self.prompt_tokens = counter("vllm:prompt_tokens", "Prompt tokens, as usage counts them")
        self.generation_tokens = counter("vllm:generation_tokens", "Generated tokens, as usage counts them")
        self.prompt_tokens_cached = counter("vllm:prompt_tokens_cached", "Prompt tokens the prefix cache served")
        success = Counter(
            "vllm:request_success",
            "Finished requests by finish reason",
            (*LABELS, "finished_reason"),
            registry=registry,
        )
        self.success = {reason: success.labels(*labels, reason) for reason in ("stop", "length", "abort", "error")}

    def first_token(self, seconds: float) -> None:
        self.ttft.observe(seconds)

    def token_gap(self, seconds: float) -> None:
        self.itl.observe(seconds)

    def finished(self, record: RequestRecord) -> None:
        self.success[record.finish_reason or "error"].inc()
        self.e2e.observe(record.e2e)
        for histogram, value in (
            (self.queue, record.queued),
            (self.prefill, record.prefill),
            (self.decode, record.decode),
            (self.inference, record.inference),
        ):
            if value is not None:
                histogram.observe(value)
        if record.tpot is not None:
            self.tpot.observe(record.tpot)
        self.prompt_tokens_hist.observe(record.prompt_tokens)
        self.generation_tokens_hist.observe(record.generation_tokens)
        self.params_n.observe(record.n)
        self.params_max_tokens.observe(record.max_tokens)
        self.prompt_tokens.inc(record.prompt_tokens)
        self.generation_tokens.inc(record.generation_tokens)
        self.prompt_tokens_cached.inc(record.cached_tokens)


Family = GaugeMetricFamily | CounterMetricFamily | HistogramMetricFamily


class Renamed(Collector):
    """A series again under an older name of vLLM's (an alias), copied at scrape time: observed once."""

    def __init__(self, source: Collector, name: str) -> None:
        self.source, self.name = source, name

    def collect(self) -> Iterator[Metric]:
        for metric in self.source.collect():
            renamed = Metric(self.name, metric.documentation + f" (alias of {metric.name})", metric.type)
            renamed.samples = [s._replace(name=self.name + s.name[len(metric.name) :]) for s in metric.samples]
            yield renamed


class VLLMEngineCollector(Collector):
    """The engine's own series under vLLM's names, read from its stats at each scrape."""

    def __init__(self, engine: EngineBase, model_name: str) -> None:
        self.engine = engine
        self.labels = [model_name, ENGINE_INDEX]

    def _family(
        self, kind: type[GaugeMetricFamily] | type[CounterMetricFamily], name: str, doc: str, value: float
    ) -> Family:
        family = kind(name, doc, labels=LABELS)
        family.add_metric(self.labels, value)
        return family

    def collect(self) -> Iterator[Family]:
        s = self.engine.stats()
        gauge, counter = GaugeMetricFamily, CounterMetricFamily
        yield self._family(gauge, "vllm:num_requests_running", "Requests in the running batch", s.running)
        yield self._family(gauge, "vllm:num_requests_waiting", "Requests waiting to be scheduled", s.waiting)
        usage = kv_cache_usage(s)
        yield self._family(gauge, "vllm:kv_cache_usage_perc", "KV cache usage, 1 is full", usage)
        # Its name before vLLM 0.10, which dashboards in circulation still query.
        yield self._family(
            gauge, "vllm:gpu_cache_usage_perc", "KV cache usage (alias of vllm:kv_cache_usage_perc)", usage
        )
        yield self._family(counter, "vllm:num_preemptions", "Requests preempted by the engine", s.preemptions)
        yield self._family(
            counter, "vllm:prefix_cache_queries", "Prompt tokens looked up in the prefix cache",
            s.prefix_cache_queried_tokens,
        )  # fmt: skip
        yield self._family(
            counter, "vllm:prefix_cache_hits", "Prompt tokens found in the prefix cache", s.prefix_cache_hit_tokens
        )
        steps = HistogramMetricFamily("vllm:iteration_tokens_total", "Tokens computed per engine step", labels=LABELS)
        cumulative, buckets = 0, []
        counts = s.iteration_tokens_counts or (0,) * (len(ITERATION_TOKENS_BUCKETS) + 1)
        for bound, count in zip((*ITERATION_TOKENS_BUCKETS, float("inf")), counts, strict=True):
            cumulative += count
            buckets.append((_bound(bound), cumulative))
        steps.add_metric(self.labels, buckets, sum_value=s.tokens_computed)
        yield steps
        if s.spec_decode_num_accepted_tokens_per_pos:  # speculative decoding is on
            yield from self._spec_decode(s)
        # llm-d's scheduler reads the block size and count from this info metric.
        info = GaugeMetricFamily(
            "vllm:cache_config_info", "The KV cache's configuration", labels=["block_size", "num_gpu_blocks", "engine"]
        )
        info.add_metric([str(s.block_size), str(s.kv_blocks_total), ENGINE_INDEX], 1)
        yield info

    def _spec_decode(self, s: EngineStats) -> Iterator[Family]:
        """vLLM's speculative decoding counters: acceptance rate is accepted over draft tokens."""
        counter = CounterMetricFamily
        yield self._family(
            counter, "vllm:spec_decode_num_drafts", "Number of spec decoding drafts.", s.spec_decode_num_drafts
        )
        yield self._family(
            counter, "vllm:spec_decode_num_draft_tokens", "Number of draft tokens.", s.spec_decode_num_draft_tokens
        )
        yield self._family(
            counter, "vllm:spec_decode_num_accepted_tokens", "Number of accepted tokens.",
            s.spec_decode_num_accepted_tokens,
        )  # fmt: skip
        per_pos = CounterMetricFamily(
            "vllm:spec_decode_num_accepted_tokens_per_pos",
            "Accepted tokens per draft's position.",
            labels=[*LABELS, "position"],
        )
        for position, accepted in enumerate(s.spec_decode_num_accepted_tokens_per_pos):
            per_pos.add_metric([*self.labels, str(position)], accepted)
        yield per_pos


def _bound(bound: float) -> str:
    return "+Inf" if bound == float("inf") else str(float(bound))
