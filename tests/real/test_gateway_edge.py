"""The gateway as clients meet it: a real ``ise serve`` with API keys, rate limits, a body limit
and a small waiting queue, driven by the openai SDK and raw httpx.

One server serves the whole module; its tests run in file order and each uses its own key or
counts its own deltas.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import openai
import pytest

from tests.helpers import assert_openai_error, metric_sample, openai_error, retry_after_s
from tests.real.helpers import (
    SMALL_SERVER,
    Attempts,
    ServerHandle,
    bearer,
    content_events,
    errors_in,
    finish_reasons,
    running_server,
    scrape,
    sse_stream,
    user,
    wait_until,
)

OPEN_KEY = "sk-ise-open-9c41d7e2b5f0"  # a flag key (named key-1): no limits
METERED_KEY = "sk-ise-metered-5e8a13f0c6aa"  # a keys-file key with its own requests per minute
WRONG_KEY = "sk-ise-wrong-0b6f2c7d19ee"
METERED_RPM = 20
BODY_LIMIT = 8192
MAX_WAITING = 4


# --- the server ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerHandle]:
    home = tmp_path_factory.mktemp("gateway")
    keys = home / "keys.toml"
    keys.write_text(f'[keys.metered]\nkey = "{METERED_KEY}"\nrequests_per_minute = {METERED_RPM}\n')
    args = [
        *SMALL_SERVER,
        "--api-key", OPEN_KEY,
        "--api-keys-file", str(keys),
        "--max-request-body-bytes", str(BODY_LIMIT),
        "--max-waiting-requests", str(MAX_WAITING),
        "--max-num-seqs", "4",
    ]  # fmt: skip
    with running_server(args, home / "ise.log") as handle:
        yield handle


def _tiny(server: ServerHandle, key: str) -> httpx.Response:
    """The cheapest completion there is: a two-token prompt, one token out."""
    body = {"model": server.model, "prompt": "Hi", "max_tokens": 1}
    return httpx.post(f"{server.base_url}/completions", json=body, headers=bearer(key), timeout=120)


def _until_refused(server: ServerHandle, key: str) -> tuple[list[httpx.Response], httpx.Response]:
    """Spend ``key``'s requests per minute: the responses that got through, and the first 429."""
    served: list[httpx.Response] = []
    for _ in range(3 * METERED_RPM):
        response = _tiny(server, key)
        if response.status_code == 429:
            return served, response
        assert response.status_code == 200, response.text
        served.append(response)
    raise AssertionError(f"no 429 after {3 * METERED_RPM} requests at {METERED_RPM} per minute")


def _inside_one_minute(budget_s: float) -> None:
    """Wait, if need be, so the next ``budget_s`` seconds fall within one wall-clock minute."""
    into = time.time() % 60
    if into > 60 - budget_s:
        time.sleep(60 - into + 0.5)


# --- rate limits (first, so that the last test finds this minute's hits faded) -----------------


def test_over_the_rate_limit_is_429_with_openais_headers_and_an_honest_retry_after(gateway: ServerHandle) -> None:
    """A fresh key's minute: 20 requests pass, counting down; the 21st is refused until they fade.

    The limiter (``limits``' sliding-window counter) counts each key per wall-clock minute and
    weighs the previous minute's count by the share of this minute still to run; hits of this
    minute count in full until it ends, so the honest wait is the rest of the minute plus 60/RPM s.
    """
    _inside_one_minute(budget_s=15)  # the whole exchange within one counting minute
    served, refused = _until_refused(gateway, METERED_KEY)
    left_s = 60 - time.time() % 60
    assert len(served) == METERED_RPM
    remaining = [int(r.headers["x-ratelimit-remaining-requests"]) for r in served]
    assert remaining == list(range(METERED_RPM - 1, -1, -1))
    assert all(r.headers["x-ratelimit-limit-requests"] == str(METERED_RPM) for r in served)

    error = assert_openai_error(refused, 429, "rate_limit_exceeded")
    assert error["type"] == "rate_limit_error"
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"
    assert "x-should-retry" not in refused.headers  # worth a retry, after:
    asked_s = retry_after_s(refused.headers)
    assert abs(asked_s - (left_s + 60 / METERED_RPM)) < 1.5, (asked_s, left_s)
    assert int(refused.headers["retry-after"]) == math.ceil(asked_s)

    attempts = Attempts()
    with (
        attempts.client(gateway.base_url, METERED_KEY, max_retries=0) as client,
        pytest.raises(openai.RateLimitError) as caught,
    ):
        client.completions.create(model=gateway.model, prompt="Hi", max_tokens=1)
    assert caught.value.status_code == 429 and caught.value.code == "rate_limit_exceeded"
    assert attempts.statuses == [429]


