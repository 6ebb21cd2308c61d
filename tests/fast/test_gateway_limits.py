"""Per-key rate limits as OpenAI reports them: requests and tokens per minute, each key its own window.

A completion response carries ``x-ratelimit-{limit,remaining,reset}-{requests,tokens}``; a request
over a limit gets OpenAI's 429 (``rate_limit_error`` / ``rate_limit_exceeded``) with ``Retry-After``
and the openai SDK's ``retry-after-ms``, before the engine sees it. The windows run on the
``limits`` library's clock, which these tests replace with one they move by hand, so a minute
passes in no time.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import openai
import openai._base_client
import pytest
from fastapi import FastAPI

from tests.fast.fake_engine import FakeEngine
from tests.fast.helpers import WINDOW_START, Clock, client, metric, sdk_client, serving
from tests.fast.tiny_model import MODEL, TinyModel
from tests.helpers import assert_openai_error, retry_after_s

KEY_A, KEY_B = "sk-limits-a", "sk-limits-b"
PROMPT = [74, 75]  # two token ids: a prompt whose cost in tokens is known exactly
HI = [{"role": "user", "content": "hi"}]


def _text(max_tokens: int = 3, **extra: Any) -> dict[str, Any]:
    """A text completion costing ``len(PROMPT) * n + n * max_tokens`` tokens."""
    return {"model": MODEL, "prompt": PROMPT, "max_tokens": max_tokens, **extra}


def _ratelimit(response: httpx.Response, unit: str) -> tuple[int, int, str]:
    headers = response.headers
    return (
        int(headers[f"x-ratelimit-limit-{unit}"]),
        int(headers[f"x-ratelimit-remaining-{unit}"]),
        headers[f"x-ratelimit-reset-{unit}"],
    )


def assert_rate_limited(response: httpx.Response, unit: str, limit: int) -> float:
    """OpenAI's 429 for a limit reached; the wait it asks for, in seconds."""
    error = assert_openai_error(response, 429, "rate_limit_exceeded")
    assert (error["type"], error["param"]) == ("rate_limit_error", None)
    assert f"{limit} {unit} per minute" in error["message"]
    assert "x-should-retry" not in response.headers  # a rate limit passes: the SDK may retry
    assert _ratelimit(response, unit)[:2] == (limit, 0) or unit == "tokens"
    assert re.fullmatch(r"(\d+m)?\d+m?s", response.headers[f"x-ratelimit-reset-{unit}"])
    return retry_after_s(response.headers)


def _seconds(duration: str) -> float:
    """OpenAI's ``1m30s`` / ``20s`` / ``250ms`` as seconds."""
    match = re.fullmatch(r"(?:(\d+)m(?!s))?(?:(\d+)s)?(?:(\d+)ms)?", duration)
    assert match and duration, duration
    minutes, seconds, ms = (int(g or 0) for g in match.groups())
    return minutes * 60 + seconds + ms / 1000


async def assert_wait_is_honest(
    http: httpx.AsyncClient, body: dict[str, Any], wait: float, clock: Clock, *, limit: int, cost: int = 1
) -> None:
    """A client that waits as told is served; one that comes back early is refused again.

    "Early" leaves the server its rounding: ``limits`` admits while the whole units counted leave
    room, so room can come back up to one unit's fade sooner than a wait computed without that
    rounding (``60 / (limit - cost + 1)`` seconds at most, the counted units fading together).
    """
    early = 60 / (limit - cost + 1) + 0.5
    if wait > early:
        clock.now += wait - early
        assert (await http.post("/v1/completions", json=body)).status_code == 429
        clock.now += early
    else:
        clock.now += wait
    response = await http.post("/v1/completions", json=body)
    assert response.status_code == 200, response.text


@pytest.fixture
async def keyed_app(fake: FakeEngine, tiny: TinyModel) -> AsyncIterator[FastAPI]:
    async with serving(fake, tiny, api_key=[KEY_A, KEY_B], requests_per_minute=3, tokens_per_minute=1000) as app:
        yield app


