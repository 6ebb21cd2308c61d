"""gRPC (``--grpc-port``): KServe v2's GRPCInferenceService with Triton's LLM tensors, on the fake engine.

Triton's own client (tritonclient's, synchronous, run in a thread while the app's loop serves)
calls a server started as ``ise serve --grpc-port`` starts it: the app's lifespan opens the
port. What the real model answers, and a cancelled stream reaching the real engine, are in
tests/real/test_grpc.py.
"""

from __future__ import annotations

import asyncio
import json
import queue
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
from fastapi import FastAPI
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.utils import InferenceServerException

from server.endpoints.state import ServerState
from server.gateway.options import GatewayArgs
from server.runtime.app import create_app
from tests.fast.fake_engine import FakeEngine
from tests.fast.tiny_model import MODEL, TinyModel

KEY = "sk-ise-grpc"
T = TypeVar("T")


@asynccontextmanager
async def _app(fake: FakeEngine, tiny: TinyModel, port: int, **gateway: Any) -> AsyncIterator[FastAPI]:
    state = ServerState(
        engine=fake, tokenization=tiny.tokenization, model_name=MODEL, gateway_args=GatewayArgs(**gateway)
    )
    app = create_app(state, grpc_address=("127.0.0.1", port))
    async with app.router.lifespan_context(app):
        yield app


@pytest.fixture
async def grpc_url(fake: FakeEngine, tiny: TinyModel) -> AsyncIterator[str]:
    port = free_port()
    async with _app(fake, tiny, port, api_key=[KEY]):
        yield f"127.0.0.1:{port}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def auth(key: str = KEY) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def inputs(
    prompt: str, stream: bool = False, sampling: dict[str, Any] | None = None, **flags: bool
) -> list[triton.InferInput]:
    """Triton's vLLM-backend inputs, built as its clients build them."""

    def tensor(name: str, datatype: str, value: Any) -> triton.InferInput:
        made = triton.InferInput(name, [1], datatype)
        made.set_data_from_numpy(np.array([value], dtype=object if datatype == "BYTES" else bool))
        return made

    made = [tensor("text_input", "BYTES", prompt.encode()), tensor("stream", "BOOL", stream)]
    if sampling is not None:
        made.append(tensor("sampling_parameters", "BYTES", json.dumps(sampling).encode()))
    made += [tensor(name, "BOOL", value) for name, value in flags.items()]
    return made


async def in_thread(call: Callable[[], T]) -> T:
    """A blocking tritonclient call, while this loop goes on serving it."""
    return await asyncio.to_thread(call)


def text(result: triton.InferResult) -> str:
    output = result.as_numpy("text_output")
    assert output is not None
    return bytes(output[0]).decode()


async def refused(call: Callable[[], object]) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as caught:
        await in_thread(call)
    return caught.value


def stream(url: str, requests: list[dict[str, Any]], headers: dict[str, str] | None = None) -> list[Any]:
    """Each request sent on one stream; the (result, error) pairs until every request had its final response."""
    client = triton.InferenceServerClient(url)
    got: queue.Queue[tuple[Any, Any]] = queue.Queue()
    client.start_stream(callback=lambda result, error: got.put((result, error)), headers=headers or auth())
    try:
        for request in requests:
            client.async_stream_infer(MODEL, **request)
        answers, finals = [], 0
        while finals < len(requests):
            result, error = got.get(timeout=10)
            answers.append((result, error))
            final = result is not None and result.get_response().parameters["triton_final_response"].bool_param
            finals += 1 if (error is not None or final) else 0
        return answers
    finally:
        client.stop_stream()
        client.close()


async def test_infer_answers_as_the_completions_api(grpc_url: str, tiny: TinyModel) -> None:
    client = triton.InferenceServerClient(grpc_url)
    result = await in_thread(lambda: client.infer(MODEL, inputs("Hi", sampling={"max_tokens": 8}), headers=auth()))
    assert text(result) == "HiHello world!"  # Triton's default: the prompt, then the answer
    flags = {"exclude_input_in_output": True, "return_finish_reason": True, "return_num_output_tokens": True}
    result = await in_thread(lambda: client.infer(MODEL, inputs("Hi", sampling={}, **flags), headers=auth()))
    assert text(result) == "Hello world!"
    assert result.as_numpy("finish_reason")[0] == b"stop"
    assert result.as_numpy("num_output_tokens")[0] == len(tiny.reply("Hello", " world", "!").token_ids)
    # Numbers as strings, as Triton's own sample client sends them.
    capped = inputs("Hi", sampling={"max_tokens": "2"}, return_num_output_tokens=True, return_finish_reason=True)
    result = await in_thread(lambda: client.infer(MODEL, capped, headers=auth()))
    assert result.as_numpy("num_output_tokens")[0] == 2
    assert result.as_numpy("finish_reason")[0] == b"length"
    # A field that takes no effect is named, as HTTP's x-ignored-params names it.
    odd = inputs("Hi", sampling={"max_tokens": 2, "made_up": 1})
    result = await in_thread(lambda: client.infer(MODEL, odd, headers=auth()))
    assert result.get_response().parameters["ignored_params"].string_param == "made_up"