# --- keys and the openai SDK --------------------------------------------------------------------


def test_missing_or_wrong_key_is_authentication_error_and_not_retried(gateway: ServerHandle) -> None:
    body = {"model": gateway.model, "messages": user("Hi"), "max_tokens": 2}
    bare = httpx.post(f"{gateway.base_url}/chat/completions", json=body, timeout=30)
    assert "didn't provide an API key" in assert_openai_error(bare, 401, "invalid_api_key")["message"]
    assert bare.headers["www-authenticate"] == "Bearer"

    attempts = Attempts()
    with attempts.client(gateway.base_url, WRONG_KEY, max_retries=2) as client:
        with pytest.raises(openai.AuthenticationError) as wrong:
            client.chat.completions.create(model=gateway.model, messages=user("Hi"), max_tokens=2)
        assert wrong.value.status_code == 401 and wrong.value.code == "invalid_api_key"
        with pytest.raises(openai.AuthenticationError):
            client.chat.completions.create(model=gateway.model, messages=user("Hi"), max_tokens=2, stream=True)
        with pytest.raises(openai.AuthenticationError):
            client.models.list()
    assert attempts.statuses == [401, 401, 401], "a 401 was retried"
    # Probes need no key; everything else does.
    assert httpx.get(f"{gateway.root_url}/health", timeout=30).status_code == 200
    assert httpx.get(f"{gateway.root_url}/metrics", timeout=30).status_code == 401


def test_the_right_key_works_whole_and_streamed(gateway: ServerHandle) -> None:
    with openai.OpenAI(base_url=gateway.base_url, api_key=OPEN_KEY, max_retries=0, timeout=120) as client:
        whole = client.chat.completions.create(model=gateway.model, messages=user("Say hi."), max_tokens=4)
        assert whole.choices[0].message.content and whole.choices[0].finish_reason in ("stop", "length")
        pieces, reasons = [], []
        for chunk in client.completions.create(model=gateway.model, prompt="Once upon", max_tokens=4, stream=True):
            pieces.append(chunk.choices[0].text)
            reasons.append(chunk.choices[0].finish_reason)
        assert "".join(pieces) and reasons[-1] in ("stop", "length")


async def test_the_right_key_works_with_the_async_client(gateway: ServerHandle) -> None:
    async with openai.AsyncOpenAI(base_url=gateway.base_url, api_key=OPEN_KEY, max_retries=0, timeout=120) as client:
        reply = await client.completions.create(model=gateway.model, prompt="The sky is", max_tokens=4)
        assert reply.choices[0].text and reply.usage is not None and reply.usage.completion_tokens >= 1
        stream = await client.chat.completions.create(
            model=gateway.model, messages=user("Count to three."), max_tokens=4, stream=True
        )
        streamed = [c.choices[0].delta.content or "" async for c in stream if c.choices]
        assert "".join(streamed)