async def test_requests_per_minute_per_key(keyed_app: FastAPI, fake: FakeEngine, clock: Clock) -> None:
    async with client(keyed_app, KEY_A) as a, client(keyed_app, KEY_B) as b:
        remaining = []
        for _ in range(3):
            response = await a.post("/v1/completions", json=_text())
            assert response.status_code == 200
            remaining.append(_ratelimit(response, "requests")[1])
        assert remaining == [2, 1, 0]
        served = len(fake.requests)
        wait = assert_rate_limited(await a.post("/v1/completions", json=_text()), "requests", 3)
        assert 0 < wait <= 120
        assert len(fake.requests) == served  # refused before the engine
        # The other key's window is its own.
        for expected in (2, 1, 0):
            response = await b.post("/v1/chat/completions", json={"model": MODEL, "messages": HI})
            assert (response.status_code, _ratelimit(response, "requests")[1]) == (200, expected)
        assert_rate_limited(await b.post("/v1/completions", json=_text()), "requests", 3)
        assert await metric(a, "ise_requests_rejected_total", reason="rate_limit_exceeded") == 2
        # Waiting as told gets a request through; two minutes later, the whole limit is back.
        await assert_wait_is_honest(a, _text(), wait, clock, limit=3)
        clock.now += 120
        response = await b.post("/v1/completions", json=_text())
        assert (response.status_code, _ratelimit(response, "requests")[1]) == (200, 2)


async def test_only_completions_count_against_the_limit(keyed_app: FastAPI, clock: Clock) -> None:
    async with client(keyed_app, KEY_A) as a:
        for _ in range(10):
            assert (await a.get("/v1/models")).status_code == 200
            assert (await a.get("/health")).status_code == 200
        response = await a.post("/v1/completions", json=_text())
        assert _ratelimit(response, "requests")[1] == 2


async def test_without_keys_each_client_address_has_its_window(fake: FakeEngine, tiny: TinyModel, clock: Clock) -> None:
    async with serving(fake, tiny, requests_per_minute=2) as app:

        def at(address: str) -> httpx.AsyncClient:
            transport = httpx.ASGITransport(app=app, client=(address, 40000))
            return httpx.AsyncClient(transport=transport, base_url="http://test")

        async with at("10.0.0.1") as one, at("10.0.0.2") as two:
            for _ in range(2):
                assert (await one.post("/v1/completions", json=_text())).status_code == 200
            assert_rate_limited(await one.post("/v1/completions", json=_text()), "requests", 2)
            assert (await two.post("/v1/completions", json=_text())).status_code == 200


async def test_tokens_per_minute_count_prompt_and_max_tokens(fake: FakeEngine, tiny: TinyModel, clock: Clock) -> None:
    async with (
        serving(fake, tiny, api_key=[KEY_A, KEY_B], tokens_per_minute=30) as app,
        client(app, KEY_A) as a,
        client(app, KEY_B) as b,
    ):
        response = await a.post("/v1/completions", json=_text(max_tokens=5))  # 2 + 5
        assert _ratelimit(response, "tokens")[:2] == (30, 23)
        assert "x-ratelimit-limit-requests" not in response.headers  # no requests limit set
        response = await a.post("/v1/completions", json=_text(max_tokens=4, n=2))  # 2 * 2 + 2 * 4
        assert _ratelimit(response, "tokens")[:2] == (30, 11)
        response = await a.post("/v1/completions", json=_text(max_tokens=5, stream=True))
        assert response.status_code == 200 and response.text.endswith("data: [DONE]\n\n")
        assert _ratelimit(response, "tokens")[:2] == (30, 4)
        refused = await a.post("/v1/completions", json=_text(max_tokens=5))
        wait = assert_rate_limited(refused, "tokens", 30)
        assert _ratelimit(refused, "tokens")[:2] == (30, 4)
        # A request that fits what is left still passes.
        response = await a.post("/v1/completions", json=_text(max_tokens=2))
        assert (response.status_code, _ratelimit(response, "tokens")[1]) == (200, 0)
        # Key B's tokens are its own.
        assert _ratelimit(await b.post("/v1/completions", json=_text(max_tokens=5)), "tokens")[1] == 23
        assert await metric(a, "ise_requests_rejected_total", reason="rate_limit_exceeded") == 1
        wait = assert_rate_limited(await a.post("/v1/completions", json=_text(max_tokens=5)), "tokens", 30)
        await assert_wait_is_honest(a, _text(max_tokens=5), wait, clock, limit=30, cost=7)


