"""What both tiers read off the wire (server-sent events, OpenAI's error shape, Retry-After,
Prometheus text and OTLP trace exports), the series the Grafana dashboard queries, and the CPU
time a process tree spends.

One reading of each, so the fast tier's fake and the real tier's model are held to the same format.
A test that compares a stream byte for byte does so itself; these parse.
"""

from __future__ import annotations

import gzip
import http.server
import json
import re
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import httpx
import psutil
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span
from prometheus_client.parser import text_string_to_metric_families

ERROR_FIELDS = {"message", "type", "param", "code"}
_LINE_END = re.compile(r"\r\n|\r|\n")  # the three the SSE standard allows
_EVENT_END = re.compile(r"(?:\r\n|\r(?!\n)|\n){2}")  # a CRLF is one line end, never two


def sse_payloads(body: str) -> list[str]:
    """The payload of each event of a whole event stream, ``[DONE]`` included.

    Checks OpenAI's framing on the way: every event is one ``data: `` line ended by a blank line.
    Comment events (sse-starlette's ``: ping`` keep-alive on a quiet stream, which clients skip)
    are passed over.
    """
    *events, rest = _EVENT_END.split(body)
    assert rest == "", body[-200:]
    payloads = []
    for event in events:
        assert _LINE_END.search(event) is None, event
        if (payload := sse_line(event)) is not None:
            payloads.append(payload)
    return payloads


def sse_line(line: str) -> str | None:
    """The payload of one line of an event stream read line by line; ``None`` for the blank line
    that ends an event, or a comment. The same framing as ``sse_payloads``."""
    if not line or line.startswith(":"):
        return None
    assert line.startswith("data: "), line
    return line.removeprefix("data: ")


def sse_typed_events(body: str) -> list[tuple[str, dict[str, Any]]]:
    """The (name, data) of each event of a whole stream of typed events (Anthropic's Messages and
    OpenAI's Responses API): an ``event:`` line naming the data's own ``type``, then one ``data:``
    line of JSON. Comment events (keep-alives) are passed over; there is no ``[DONE]``.
    """
    *events, rest = _EVENT_END.split(body)
    assert rest == "", body[-200:]
    typed = []
    for event in events:
        lines = [line for line in _LINE_END.split(event) if not line.startswith(":")]
        if not lines:
            continue
        assert len(lines) == 2 and lines[0].startswith("event: ") and lines[1].startswith("data: "), event
        name, data = lines[0].removeprefix("event: "), json.loads(lines[1].removeprefix("data: "))
        assert data.get("type") == name, event
        typed.append((name, data))
    return typed


def sse_chunks(body: str) -> list[dict[str, Any]]:
    """The JSON chunks of a whole event stream that ends with ``data: [DONE]``, and has it nowhere else."""
    *chunks, done = sse_payloads(body)
    assert done == "[DONE]", body[-200:]
    return [json.loads(chunk) for chunk in chunks]


def openai_error(body: Any) -> dict[str, Any]:
    """The error of ``body``, which must be OpenAI's ``{"error": {"message", "type", "param", "code"}}``
    with a message: what the openai SDK reads into its exception."""
    assert isinstance(body, dict) and set(body) == {"error"}, body
    error: dict[str, Any] = body["error"]
    assert set(error) == ERROR_FIELDS, error
    assert isinstance(error["message"], str) and error["message"], error
    return error


def assert_openai_error(response: httpx.Response, status: int, code: str | None = None) -> dict[str, Any]:
    """The error of a ``status`` answer in OpenAI's shape (with ``code``, when given)."""
    assert response.status_code == status, response.text
    error = openai_error(response.json())
    if code is not None:
        assert error["code"] == code, error
    return error


def retry_after_s(headers: Mapping[str, str]) -> float:
    """The wait a refusal asks for, in seconds: ``retry-after-ms`` (the openai SDK's), which
    ``retry-after`` (every other client's) must round up to whole seconds, one at the least."""
    seconds, ms = int(headers["retry-after"]), int(headers["retry-after-ms"])
    assert seconds >= 1 and seconds - 1 < ms / 1000 <= seconds, (seconds, ms)
    return ms / 1000