def test_bad_parameter_is_bad_request_after_exactly_one_attempt(gateway: ServerHandle) -> None:
    attempts = Attempts()
    with (
        attempts.client(gateway.base_url, OPEN_KEY, max_retries=2) as client,
        pytest.raises(openai.BadRequestError) as caught,
    ):
        client.chat.completions.create(model=gateway.model, messages=user("Hi"), max_tokens=2, temperature=7)
    assert caught.value.status_code == 400 and caught.value.param == "temperature"
    assert attempts.statuses == [400]
    assert attempts.responses[0].headers["x-should-retry"] == "false"


# --- a flood of invalid requests ----------------------------------------------------------------


@dataclass(frozen=True)
class _Invalid:
    name: str
    status: int
    code: str | None  # the error's code, where it has one to check
    headers: dict[str, str]
    body: bytes | None  # None: twice the limit, streamed in 1 KiB chunks without a Content-Length


def _invalid_kinds(model: str) -> list[_Invalid]:
    key = bearer(OPEN_KEY)
    json_type = {"content-type": "application/json"}

    def chat(**fields: Any) -> bytes:
        return json.dumps({"model": model, "messages": user("Hi"), "max_tokens": 2, **fields}).encode()

    return [
        _Invalid("malformed json", 400, "invalid_value", {**key, **json_type}, b'{"model": "x", "messages": [{'),
        _Invalid("temperature out of range", 400, "invalid_value", {**key, **json_type}, chat(temperature=7)),
        _Invalid("missing messages", 400, None, {**key, **json_type}, json.dumps({"model": model}).encode()),
        _Invalid("unenforceable schema", 400, None, {**key, **json_type}, chat(guided_regex="a(b")),
        _Invalid("unknown model", 404, "model_not_found", {**key, **json_type}, chat(model="gpt-nope")),
        _Invalid("wrong key", 401, "invalid_api_key", {**bearer(WRONG_KEY), **json_type}, chat()),
        _Invalid("no key", 401, "invalid_api_key", json_type, chat()),
        _Invalid(
            "oversized body", 413, "request_too_large", {**key, **json_type}, chat(messages=user("y" * 2 * BODY_LIMIT))
        ),
        _Invalid("oversized chunked body", 413, "request_too_large", {**key, **json_type}, None),
    ]