async def test_a_request_larger_than_the_whole_limit_is_not_retryable(
    fake: FakeEngine, tiny: TinyModel, clock: Clock
) -> None:
    async with serving(fake, tiny, api_key=[KEY_A], tokens_per_minute=30) as app:
        async with client(app, KEY_A) as a:
            response = await a.post("/v1/completions", json=_text(max_tokens=29))  # 31 tokens: never fits
            assert response.status_code == 429
            error = response.json()["error"]
            assert (error["type"], error["code"]) == ("rate_limit_error", "rate_limit_exceeded")
            assert "31 tokens" in error["message"] and "30 tokens per minute" in error["message"]
            assert response.headers["x-should-retry"] == "false"
            assert "retry-after" not in response.headers
            # It used none of the window.
            assert _ratelimit(await a.post("/v1/completions", json=_text()), "tokens")[1] == 25
        async with sdk_client(app, KEY_A, max_retries=3) as sdk:
            with pytest.raises(openai.RateLimitError):
                await sdk.completions.create(model=MODEL, prompt=PROMPT, max_tokens=100)
        assert len(fake.requests) == 1


async def test_keys_file_limits_override_the_defaults(
    tmp_path: Path, fake: FakeEngine, tiny: TinyModel, clock: Clock
) -> None:
    keys = tmp_path / "keys.toml"
    keys.write_text(
        f'[keys.small]\nkey = "{KEY_A}"\nrequests_per_minute = 1\ntokens_per_minute = 10\n\n'
        f'[keys.default]\nkey = "{KEY_B}"\n'
    )
    async with (
        serving(fake, tiny, api_keys_file=keys, requests_per_minute=4, tokens_per_minute=100) as app,
        client(app, KEY_A) as small,
        client(app, KEY_B) as default,
    ):
        response = await small.post("/v1/completions", json=_text())
        assert (_ratelimit(response, "requests")[:2], _ratelimit(response, "tokens")[:2]) == ((1, 0), (10, 5))
        assert_rate_limited(await small.post("/v1/completions", json=_text()), "requests", 1)
        response = await default.post("/v1/completions", json=_text())
        assert (_ratelimit(response, "requests")[:2], _ratelimit(response, "tokens")[:2]) == ((4, 3), (100, 95))


async def test_successful_responses_count_down_streamed_or_not(keyed_app: FastAPI, clock: Clock) -> None:
    async with client(keyed_app, KEY_A) as a:
        seen = []
        for stream in (False, True, False):
            body = {"model": MODEL, "messages": HI, "max_tokens": 5, "stream": stream}
            response = await a.post("/v1/chat/completions", json=body)
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream" if stream else "application/json")
            seen.append((_ratelimit(response, "requests"), _ratelimit(response, "tokens")))
        (r1, t1), (r2, t2), (r3, t3) = seen
        assert [r1[1], r2[1], r3[1]] == [2, 1, 0]
        assert t1[0] == 1000 and 1000 > t1[1] > t2[1] > t3[1] and t1[1] - t2[1] == t2[1] - t3[1]
        # Reset: the time until the whole limit is back, in OpenAI's spelling; then it is.
        resets = [_seconds(r[2]) for r in (r1, r2, r3)] + [_seconds(t[2]) for t in (t1, t2, t3)]
        assert all(0 < reset <= 120 for reset in resets), resets
        clock.now += max(resets)
        response = await a.post("/v1/completions", json=_text())
        assert _ratelimit(response, "requests")[1] == 2
        assert _ratelimit(response, "tokens")[1] == 1000 - 5


async def test_the_sdk_raises_rate_limit_error(keyed_app: FastAPI, clock: Clock) -> None:
    async with sdk_client(keyed_app, KEY_A) as sdk:
        raw = await sdk.chat.completions.with_raw_response.create(model=MODEL, messages=HI)  # type: ignore[arg-type]
        assert raw.headers["x-ratelimit-remaining-requests"] == "2"
        assert raw.parse().choices[0].message.content == "Hello world!"
        for _ in range(2):
            await sdk.completions.create(model=MODEL, prompt=PROMPT, max_tokens=3)
        for stream in (False, True):
            with pytest.raises(openai.RateLimitError) as caught:
                await sdk.completions.create(model=MODEL, prompt=PROMPT, max_tokens=3, stream=stream)
            assert caught.value.code == "rate_limit_exceeded"
            assert caught.value.type == "rate_limit_error"
            assert int(caught.value.response.headers["retry-after-ms"]) > 0


