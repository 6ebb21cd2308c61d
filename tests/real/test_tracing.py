"""``ise serve --otlp-traces-endpoint``: a request's span reaches a real OTLP/HTTP receiver, in the
trace of the request's ``traceparent``, with the usage the response reported."""

from __future__ import annotations

from pathlib import Path

import openai
import pytest

from tests.helpers import OTLPReceiver, span_attributes
from tests.real.helpers import SMALL_SERVER, running_server, user

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"


def test_a_span_reaches_the_receiver(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/protobuf")
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "200")  # ms: export soon after the request ends
    with OTLPReceiver() as receiver:
        args = [*SMALL_SERVER, "--otlp-traces-endpoint", receiver.endpoint]
        with running_server(args, tmp_path / "ise.log") as server:
            client = openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0)
            answer = client.chat.completions.create(
                model=server.model,
                messages=user("Name a fruit."),
                max_tokens=6,
                temperature=0,
                extra_headers={"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01"},
            )
            [span] = receiver.wait_for(1)
    assert answer.usage is not None
    assert (span.trace_id.hex(), span.parent_span_id.hex()) == (TRACE_ID, PARENT_ID)
    attributes = span_attributes(span)
    assert attributes["gen_ai.usage.input_tokens"] == answer.usage.prompt_tokens
    assert attributes["gen_ai.usage.output_tokens"] == answer.usage.completion_tokens
    assert 0 < attributes["gen_ai.latency.time_to_first_token"] <= attributes["gen_ai.latency.e2e"]