async def _chunked(size: int) -> AsyncIterator[bytes]:
    yield b'{"model": "m", "messages": [{"role": "user", "content": "'
    for _ in range(size // 1024):
        yield b"z" * 1024
    yield b'"}]}'


async def test_a_thousand_invalid_requests_all_get_their_4xx(gateway: ServerHandle) -> None:
    kinds = _invalid_kinds(gateway.model)
    limits = httpx.Limits(max_connections=50, max_keepalive_connections=50)
    gate = asyncio.Semaphore(50)
    url = f"{gateway.base_url}/chat/completions"

    async def send(client: httpx.AsyncClient, kind: _Invalid) -> tuple[_Invalid, int, dict[str, Any]]:
        async with gate:
            content = kind.body if kind.body is not None else _chunked(2 * BODY_LIMIT)
            response = await client.post(url, content=content, headers=kind.headers)
            return kind, response.status_code, response.json()

    async with httpx.AsyncClient(limits=limits, timeout=120) as client:
        results = await asyncio.gather(*(send(client, kinds[i % len(kinds)]) for i in range(1000)))

    assert len(results) == 1000
    wrong = Counter((kind.name, status) for kind, status, _ in results if status != kind.status)
    assert not wrong, f"unexpected statuses (kind, status): {dict(wrong)}"
    for kind, _, body in results:
        error = openai_error(body)
        if kind.code is not None:
            assert error["code"] == kind.code, (kind.name, body)

    # The server shrugged it off: a valid request is served at once, and it is healthy.
    started = time.monotonic()
    async with openai.AsyncOpenAI(base_url=gateway.base_url, api_key=OPEN_KEY, max_retries=0, timeout=120) as sdk:
        reply = await sdk.chat.completions.create(model=gateway.model, messages=user("Hello!"), max_tokens=2)
    assert reply.choices[0].finish_reason in ("stop", "length")
    assert time.monotonic() - started < 30
    async with httpx.AsyncClient(timeout=30) as client:
        assert (await client.get(f"{gateway.root_url}/health")).status_code == 200


# --- an overload burst --------------------------------------------------------------------------


@dataclass
class _Outcome:
    sent_id: str
    echoed_id: str
    status: int
    payloads: list[str] = field(default_factory=list)
    error: dict[str, Any] = field(default_factory=dict)
    retry_after: str | None = None


async def test_overload_burst_every_stream_completes_or_gets_429(gateway: ServerHandle) -> None:
    burst = 40
    tag = uuid.uuid4().hex[:8]
    body = {
        "model": gateway.model,
        "messages": user("Write a line about the sea."),
        "max_tokens": 8,
        "ignore_eos": True,
        "stream": True,
    }
    limits = httpx.Limits(max_connections=burst, max_keepalive_connections=burst)

    async def one(client: httpx.AsyncClient, index: int) -> _Outcome:
        request_id = f"burst-{tag}-{index:02d}"
        headers = {**bearer(OPEN_KEY), "x-request-id": request_id}
        async with client.stream("POST", f"{gateway.base_url}/chat/completions", json=body, headers=headers) as r:
            outcome = _Outcome(request_id, r.headers["x-request-id"], r.status_code)
            if r.status_code == 200:
                outcome.payloads = [p async for p in sse_stream(r)]
            else:
                outcome.error = json.loads(await r.aread())["error"]
                outcome.retry_after = r.headers.get("retry-after")
            return outcome

    async with httpx.AsyncClient(limits=limits, timeout=300) as client:
        outcomes = await asyncio.gather(*(one(client, i) for i in range(burst)))

    assert all(o.echoed_id == o.sent_id for o in outcomes)
    statuses = Counter(o.status for o in outcomes)
    assert set(statuses) <= {200, 429}, statuses
    assert statuses[200] + statuses[429] == burst
    assert statuses[200] >= 1 and statuses[429] >= 1, statuses
    for o in outcomes:
        if o.status == 200:
            assert o.payloads[-1] == "[DONE]" and not errors_in(o.payloads), o.payloads
            assert finish_reasons(o.payloads) == ["length"], o.payloads
        else:
            assert (o.error["type"], o.error["code"]) == ("rate_limit_error", "server_overloaded"), o.error
            assert o.retry_after is not None and int(o.retry_after) >= 1

    # The server's own record agrees: one access log line per request id, with its status.
    def logged() -> dict[str, list[str]]:
        lines = [ln for ln in gateway.log_path.read_text().splitlines() if "ise.access" in ln and tag in ln]
        return {o.sent_id: [ln for ln in lines if f"[{o.sent_id}]" in ln] for o in outcomes}

    async def each_logged() -> bool:
        return all(len(lines) >= 1 for lines in logged().values())

    await wait_until(each_logged, 30, "every request logged")
    for o in outcomes:
        assert len(logged()[o.sent_id]) == 1 and f" {o.status} " in logged()[o.sent_id][0], logged()[o.sent_id]


# --- disconnects --------------------------------------------------------------------------------


async def test_disconnects_abort_and_free_the_cache(gateway: ServerHandle) -> None:
    root = gateway.root_url
    long = {"model": gateway.model, "prompt": "Tell me a long story.", "max_tokens": 480, "ignore_eos": True}
    async with httpx.AsyncClient(timeout=120) as metrics_client:

        async def idle() -> bool:
            text = await scrape(metrics_client, root, OPEN_KEY)
            return (
                metric_sample(text, "ise_requests_in_flight") == 0
                and metric_sample(text, "ise_num_requests_running") == 0
            )

        await wait_until(idle, 120, "idle before the test")
        before = await scrape(metrics_client, root, OPEN_KEY)

        async def stream_then_leave(client: httpx.AsyncClient) -> int:
            seen: list[str] = []
            body = {**long, "stream": True}
            async with client.stream(
                "POST", f"{gateway.base_url}/completions", json=body, headers=bearer(OPEN_KEY)
            ) as r:
                assert r.status_code == 200
                async for payload in sse_stream(r):
                    seen.append(payload)
                    if content_events(seen) >= 3:
                        break  # leaving the block closes the connection mid-stream
            return content_events(seen)

        async def whole_then_time_out() -> bool:
            async with httpx.AsyncClient(timeout=httpx.Timeout(60, read=1.0)) as impatient:
                try:
                    await impatient.post(f"{gateway.base_url}/completions", json=long, headers=bearer(OPEN_KEY))
                except httpx.ReadTimeout:
                    return True
            return False

        async with httpx.AsyncClient(timeout=300) as client:
            streamed = await asyncio.gather(*(stream_then_leave(client) for _ in range(3)))
        timed_out = await asyncio.gather(whole_then_time_out(), whole_then_time_out())
        assert streamed == [3, 3, 3]
        assert all(timed_out), "a 480-token completion came back within 1 s"

        aborted = {"reason": "client_disconnect"}
        released = "ise_abort_kv_release_seconds_count"

        async def cleaned_up() -> bool:
            now = await scrape(metrics_client, root, OPEN_KEY)
            return (
                metric_sample(now, "ise_requests_aborted_total", **aborted)
                == metric_sample(before, "ise_requests_aborted_total", **aborted) + 5
                and metric_sample(now, released) >= metric_sample(before, released) + 5
                and metric_sample(now, "ise_num_requests_running") == 0
                and metric_sample(now, "ise_requests_in_flight") == 0
                and metric_sample(now, "ise_kv_cache_blocks_used") == metric_sample(before, "ise_kv_cache_blocks_used")
            )

        await wait_until(cleaned_up, 60, "all five disconnects aborted and their cache freed")
        after = await scrape(metrics_client, root, OPEN_KEY)
        timed_out_before = metric_sample(before, "ise_requests_aborted_total", reason="send_timeout")
        assert metric_sample(after, "ise_requests_aborted_total", reason="send_timeout") == timed_out_before


# --- the SDK waits out a 429 -------------------------------------------------------------------


def test_the_sdk_waits_out_a_429_and_its_retry_gets_through(gateway: ServerHandle) -> None:
    """Once a key's hits lie in the previous minute, room returns at RPM/60 a second and the honest
    Retry-After is a few seconds: the SDK waits it out and its one retry is served.

    The key is the one the rate-limit test above spent, so usually that minute is over by now.
    """
    for _ in range(5):
        _, refused = _until_refused(gateway, METERED_KEY)
        if (asked_s := retry_after_s(refused.headers)) > 10:  # this minute's own hits: they fade only once it ends
            time.sleep(asked_s - 60 / METERED_RPM + 0.5)
            continue
        attempts = Attempts()
        with attempts.client(gateway.base_url, METERED_KEY, max_retries=1) as client:
            reply = client.completions.create(model=gateway.model, prompt="Hi", max_tokens=1)
        if attempts.statuses == [200]:
            continue  # room came back between the refusal above and this call: once more
        assert attempts.statuses == [429, 200]
        asked_s = retry_after_s(attempts.responses[0].headers)
        waited_s = attempts.sent[1] - attempts.answered[0]
        assert asked_s <= 10 and asked_s * 0.95 <= waited_s <= asked_s + 10, (asked_s, waited_s)
        assert reply.choices[0].finish_reason in ("stop", "length")
        return
    pytest.fail("never caught the key refused with a short Retry-After")


# --- last: what the log holds -------------------------------------------------------------------


def test_keys_never_reach_the_log_but_their_names_do(gateway: ServerHandle) -> None:
    log = gateway.log_path.read_text()
    for secret in (OPEN_KEY, METERED_KEY, WRONG_KEY):
        assert secret not in log
    assert "key=key-1" in log and "key=metered" in log