class _Sleeps:
    """The openai SDK's retry sleeps: recorded, and passed on the limits' clock instead of waited."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.seconds: list[float] = []
        self.advance = True  # False: the time never passes (every retry finds the window as it was)

    async def __call__(self, seconds: float) -> None:
        self.seconds.append(seconds)
        if self.advance:
            self.clock.now += seconds
        await asyncio.sleep(0)


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch, clock: Clock) -> _Sleeps:
    recorder = _Sleeps(clock)
    # The SDK's own reference only: other tasks on the loop (sse-starlette's) sleep for real.
    monkeypatch.setattr(openai._base_client, "anyio", SimpleNamespace(sleep=recorder))
    return recorder


async def test_the_sdk_retries_once_after_the_retry_after_it_was_given(
    fake: FakeEngine, tiny: TinyModel, clock: Clock, sleeps: _Sleeps
) -> None:
    clock.now = WINDOW_START + 30
    async with serving(fake, tiny, api_key=[KEY_A], requests_per_minute=60) as app:
        async with sdk_client(app, KEY_A, max_retries=0) as no_retries:
            for _ in range(60):
                await no_retries.completions.create(model=MODEL, prompt=PROMPT, max_tokens=3)
            with pytest.raises(openai.RateLimitError) as caught:
                await no_retries.completions.create(model=MODEL, prompt=PROMPT, max_tokens=3)
            asked = int(caught.value.response.headers["retry-after-ms"]) / 1000
        assert 0 < asked <= 120  # within what the SDK honours
        async with sdk_client(app, KEY_A, max_retries=1) as sdk:
            answer = await sdk.completions.create(model=MODEL, prompt=PROMPT, max_tokens=3)
        assert answer.choices[0].text == "Hello world"
        assert sleeps.seconds == [pytest.approx(asked)]  # retried once, after the wait the server asked for
        async with client(app, KEY_A) as http:
            assert await metric(http, "ise_requests_rejected_total", reason="rate_limit_exceeded") == 2
        assert len(fake.requests) == 61


async def test_the_sdk_gives_up_after_its_retries(keyed_app: FastAPI, fake: FakeEngine, sleeps: _Sleeps) -> None:
    async with sdk_client(keyed_app, KEY_A, max_retries=0) as sdk:
        for _ in range(3):
            await sdk.completions.create(model=MODEL, prompt=PROMPT, max_tokens=3)
    sleeps.advance = False
    async with sdk_client(keyed_app, KEY_A, max_retries=2) as sdk:
        with pytest.raises(openai.RateLimitError):
            await sdk.completions.create(model=MODEL, prompt=PROMPT, max_tokens=3)
    assert len(sleeps.seconds) == 2
    assert all(0 < s <= 120 for s in sleeps.seconds)
    assert len(fake.requests) == 3


@pytest.mark.parametrize("offset", [0.5, 1.0, 30.0, 59.0, 59.9])
async def test_a_retry_after_the_asked_wait_is_served(
    fake: FakeEngine, tiny: TinyModel, clock: Clock, offset: float
) -> None:
    # Wherever in the limiter's fixed minute the burst falls, the Retry-After it earns is the truth:
    # a client that waits it gets through, one that comes back a little early does not.
    clock.now = WINDOW_START + offset
    limits: dict[str, Any] = {"api_key": [KEY_A], "requests_per_minute": 60, "tokens_per_minute": 600}
    async with serving(fake, tiny, **limits) as app, client(app, KEY_A) as a:
        for _ in range(60):
            assert (await a.post("/v1/completions", json=_text())).status_code == 200
        wait = assert_rate_limited(await a.post("/v1/completions", json=_text()), "requests", 60)
        await assert_wait_is_honest(a, _text(), wait, clock, limit=60)
        # The same for tokens: 590 of 600 used, so a 65-token request must wait.
        clock.now += 120
        for _ in range(59):
            assert (await a.post("/v1/completions", json=_text(max_tokens=8))).status_code == 200
        wait = assert_rate_limited(await a.post("/v1/completions", json=_text(max_tokens=63)), "tokens", 600)
        await assert_wait_is_honest(a, _text(max_tokens=63), wait, clock, limit=600, cost=65)
