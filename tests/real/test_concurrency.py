"""Continuous batching as a user sees it: concurrent streams, bursts, and clients that leave."""

from __future__ import annotations

import asyncio
import threading
import time

import httpx
import openai

from tests.helpers import sse_line
from tests.real.helpers import ServerHandle, user

QUESTIONS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "Count from 1 to 10.",
    "Tell me a joke.",
    "Explain gravity in one paragraph.",
    "List three colors.",
    "What is 2+2?",
    "Name a famous painter.",
]


async def _stream_text(api_aclient: openai.AsyncOpenAI, model: str, question: str) -> str:
    stream = await api_aclient.chat.completions.create(
        model=model, messages=user(question), temperature=0, max_tokens=48, stream=True
    )
    return "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])


async def _max_running_while(api_server: ServerHandle, work: asyncio.Future[list[str]]) -> int:
    """Sample the engine's running count from /metrics until ``work`` is done."""
    peak = 0
    while not work.done():
        peak = max(peak, int(await asyncio.to_thread(api_server.metric, "ise_num_requests_running")))
        await asyncio.sleep(0.05)
    return peak


async def test_concurrent_streams_equal_solo_outputs(
    api_client: openai.OpenAI, api_aclient: openai.AsyncOpenAI, api_server: ServerHandle
) -> None:
    solo = [
        api_client.chat.completions.create(model=api_server.model, messages=user(q), temperature=0, max_tokens=48)
        .choices[0]
        .message.content
        for q in QUESTIONS
    ]
    together = asyncio.gather(*[_stream_text(api_aclient, api_server.model, q) for q in QUESTIONS])
    peak = await _max_running_while(api_server, together)
    assert await together == solo
    assert peak >= 4, "the streams should have been decoded as one batch"


async def test_burst_beyond_batch_size_all_complete(api_aclient: openai.AsyncOpenAI, api_server: ServerHandle) -> None:
    count = 40  # more than the default 32 slots: some must wait, none may be lost
    replies = await asyncio.gather(
        *[
            api_aclient.completions.create(
                model=api_server.model, prompt=f"Fact number {i}:", max_tokens=6, temperature=0
            )
            for i in range(count)
        ]
    )
    assert len(replies) == count
    assert all(r.usage is not None and r.usage.completion_tokens == 6 for r in replies)
    assert api_server.metric("ise_num_requests_waiting") == 0


def _wait_for_running(api_server: ServerHandle, want: int, within_s: float) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if api_server.metric("ise_num_requests_running") == want:
            return True
        time.sleep(0.05)
    return False


LONG = {"max_tokens": 1500, "ignore_eos": True, "temperature": 0}  # ~50 s if never aborted


def test_stream_disconnect_aborts_request(api_server: ServerHandle) -> None:
    body = {"model": api_server.model, "messages": user("Tell me a long story."), "stream": True, **LONG}
    with (
        httpx.Client(timeout=60) as http,
        http.stream("POST", f"{api_server.base_url}/chat/completions", json=body) as response,
    ):
        lines = response.iter_lines()
        received = [next(lines) for _ in range(6)]
        assert [sse_line(line) for line in received][1::2] == [None] * 3  # three events, each ended by a blank line
        assert api_server.metric("ise_num_requests_running") == 1
    assert _wait_for_running(api_server, 0, within_s=10), "the abandoned stream kept its slot"


def test_non_streaming_disconnect_aborts_request(api_server: ServerHandle) -> None:
    body = {"model": api_server.model, "prompt": "Once upon a time", **LONG}
    failure: list[BaseException] = []

    def impatient_client() -> None:
        try:
            httpx.post(f"{api_server.base_url}/completions", json=body, timeout=3)
        except httpx.TimeoutException as exc:
            failure.append(exc)

    thread = threading.Thread(target=impatient_client)
    thread.start()
    assert _wait_for_running(api_server, 1, within_s=10)
    thread.join(timeout=30)
    assert failure, "the api_client should have given up before the completion finished"
    assert _wait_for_running(api_server, 0, within_s=10), "the abandoned request kept its slot"
    assert httpx.get(f"{api_server.root_url}/health", timeout=10).status_code == 200
