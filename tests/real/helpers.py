"""The real tier's helpers: ``ise serve`` started on a free port and stopped, the real engine in
process, and what a client reads from a real server (``/metrics``, event streams, retries).

The session's servers, as fixtures, live in conftest.py.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import httpx2
import openai
import pytest
import uvicorn
from fastapi import FastAPI
from openai.types.chat import ChatCompletionMessageParam
from pydantic import BaseModel

from adapters.builtin_model import BUILTIN_MODEL_NAME, builtin_model_dir
from adapters.config import EngineArgs
from adapters.cpu.engine import CoreFactory, CPUEngine
from adapters.cpu.engine_core import CPUEngineConfig, EngineCore
from adapters.model_info import ModelInfo
from server.config.settings import Settings
from tests.helpers import metric_sample, openai_error, sse_line

START_TIMEOUT_S = 900  # a first run downloads and converts the model
# Small and single-threaded: the box is two cores shared with other test runs.
SMALL_SERVER = ["--dtype", "float32", "--threads", "1", "--max-model-len", "512", "--kv-cache-gib", "0.25"]


@dataclass(frozen=True)
class ServerHandle:
    """A running ``ise serve``: where it answers, its log, and its process (its compile workers
    are its descendants)."""

    base_url: str  # ends in /v1, as the OpenAI SDK wants it
    root_url: str
    model: str
    model_dir: Path
    log_path: Path
    proc: subprocess.Popen[bytes]

    @property
    def pid(self) -> int:
        return self.proc.pid

    def metric(self, name: str, **labels: str) -> float:
        """A sample's value as ``GET /metrics`` shows it now (see ``metric_sample``)."""
        response = httpx.get(f"{self.root_url}/metrics", timeout=10)
        assert response.status_code == 200, response.text
        return metric_sample(response.text, name, **labels)

    def exit_code_within(self, timeout_s: float) -> int:
        """The exit status of a server told to stop, which must come within ``timeout_s``."""
        try:
            return self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            pytest.fail(f"ise serve still running {timeout_s} s after it was told to stop:\n{self.log_tail()}")

    def log_tail(self) -> str:
        return self.log_path.read_text()[-4000:]


def user(text: str) -> list[ChatCompletionMessageParam]:
    """A one-message conversation, typed as the SDK wants it."""
    return [{"role": "user", "content": text}]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def running_server(args: list[str], log_path: Path, model: str = BUILTIN_MODEL_NAME) -> Iterator[ServerHandle]:
    """``ise serve ARGS`` on a free port, healthy, until the block ends; then stopped as Ctrl-C
    stops it, unless the test stopped it already."""
    port = free_port()
    cmd = [sys.executable, "-m", "ise", "serve", "--port", str(port), *args]
    with log_path.open("wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    root = f"http://127.0.0.1:{port}"
    handle = ServerHandle(
        base_url=f"{root}/v1",
        root_url=root,
        model=model,
        model_dir=builtin_model_dir(Settings().cache_dir),
        log_path=log_path,
        proc=proc,
    )
    try:
        _wait_until_healthy(handle)
        yield handle
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _wait_until_healthy(server: ServerHandle) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            pytest.fail(f"ise serve exited with {server.proc.returncode}:\n{server.log_tail()}")
        with suppress(httpx.HTTPError):
            if httpx.get(f"{server.root_url}/health", timeout=2).status_code == 200:
                return
        time.sleep(0.5)
    server.proc.kill()
    pytest.fail(f"ise serve was not healthy within {START_TIMEOUT_S} s:\n{server.log_tail()}")


def cpu_engine(model_dir: Path, core_class: CoreFactory = EngineCore, **options: Any) -> CPUEngine:
    """The real CPU engine in process, float32 unless told otherwise, with these ``EngineArgs``."""
    args = EngineArgs.model_validate({"dtype": "float32", **options})
    config = CPUEngineConfig.resolve(args, ModelInfo.load(model_dir), kernel_dir=Settings().cache_dir)
    return CPUEngine(config, core_class)


@contextmanager
def serving_in_thread(app: FastAPI) -> Iterator[str]:
    """Serve an app built in process with uvicorn on a free loopback port; yields its root URL.

    For engines with an injected fault, which ``ise serve`` cannot be told to build.
    """
    port = free_port()
    uv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=lambda: asyncio.run(uv.serve()), daemon=True)
    thread.start()
    root = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while not uv.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert uv.started, "the in-process server did not start"
    try:
        yield root
    finally:
        uv.should_exit = True
        thread.join(timeout=30)


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def scrape_now(root: str, key: str | None = None) -> str:
    """``/metrics`` read at once, for tests that drive a client which is not asyncio (a browser, gRPC)."""
    response = httpx.get(f"{root}/metrics", headers=bearer(key) if key else {}, timeout=30)
    assert response.status_code == 200, response.text
    return response.text


