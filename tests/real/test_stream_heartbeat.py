"""A stream that waits in a real server's queue hears keep-alives, or where it waits, before its first
token, and the openai SDK and LangChain's ChatOpenAI still parse it: ``--max-num-seqs 2`` with two long
requests running ahead of it, ``--sse-keep-alive-interval 1``."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterator

import httpx
import openai
import pytest
from langchain_openai import ChatOpenAI
from pydantic import SecretStr

from tests.real.helpers import SMALL_SERVER, ServerHandle, running_server, user


@pytest.fixture(scope="module")
def narrow(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerHandle]:
    args = [*SMALL_SERVER, "--max-num-seqs", "2", "--sse-keep-alive-interval", "1"]
    with running_server(args, tmp_path_factory.mktemp("narrow") / "ise.log") as handle:
        yield handle


async def lines_until_first_token(client: httpx.AsyncClient, server: ServerHandle, position: bool) -> list[str]:
    """The stream's non-empty lines before its first data line (then read to its end)."""
    headers = {"x-ise-queue-position": "true"} if position else {}
    body = {"model": server.model, "messages": user("Name a color."), "max_tokens": 4, "stream": True}
    seen: list[str] = []
    async with client.stream("POST", f"{server.base_url}/chat/completions", json=body, headers=headers) as response:
        assert response.status_code == 200
        lines = response.aiter_lines()
        async for line in lines:
            if line.startswith("data:"):
                break
            if line:
                seen.append(line)
        async for _ in lines:
            pass
    return seen


def langchain_stream(server: ServerHandle) -> str:
    llm = ChatOpenAI(
        base_url=server.base_url,
        api_key=SecretStr("unused"),
        model=server.model,
        temperature=0,
        max_tokens=4,
        max_retries=0,
        timeout=300,
        default_headers={"x-ise-queue-position": "true"},
    )
    return "".join(str(chunk.content) for chunk in llm.stream("Name a color."))


async def test_waiting_streams_hear_keep_alives_and_positions_and_clients_parse_them(narrow: ServerHandle) -> None:
    long = {"model": narrow.model, "prompt": "Once upon a time", "max_tokens": 120, "ignore_eos": True}
    async with httpx.AsyncClient(timeout=600) as client:
        ahead = [asyncio.create_task(client.post(f"{narrow.base_url}/completions", json=long)) for _ in range(2)]
        deadline = time.monotonic() + 120
        while (await client.get(f"{narrow.root_url}/load")).json()["num_requests_running"] < 2:
            assert time.monotonic() < deadline, "the long requests did not start"
            await asyncio.sleep(0.1)
        sdk = openai.AsyncOpenAI(base_url=narrow.base_url, api_key="unused", max_retries=0, timeout=600)
        sdk_stream = await sdk.chat.completions.create(
            model=narrow.model,
            messages=user("Name a color."),
            max_tokens=4,
            stream=True,
            extra_headers={"x-ise-queue-position": "true"},
        )

        async def sdk_text() -> str:
            return "".join([c.choices[0].delta.content or "" async for c in sdk_stream if c.choices])

        asked, plain, sdk_answer, langchain_answer = await asyncio.gather(
            lines_until_first_token(client, narrow, position=True),
            lines_until_first_token(client, narrow, position=False),
            sdk_text(),
            asyncio.to_thread(langchain_stream, narrow),
        )
        for task in ahead:
            assert (await task).status_code == 200
    # The waiting stream that asked hears its place at once and every second; the other, keep-alives.
    assert asked and all(re.fullmatch(r": queue position=\d+ waiting=\d+( estimated_wait_ms=\d+)?", c) for c in asked)
    assert len(asked) >= 3, asked
    assert plain.count(": keep-alive") >= 2, plain
    assert sdk_answer.strip() and langchain_answer.strip()
