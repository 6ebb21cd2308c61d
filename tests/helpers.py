"""What both tiers read off the wire (server-sent events, OpenAI's error shape, Retry-After and
Prometheus text) and the CPU time a process tree spends.

One reading of each, so the fast tier's fake and the real tier's model are held to the same format.
A test that compares a stream byte for byte does so itself; these parse.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from typing import Any

import httpx
import psutil
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