async def scrape(client: httpx.AsyncClient, root: str, key: str | None = None) -> str:
    response = await client.get(f"{root}/metrics", headers=bearer(key) if key else {}, timeout=30)
    assert response.status_code == 200, response.text
    return response.text


async def wait_until(check: Callable[[], Awaitable[bool]], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not await check():
        assert time.monotonic() < deadline, f"still not {what} after {timeout_s} s"
        await asyncio.sleep(0.2)


async def sse_stream(response: httpx.Response) -> AsyncIterator[str]:
    """The payload of each event of an event stream as it arrives, ``[DONE]`` included: what
    ``sse_payloads`` reads from a whole body, checking the same framing line by line."""
    async for line in response.aiter_lines():
        if (payload := sse_line(line)) is not None:
            yield payload


def content_events(payloads: list[str]) -> int:
    """How many chunks carried generated text (chat or text completions)."""
    count = 0
    for payload in payloads:
        if payload == "[DONE]":
            continue
        choices = json.loads(payload).get("choices") or [{}]
        if choices[0].get("text") or (choices[0].get("delta") or {}).get("content"):
            count += 1
    return count


def finish_reasons(payloads: list[str]) -> list[str]:
    reasons = []
    for payload in payloads:
        if payload != "[DONE]":
            reasons += [c["finish_reason"] for c in json.loads(payload).get("choices", []) if c.get("finish_reason")]
    return reasons


def errors_in(payloads: list[str]) -> list[dict[str, Any]]:
    """The error events of a stream, each in OpenAI's shape."""
    return [openai_error(json.loads(p)) for p in payloads if p != "[DONE]" and "error" in json.loads(p)]


@dataclass
class Attempts:
    """Every HTTP attempt an openai client makes (through httpx's event hooks): when each request
    left, and each response's arrival, status and headers."""

    sent: list[float] = field(default_factory=list)
    answered: list[float] = field(default_factory=list)
    responses: list[httpx2.Response] = field(default_factory=list)

    def on_request(self, _: httpx2.Request) -> None:
        self.sent.append(time.monotonic())

    def on_response(self, response: httpx2.Response) -> None:
        self.answered.append(time.monotonic())
        self.responses.append(response)

    async def on_request_async(self, request: httpx2.Request) -> None:
        self.on_request(request)

    async def on_response_async(self, response: httpx2.Response) -> None:
        self.on_response(response)

    @property
    def statuses(self) -> list[int]:
        return [r.status_code for r in self.responses]

    def client(self, base_url: str, key: str, max_retries: int) -> openai.OpenAI:
        hooks: dict[str, list[Callable[..., Any]]] = {"request": [self.on_request], "response": [self.on_response]}
        return openai.OpenAI(
            base_url=base_url,
            api_key=key,
            max_retries=max_retries,
            timeout=120,
            http_client=openai.DefaultHttpxClient(event_hooks=hooks),
        )

    def async_client(self, base_url: str, key: str, max_retries: int) -> openai.AsyncOpenAI:
        hooks: dict[str, list[Callable[..., Any]]] = {
            "request": [self.on_request_async],
            "response": [self.on_response_async],
        }
        return openai.AsyncOpenAI(
            base_url=base_url,
            api_key=key,
            max_retries=max_retries,
            timeout=120,
            http_client=openai.DefaultAsyncHttpxClient(event_hooks=hooks),
        )


# A tool and a structured answer that both the chat and the Responses tests ask the real model for.
WEATHER_PARAMETERS: dict[str, Any] = {
    "type": "object",
    "properties": {"city": {"type": "string"}},
    "required": ["city"],
    "additionalProperties": False,
}


class City(BaseModel):
    name: str
    population: int
