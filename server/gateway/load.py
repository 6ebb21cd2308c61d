"""Load reports for routers and load balancers: vLLM's ORCA header and its ``/load`` endpoint.

Envoy, the Gateway API Inference Extension and llm-d balance on a replica's load. vLLM reports it
two ways, and ise the same:

- a response header, ``endpoint-load-metrics``, when the request asks for it with
  ``endpoint-load-metrics-format: TEXT`` or ``JSON`` (ORCA's formats, either case): ``TEXT
  named_metrics.num_requests_waiting=0.0, named_metrics.kv_cache_usage_perc=0.25`` or ``JSON
  {"named_metrics": {...}}``, vLLM's two named metrics in vLLM's order. Another format gets no
  header, as in vLLM. vLLM sends it on whole responses only; ise also on streams, with the
  load as the stream starts. Read per request that asks, never otherwise;
- ``GET /load``: vLLM's ``{"server_load": N}`` (requests in flight), with the engine's running
  and waiting requests and KV cache usage beside it.
"""

from __future__ import annotations

import json

from adapters.engine import EngineStats

LOAD_FORMAT_HEADER = "endpoint-load-metrics-format"
LOAD_HEADER = "endpoint-load-metrics"


def kv_cache_usage(stats: EngineStats) -> float:
    """The fraction of the KV cache held by requests (vLLM's ``kv_cache_usage_perc``: 1 is full)."""
    return stats.kv_blocks_used / stats.kv_blocks_total if stats.kv_blocks_total else 0.0


def orca_header(metrics_format: str, stats: EngineStats) -> dict[str, str]:
    """``{"endpoint-load-metrics": ...}`` in the format asked for; empty for a format ORCA does not name."""
    named = {"num_requests_waiting": float(stats.waiting), "kv_cache_usage_perc": kv_cache_usage(stats)}
    kind = metrics_format.strip().lower()
    if kind == "text":
        return {LOAD_HEADER: "TEXT " + ", ".join(f"named_metrics.{name}={value}" for name, value in named.items())}
    if kind == "json":
        return {LOAD_HEADER: "JSON " + json.dumps({"named_metrics": named})}
    return {}