def metric_sample(text: str, name: str, **labels: str) -> float:
    """One sample of ``/metrics``' Prometheus text.

    A labelled sample never counted has no line yet and reads 0, as Prometheus reads a missing
    counter; an unlabelled one is always exported, so its absence fails.
    """
    assert "{" not in name, f"{name}: labels go in ``labels``, not in the name"
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return sample.value
    assert labels, f"{name} missing from /metrics"
    return 0.0


def cpu_seconds(processes: Iterable[psutil.Process]) -> dict[int, float]:
    """User and system CPU seconds of each of ``processes`` still alive, by pid: the work grammar
    compiles do in worker processes, which a test checks has stopped."""
    times = {}
    for process in processes:
        try:
            cpu = process.cpu_times()
        except psutil.NoSuchProcess:
            continue
        times[process.pid] = cpu.user + cpu.system
    return times


class OTLPReceiver:
    """A real OTLP/HTTP trace receiver on 127.0.0.1: it decodes each ``POST /v1/traces`` as the
    protobuf ``ExportTraceServiceRequest`` a collector would, and keeps the spans."""

    def __init__(self) -> None:
        self.spans: list[Span] = []
        self.resources: list[dict[str, Any]] = []
        self._arrived = threading.Condition()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                if self.headers.get("content-encoding") == "gzip":
                    body = gzip.decompress(body)
                request = ExportTraceServiceRequest.FromString(body)
                with receiver._arrived:
                    for resource_spans in request.resource_spans:
                        resource = {a.key: _any_value(a.value) for a in resource_spans.resource.attributes}
                        for scope_spans in resource_spans.scope_spans:
                            receiver.spans += scope_spans.spans
                            receiver.resources += [resource] * len(scope_spans.spans)
                    receiver._arrived.notify_all()
                reply = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}/v1/traces"

    def __enter__(self) -> OTLPReceiver:
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *_: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def wait_for(self, count: int, timeout_s: float = 30.0) -> list[Span]:
        """The first ``count`` spans, once that many have arrived."""
        with self._arrived:
            assert self._arrived.wait_for(lambda: len(self.spans) >= count, timeout_s), (
                f"{len(self.spans)} of {count} spans arrived within {timeout_s} s"
            )
            return self.spans[:count]


def span_attributes(span: Span) -> dict[str, Any]:
    return {attribute.key: _any_value(attribute.value) for attribute in span.attributes}


def _any_value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [_any_value(item) for item in value.array_value.values]
    return getattr(value, kind) if kind is not None else None


DASHBOARD = Path(__file__).resolve().parents[1] / "configs" / "grafana" / "ise-dashboard.json"
_SERIES = re.compile(r"\b(?:vllm:[a-z_:]+|ise_[a-z_]+|process_[a-z_]+|python_[a-z_]+)\b")
_SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "summary": ("_sum", "_count")}


def dashboard_series(dashboard: Mapping[str, Any]) -> set[str]:
    """Every series name the dashboard's PromQL queries (targets' ``expr``, variables' queries) use."""
    queries: list[str] = [
        target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", []) if "expr" in target
    ]
    queries += [variable["definition"] for variable in dashboard["templating"]["list"] if "definition" in variable]
    return {name for query in queries for name in _SERIES.findall(query)}


def exposed_series(metrics_text: str) -> set[str]:
    """Every series name ``/metrics`` declares, samples or not (a labelled counter never moved has no
    sample yet, but Prometheus knows it): a counter's ``_total``, a histogram's ``_bucket``, ..."""
    names = set()
    for family in text_string_to_metric_families(metrics_text):
        suffixes = _SUFFIXES.get(family.type, ("",))
        names |= {family.name + suffix for suffix in suffixes}
        names |= {sample.name for sample in family.samples}
    return names
