"""OpenTelemetry tracing (``--otlp-traces-endpoint``): one span per request reaches a real OTLP/HTTP
receiver, continues the request's W3C trace, and carries its timings and usage as attributes."""

from __future__ import annotations

import json

import pytest

from server.endpoints.state import ServerState
from server.gateway.options import GatewayArgs
from tests.fast.fake_engine import FakeEngine
from tests.fast.helpers import chat_request, client, serving, text_request
from tests.fast.tiny_model import MODEL, TinyModel
from tests.helpers import OTLPReceiver, span_attributes

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
PARENT_ID = "b7ad6b7169203331"
SPAN_KIND_SERVER = 2
STATUS_CODE_ERROR = 2


@pytest.fixture(autouse=True)
def over_http(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/protobuf")


async def test_a_span_per_request_with_its_timings_and_usage(fake: FakeEngine, tiny: TinyModel) -> None:
    fake.script = lambda _: tiny.reply("Hello", " world", "!", delays=[0.05, 0.02, 0.02])
    with OTLPReceiver() as receiver:
        async with (
            serving(fake, tiny, otlp_traces_endpoint=receiver.endpoint, api_key=["sk-1"]) as app,
            client(app, key="sk-1") as http,
        ):
            headers = {"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01", "x-request-id": "req-traced"}
            whole = await http.post("/v1/chat/completions", json=chat_request(max_tokens=8), headers=headers)
            streamed = await http.post(
                "/v1/completions", json=text_request(stream=True, stream_options={"include_usage": True})
            )
        # The app's shutdown exported what was queued.
        chat, text = sorted(receiver.wait_for(2), key=lambda span: span.name)
        resource = receiver.resources[0]

    assert chat.name == f"chat {MODEL}" and chat.kind == SPAN_KIND_SERVER
    assert (chat.trace_id.hex(), chat.parent_span_id.hex()) == (TRACE_ID, PARENT_ID)
    usage = whole.json()["usage"]
    a = span_attributes(chat)
    assert (a["gen_ai.usage.input_tokens"], a["gen_ai.usage.output_tokens"]) == (
        usage["prompt_tokens"],
        usage["completion_tokens"],
    )
    assert (a["gen_ai.usage.prompt_tokens"], a["gen_ai.usage.completion_tokens"]) == (
        usage["prompt_tokens"],
        usage["completion_tokens"],
    )
    assert a["gen_ai.operation.name"] == "chat" and a["gen_ai.request.model"] == MODEL
    assert a["gen_ai.request.id"] == "req-traced" and a["ise.api_key_name"] == "key-1"
    assert a["gen_ai.request.max_tokens"] == 8 and a["gen_ai.response.finish_reasons"] == ["stop"]
    assert a["http.route"] == "/v1/chat/completions"
    # The timings add up as the Server-Timing header's do, in seconds; the span lasts the request.
    assert a["gen_ai.latency.time_to_first_token"] == pytest.approx(
        a["gen_ai.latency.time_in_queue"] + a["gen_ai.latency.time_in_model_prefill"], abs=1e-6
    )
    assert a["gen_ai.latency.time_to_first_token"] >= 0.05
    assert a["gen_ai.latency.time_to_first_token"] + a["gen_ai.latency.time_in_model_decode"] <= a["gen_ai.latency.e2e"]
    assert (chat.end_time_unix_nano - chat.start_time_unix_nano) / 1e9 == pytest.approx(
        a["gen_ai.latency.e2e"], abs=1e-6
    )
    assert resource["service.name"] == "ise"

    # A request without a traceparent starts a trace of its own.
    assert text.name == f"text_completion {MODEL}" and text.trace_id.hex() != TRACE_ID and not text.parent_span_id
    last = json.loads(streamed.text.split("data: ")[-2])
    assert span_attributes(text)["gen_ai.usage.output_tokens"] == last["usage"]["completion_tokens"]


async def test_a_failed_request_has_an_error_status(fake: FakeEngine, tiny: TinyModel) -> None:
    fake.script = lambda _: tiny.reply("Hello", " world", fail_at=1)
    with OTLPReceiver() as receiver:
        async with serving(fake, tiny, otlp_traces_endpoint=receiver.endpoint) as app, client(app) as http:
            assert (await http.post("/v1/chat/completions", json=chat_request())).status_code == 500
        [span] = receiver.wait_for(1)
    assert span.status.code == STATUS_CODE_ERROR
    assert span_attributes(span)["gen_ai.response.finish_reasons"] == ["error"]


def test_an_unknown_protocol_is_refused_at_start(
    fake: FakeEngine, tiny: TinyModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/json")
    with pytest.raises(ValueError, match="http/json"):
        ServerState(
            engine=fake,
            tokenization=tiny.tokenization,
            model_name=MODEL,
            gateway_args=GatewayArgs(otlp_traces_endpoint="http://127.0.0.1:4318/v1/traces"),
        )
