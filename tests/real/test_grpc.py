"""``ise serve --grpc-port`` against Triton's own gRPC client (tritonclient), the real model, both engines.

Inference over gRPC is the text completions API by another road: the same greedy prompt gives
the same text whole (``ModelInfer``) and streamed (``ModelStreamInfer``) as ``/v1/completions``
gives it; the key travels in the call's metadata; a client that cancels its stream has its
request aborted in the engine, as ``/metrics`` shows; SIGTERM drains gRPC as it drains HTTP.
"""

from __future__ import annotations

import json
import queue
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton
from tritonclient.utils import InferenceServerException

from tests.helpers import metric_sample
from tests.real.helpers import SMALL_SERVER, ServerHandle, bearer, free_port, running_server, scrape_now

KEY = "sk-ise-grpc-test"
PROMPT = "The capital of France is"
GREEDY = {"temperature": 0, "max_tokens": 16}
ENGINE_ARGS = {"cpu": [], "vllm": ["--engine", "vllm", "--enforce-eager"]}


@pytest.fixture(scope="module", params=list(ENGINE_ARGS))
def grpc_server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[ServerHandle, str]]:
    """A keyed server with gRPC beside HTTP; yields it and its gRPC address."""
    port = free_port()
    args = [*SMALL_SERVER, *ENGINE_ARGS[request.param], "--api-key", KEY, "--grpc-port", str(port)]
    with running_server(args, tmp_path_factory.mktemp("grpc") / "ise.log") as handle:
        yield handle, f"127.0.0.1:{port}"


def auth(key: str = KEY) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def inputs(prompt: str, stream: bool, sampling: dict[str, Any]) -> list[triton.InferInput]:
    """Triton's vLLM-backend inputs, as its sample client builds them; the prompt left out of the answer."""
    made = []
    for name, datatype, value in [
        ("text_input", "BYTES", prompt.encode()),
        ("stream", "BOOL", stream),
        ("sampling_parameters", "BYTES", json.dumps(sampling).encode()),
        ("exclude_input_in_output", "BOOL", True),
    ]:
        tensor = triton.InferInput(name, [1], datatype)
        tensor.set_data_from_numpy(np.array([value], dtype=object if datatype == "BYTES" else bool))
        made.append(tensor)
    return made


def text(result: triton.InferResult) -> str:
    output = result.as_numpy("text_output")
    assert output is not None
    return bytes(output[0]).decode()


def http_completion(server: ServerHandle, prompt: str, sampling: dict[str, Any]) -> str:
    body = {"model": server.model, "prompt": prompt, **sampling}
    response = httpx.post(f"{server.base_url}/completions", json=body, headers=bearer(KEY), timeout=120)
    assert response.status_code == 200, response.text
    answer: str = response.json()["choices"][0]["text"]
    return answer


def test_infer_and_stream_give_the_http_api_s_greedy_text(grpc_server: tuple[ServerHandle, str]) -> None:
    server, url = grpc_server
    expected = http_completion(server, PROMPT, GREEDY)
    with triton.InferenceServerClient(url) as client:
        assert client.is_server_ready() and client.is_model_ready(server.model, headers=auth())
        whole = client.infer(server.model, inputs(PROMPT, False, GREEDY), headers=auth())
        assert text(whole) == expected
        got: queue.Queue[tuple[Any, Any]] = queue.Queue()
        client.start_stream(callback=lambda result, error: got.put((result, error)), headers=auth())
        client.async_stream_infer(server.model, inputs(PROMPT, True, GREEDY), enable_empty_final_response=True)
        pieces = []
        while True:
            result, error = got.get(timeout=120)
            assert error is None, error
            response = result.get_response()
            if response.parameters["triton_final_response"].bool_param:
                assert not response.outputs  # the empty final response asked for
                break
            pieces.append(text(result))
        client.stop_stream()
    assert len(pieces) > 1 and "".join(pieces) == expected


def test_a_wrong_key_is_unauthenticated(grpc_server: tuple[ServerHandle, str]) -> None:
    server, url = grpc_server
    with triton.InferenceServerClient(url) as client:
        for headers in ({}, auth("sk-wrong")):
            with pytest.raises(InferenceServerException) as denied:
                client.infer(server.model, inputs(PROMPT, False, GREEDY), headers=headers)
            assert denied.value.status() == "StatusCode.UNAUTHENTICATED"
            assert "API key" in str(denied.value.message())


def test_a_cancelled_stream_is_aborted_in_the_engine(grpc_server: tuple[ServerHandle, str]) -> None:
    server, url = grpc_server
    aborted = {"reason": "client_disconnect"}
    released = "ise_abort_kv_release_seconds_count"

    before = scrape_now(server.root_url, KEY)
    long = {"temperature": 0, "max_tokens": 400, "ignore_eos": True}
    with triton.InferenceServerClient(url) as client:
        got: queue.Queue[tuple[Any, Any]] = queue.Queue()
        client.start_stream(callback=lambda result, error: got.put((result, error)), headers=auth())
        client.async_stream_infer(server.model, inputs("Tell me a long story.", True, long))
        for _ in range(3):  # the request is generating
            _, error = got.get(timeout=120)
            assert error is None, error
        client.stop_stream(cancel_requests=True)
    deadline = time.monotonic() + 60
    while True:
        now = scrape_now(server.root_url, KEY)
        if (
            metric_sample(now, "ise_requests_aborted_total", **aborted)
            == metric_sample(before, "ise_requests_aborted_total", **aborted) + 1
            and metric_sample(now, released) == metric_sample(before, released) + 1
            and metric_sample(now, "ise_num_requests_running") == 0
        ):
            break
        assert time.monotonic() < deadline, "the cancelled stream's request was not aborted in the engine"
        time.sleep(0.2)


def test_sigterm_drains_a_grpc_stream_and_refuses_new_calls(tmp_path: Path) -> None:
    """The drain is HTTP's: a stream running at SIGTERM ends whole, a new call is UNAVAILABLE, exit 0."""
    port = free_port()
    args = [*SMALL_SERVER, "--grpc-port", str(port), "--drain-timeout", "120"]
    with running_server(args, tmp_path / "ise.log") as server:
        with triton.InferenceServerClient(f"127.0.0.1:{port}") as client:
            got: queue.Queue[tuple[Any, Any]] = queue.Queue()
            client.start_stream(callback=lambda result, error: got.put((result, error)))
            story = {"temperature": 0, "max_tokens": 48, "ignore_eos": True}
            client.async_stream_infer(server.model, inputs("Tell me a long story.", True, story))
            result, error = got.get(timeout=120)
            assert error is None, error
            pieces = [text(result)]
            server.proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + 10
            while client.is_server_ready():
                assert time.monotonic() < deadline, "ServerReady still true 10 s after SIGTERM"
                time.sleep(0.05)
            with pytest.raises(InferenceServerException) as refused:
                client.infer(server.model, inputs(PROMPT, False, GREEDY))
            assert refused.value.status() == "StatusCode.UNAVAILABLE"
            while True:
                result, error = got.get(timeout=120)
                assert error is None, error
                pieces.append(text(result))
                if result.get_response().parameters["triton_final_response"].bool_param:
                    break
            client.stop_stream()
        assert len(pieces) > 2 and "".join(pieces)
        assert server.exit_code_within(60) == 0
