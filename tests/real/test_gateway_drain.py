"""SIGTERM, as a deployment sends it: a real ``ise serve`` drains its streams and exits 0.

Each test stops its own server, so each has one.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import openai
import pytest

from adapters.builtin_model import BUILTIN_MODEL_NAME
from tests.helpers import assert_openai_error
from tests.real.helpers import (
    SMALL_SERVER,
    Attempts,
    ServerHandle,
    content_events,
    errors_in,
    finish_reasons,
    running_server,
    sse_stream,
    user,
)

MODEL = BUILTIN_MODEL_NAME


@dataclass
class Stream:
    """One streamed completion read to its end (or until told to leave), with what it carried."""

    payloads: list[str] = field(default_factory=list)
    started: asyncio.Event = field(default_factory=asyncio.Event)  # its first generated text arrived
    leave: asyncio.Event = field(default_factory=asyncio.Event)  # close it early
    status: int = 0

    async def run(self, client: httpx.AsyncClient, base_url: str, max_tokens: int) -> None:
        body = {"model": MODEL, "prompt": "Tell me a long story.", "max_tokens": max_tokens, "ignore_eos": True}
        async with client.stream("POST", f"{base_url}/completions", json={**body, "stream": True}) as response:
            self.status = response.status_code
            async for payload in sse_stream(response):
                self.payloads.append(payload)
                if content_events(self.payloads):
                    self.started.set()
                if self.leave.is_set():
                    return

    @property
    def finished(self) -> bool:
        return bool(self.payloads) and self.payloads[-1] == "[DONE]"


async def _all_started(streams: list[Stream], tasks: list[asyncio.Task[None]]) -> None:
    """Wait until every stream has generated text; raise the error of one that failed first."""
    deadline = time.monotonic() + 300
    while not all(s.started.is_set() for s in streams):
        for task in tasks:
            if task.done():
                task.result()
        assert time.monotonic() < deadline, "the streams did not start within 300 s"
        await asyncio.sleep(0.05)


@pytest.fixture
def draining(tmp_path: Path) -> Iterator[ServerHandle]:
    with running_server([*SMALL_SERVER, "--drain-timeout", "30"], tmp_path / "ise.log") as served:
        yield served


async def test_sigterm_drains_streams_refuses_new_work_and_exits_0(draining: ServerHandle) -> None:
    streams = [Stream() for _ in range(3)]
    # Keeps the drain going while the checks below run, whatever the machine's speed; it then leaves.
    keeper = Stream()
    async with httpx.AsyncClient(timeout=300) as client:
        tasks = [asyncio.create_task(s.run(client, draining.base_url, 40)) for s in streams]
        tasks.append(asyncio.create_task(keeper.run(client, draining.base_url, 480)))
        await _all_started([*streams, keeper], tasks)
        draining.proc.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        assert not any(s.finished for s in [*streams, keeper]), "a stream ended before SIGTERM"

        async def health() -> httpx.Response:
            return await client.get(f"{draining.root_url}/health")

        while (probe := await health()).status_code == 200:
            assert time.monotonic() - signalled < 10, "/health still 200 10 s after SIGTERM"
            await asyncio.sleep(0.05)
        assert_openai_error(probe, 503, "server_shutting_down")

        body = {"model": MODEL, "messages": user("Hi"), "max_tokens": 2}
        refused = await client.post(f"{draining.base_url}/chat/completions", json=body)
        assert_openai_error(refused, 503, "server_shutting_down")
        assert int(refused.headers["retry-after"]) >= 1
        assert "x-should-retry" not in refused.headers  # so the openai SDK retries it:

        attempts = Attempts()
        async with attempts.async_client(draining.base_url, "unused", max_retries=1) as sdk:
            with pytest.raises(openai.InternalServerError) as caught:
                await sdk.chat.completions.create(model=MODEL, messages=user("Hi"), max_tokens=2)
        assert caught.value.status_code == 503 and caught.value.code == "server_shutting_down"
        assert attempts.statuses == [503, 503]
        assert attempts.sent[1] - attempts.answered[0] >= 0.9  # its Retry-After: 1

        assert not keeper.finished, "the keeper stream ended before the checks were done"
        keeper.leave.set()
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=120)

    for stream in streams:
        assert stream.status == 200
        assert not errors_in(stream.payloads), stream.payloads
        assert finish_reasons(stream.payloads) == ["length"] and stream.payloads[-1] == "[DONE]"
        assert content_events(stream.payloads) >= 1
        completion = "".join(json.loads(p)["choices"][0]["text"] for p in stream.payloads[:-1])
        assert completion
    assert draining.exit_code_within(60) == 0
    log = draining.log_path.read_text()
    assert "SIGTERM: draining" in log and "Drain timeout" not in log


@pytest.fixture
def impatient(tmp_path: Path) -> Iterator[ServerHandle]:
    with running_server([*SMALL_SERVER, "--drain-timeout", "0"], tmp_path / "ise.log") as served:
        yield served


async def test_zero_grace_ends_streams_with_an_error_event_and_exits_fast(impatient: ServerHandle) -> None:
    raw = Stream()
    sdk_started = asyncio.Event()
    sdk_text: list[str] = []

    async def through_the_sdk(sdk: openai.AsyncOpenAI) -> None:
        stream = await sdk.completions.create(
            model=MODEL, prompt="Once upon a time", max_tokens=500, stream=True, extra_body={"ignore_eos": True}
        )
        async for chunk in stream:
            sdk_text.append(chunk.choices[0].text)
            sdk_started.set()

    async with (
        httpx.AsyncClient(timeout=300) as client,
        openai.AsyncOpenAI(base_url=impatient.base_url, api_key="unused", max_retries=0, timeout=300) as sdk,
    ):
        raw_task = asyncio.create_task(raw.run(client, impatient.base_url, 500))
        sdk_task = asyncio.create_task(through_the_sdk(sdk))
        await _all_started([raw], [raw_task])
        await asyncio.wait_for(sdk_started.wait(), timeout=300)
        impatient.proc.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        await asyncio.wait_for(raw_task, timeout=30)
        with pytest.raises(openai.APIError) as caught:
            await asyncio.wait_for(sdk_task, timeout=30)

    assert raw.status == 200 and raw.payloads[-1] == "[DONE]"
    assert [e["code"] for e in errors_in(raw.payloads)] == ["server_shutting_down"]
    assert "error" in json.loads(raw.payloads[-2]), "the error is not the last event before [DONE]"
    assert not finish_reasons(raw.payloads), "an unfinished stream claimed a finish reason"
    assert "shut down" in caught.value.message and "".join(sdk_text)
    assert impatient.exit_code_within(15) == 0
    assert time.monotonic() - signalled < 15
