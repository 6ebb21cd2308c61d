"""OpenTelemetry tracing: one span per request, exported to an OTLP collector (``--otlp-traces-endpoint``).

Optional: it needs ``opentelemetry-sdk`` and the OTLP exporters (``pip install 'ise[tracing]'``),
imported only when the flag is set. As in vLLM, the exporter speaks OTLP over gRPC unless
``OTEL_EXPORTER_OTLP_TRACES_PROTOCOL`` (or ``OTEL_EXPORTER_OTLP_PROTOCOL``) says ``http/protobuf``,
where the endpoint is the whole URL (``http://collector:4318/v1/traces``); the SDK's other
``OTEL_*`` variables (``OTEL_SERVICE_NAME``, ``OTEL_BSP_*``, headers, compression) apply.

The span is built once, when the request ends, from its ``RequestRecord``: it starts at admission
and ends with the request, continues the trace of the request's W3C ``traceparent`` (and
``tracestate``), and carries the timings and token counts as attributes, under the GenAI semantic
conventions' names where they have one (``gen_ai.operation.name``, ``gen_ai.request.model``,
``gen_ai.usage.input_tokens``, ``gen_ai.response.finish_reasons``, ...) and under vLLM's span
names beside them (``gen_ai.latency.*``, ``gen_ai.usage.prompt_tokens``, ``gen_ai.request.id``),
so queries written for vLLM's spans find ise's. A ``BatchSpanProcessor`` exports from its own
thread: ending a span only queues it, and the event loop never waits on the collector.
"""

from __future__ import annotations

import os
from typing import Any

from server.gateway.request_record import RequestRecord

TRACE_HEADERS = ("traceparent", "tracestate")


class Tracing:
    def __init__(self, endpoint: str, model_name: str) -> None:
        """Raises ValueError when OpenTelemetry is not installed or the protocol is unknown."""
        try:
            from opentelemetry.sdk.resources import Resource
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import BatchSpanProcessor
            from opentelemetry.trace import SpanKind, Status, StatusCode
            from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
        except ImportError as exc:
            raise ValueError(
                f"--otlp-traces-endpoint needs OpenTelemetry: pip install 'ise[tracing]' ({exc})"
            ) from None
        # vLLM's default is gRPC too; the variables are OpenTelemetry's own.
        protocol = (
            os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
            or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
            or "grpc"
        )
        exporter: Any
        if protocol == "grpc":
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter

            exporter = GrpcExporter(endpoint=endpoint, insecure=not endpoint.startswith("https://"))
        elif protocol == "http/protobuf":
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter

            exporter = HttpExporter(endpoint=endpoint)
        else:
            raise ValueError(f"OTLP protocol {protocol!r} is not supported: use grpc or http/protobuf")
        # OTEL_SERVICE_NAME, where set, names the service; else it is ise.
        resource = Resource.create({} if os.environ.get("OTEL_SERVICE_NAME") else {"service.name": "ise"})
        self.provider = TracerProvider(resource=resource)
        self.provider.add_span_processor(BatchSpanProcessor(exporter))
        self.tracer = self.provider.get_tracer("ise")
        self.propagator = TraceContextTextMapPropagator()
        self.model_name = model_name
        self._server, self._error = SpanKind.SERVER, Status(StatusCode.ERROR)

    def finished(self, record: RequestRecord) -> None:
        """The request's span, started at its admission and ended with it, queued for export."""
        context = record.context
        operation = "text_completion" if context.route == "/v1/completions" else "chat"
        start_ns = int(context.started_at * 1e9)
        span = self.tracer.start_span(
            f"{operation} {self.model_name}",
            context=self.propagator.extract(dict(context.trace_headers)) if context.trace_headers else None,
            kind=self._server,
            start_time=start_ns,
            attributes=_attributes(record, operation, self.model_name),
        )
        if record.finish_reason is None:
            span.set_status(self._error)
        span.end(end_time=start_ns + int(record.e2e * 1e9))

    def shutdown(self) -> None:
        """Export the spans still queued (blocking: run it off the event loop)."""
        self.provider.shutdown()


def _attributes(record: RequestRecord, operation: str, model: str) -> dict[str, Any]:
    context = record.context
    attributes: dict[str, Any] = {
        # OpenTelemetry's GenAI semantic conventions.
        "gen_ai.operation.name": operation,
        "gen_ai.request.model": model,
        "gen_ai.response.model": model,
        "gen_ai.request.max_tokens": record.max_tokens,
        "gen_ai.request.choice.count": record.n,
        "gen_ai.usage.input_tokens": record.prompt_tokens,
        "gen_ai.usage.output_tokens": record.generation_tokens,
        "gen_ai.response.finish_reasons": [record.finish_reason or "error"],
        "http.route": context.route,
        # vLLM's span attributes (vllm/tracing/utils.py), in seconds.
        "gen_ai.request.id": context.request_id,
        "gen_ai.request.n": record.n,
        "gen_ai.usage.prompt_tokens": record.prompt_tokens,
        "gen_ai.usage.completion_tokens": record.generation_tokens,
        "gen_ai.latency.e2e": record.e2e,
        # ise's own.
        "ise.usage.cached_tokens": record.cached_tokens,
    }
    for name, value in (
        ("gen_ai.latency.time_in_queue", record.queued),
        ("gen_ai.latency.time_to_first_token", record.ttft),
        ("gen_ai.latency.time_in_model_prefill", record.prefill),
        ("gen_ai.latency.time_in_model_decode", record.decode),
        ("gen_ai.latency.time_in_model_inference", record.inference),
        ("ise.latency.time_per_output_token", record.tpot),
    ):
        if value is not None:
            attributes[name] = value
    if context.api_key_name is not None:
        attributes["ise.api_key_name"] = context.api_key_name
    return attributes