async def test_stream_sends_pieces_then_the_final_flag(grpc_url: str) -> None:
    request: dict[str, Any] = {"inputs": inputs("Hi", stream=True, sampling={"max_tokens": 8})}
    answers = await in_thread(lambda: stream(grpc_url, [request]))
    assert [error for _, error in answers] == [None] * len(answers)
    assert "".join(text(result) for result, _ in answers) == "Hello world!"  # no prompt when streaming
    finals = [result.get_response().parameters["triton_final_response"].bool_param for result, _ in answers]
    assert finals == [False] * (len(answers) - 1) + [True]
    # Asked for, the last response is an empty one, as decoupled Triton models send it.
    request["enable_empty_final_response"] = True
    answers = await in_thread(lambda: stream(grpc_url, [request]))
    last = answers[-1][0].get_response()
    assert not last.outputs and last.parameters["triton_final_response"].bool_param
    assert "".join(text(result) for result, _ in answers[:-1]) == "Hello world!"


async def test_refusals_are_grpc_status_codes(grpc_url: str) -> None:
    client = triton.InferenceServerClient(grpc_url)
    bad = await refused(lambda: client.infer(MODEL, inputs("Hi", sampling={"temperature": -1}), headers=auth()))
    assert bad.status() == "StatusCode.INVALID_ARGUMENT"
    assert bad.message().startswith("sampling_parameters.temperature: ")
    twice = await refused(lambda: client.infer(MODEL, [*inputs("Hi"), *inputs("Hi")[:1]], headers=auth()))
    assert twice.status() == "StatusCode.INVALID_ARGUMENT" and twice.message() == "text_input: given twice"
    stranger = triton.InferInput("image", [1], "BYTES")
    stranger.set_data_from_numpy(np.array([b"x"], dtype=object))
    unknown_input = await refused(lambda: client.infer(MODEL, [*inputs("Hi"), stranger], headers=auth()))
    assert unknown_input.status() == "StatusCode.INVALID_ARGUMENT"
    assert unknown_input.message().startswith("image: not an input of this model")
    unknown = await refused(lambda: client.infer("no-such-model", inputs("Hi"), headers=auth()))
    assert unknown.status() == "StatusCode.NOT_FOUND"
    for headers in ({}, auth("sk-wrong")):
        denied = await refused(lambda: client.infer(MODEL, inputs("Hi"), headers=headers))  # noqa: B023
        assert denied.status() == "StatusCode.UNAUTHENTICATED"
    assert await in_thread(lambda: client.is_server_live()) is True  # liveness needs no key, as /health
    denied = await refused(lambda: client.is_model_ready(MODEL))
    assert denied.status() == "StatusCode.UNAUTHENTICATED"
    assert await in_thread(lambda: client.is_model_ready(MODEL, headers=auth())) is True
    assert await in_thread(lambda: client.is_model_ready("other", headers=auth())) is False
    # On a stream, a bad request fails alone (Triton's error_message); the next one is answered.
    good = {"inputs": inputs("Hi", stream=True)}
    answers = await in_thread(lambda: stream(grpc_url, [{"inputs": inputs("Hi", sampling={"n": 2})}, good]))
    errors = [str(error) for _, error in answers if error is not None]
    assert len(errors) == 1 and "INVALID_ARGUMENT: sampling_parameters.n" in errors[0]
    assert "".join(text(r) for r, e in answers if e is None) == "Hello world!"


async def test_limits_and_drain_are_the_gateway_s(fake: FakeEngine, tiny: TinyModel) -> None:
    port = free_port()
    async with _app(fake, tiny, port, requests_per_minute=1) as app:
        client = triton.InferenceServerClient(f"127.0.0.1:{port}")
        await in_thread(lambda: client.infer(MODEL, inputs("Hi")))
        limited = await refused(lambda: client.infer(MODEL, inputs("Hi")))
        assert limited.status() == "StatusCode.RESOURCE_EXHAUSTED"
        state: ServerState = app.state.ise
        state.gateway.admission.draining = True
        assert await in_thread(lambda: client.is_server_ready()) is False
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            check = await health.Check(health_pb2.HealthCheckRequest(service="inference.GRPCInferenceService"))
            assert check.status == health_pb2.HealthCheckResponse.NOT_SERVING
            state.gateway.admission.draining = False
            check = await health.Check(health_pb2.HealthCheckRequest(service=""))
            assert check.status == health_pb2.HealthCheckResponse.SERVING


async def test_draining_refuses_with_unavailable(fake: FakeEngine, tiny: TinyModel) -> None:
    port = free_port()
    async with _app(fake, tiny, port) as app:
        app.state.ise.gateway.admission.draining = True
        client = triton.InferenceServerClient(f"127.0.0.1:{port}")
        unavailable = await refused(lambda: client.infer(MODEL, inputs("Hi")))
        assert unavailable.status() == "StatusCode.UNAVAILABLE"


async def test_metadata_names_the_tensors(grpc_url: str) -> None:
    client = triton.InferenceServerClient(grpc_url)
    model = await in_thread(lambda: client.get_model_metadata(MODEL, headers=auth()))
    assert {(t.name, t.datatype) for t in model.inputs} >= {("text_input", "BYTES"), ("sampling_parameters", "BYTES")}
    assert {t.name for t in model.outputs} >= {"text_output", "num_input_tokens", "num_output_tokens"}
    server = await in_thread(lambda: client.get_server_metadata(headers=auth()))
    assert server.name == "ise"


async def test_a_taken_port_stops_the_start_and_names_it(fake: FakeEngine, tiny: TinyModel) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(OSError, match=f"cannot listen for gRPC on 127.0.0.1:{port}"):
            async with _app(fake, tiny, port):
                pass
    assert not fake.is_alive  # the engine started for nothing is shut down again
