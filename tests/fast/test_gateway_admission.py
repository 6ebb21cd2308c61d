"""Admission: a full waiting queue and a missed time-to-first-token target are refused at once,
before the response starts, so a streaming client's 429 is its HTTP status; every refusal is
counted by its reason. (The drain's refusals: test_gateway_drain.py; the TTFT model's fit alone:
test_gateway_ttft_model.py.)

"Waiting" is admitted without a first token yet; the fake engine's gates hold requests there until
a test lets their first token go. The TTFT model is fed exact points where a test needs exact
predictions, and learns from requests where the test is about that.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import openai
import pytest
from fastapi import FastAPI

from server.gateway.ttft_model import TTFTModel
from tests.fast.fake_engine import FakeEngine
from tests.fast.helpers import (
    TOKEN,
    Clock,
    Gated,
    assert_refused,
    chat_request,
    client,
    metric,
    sdk_client,
    serving,
    state_of,
    text_request,
    until,
)
from tests.fast.tiny_model import MODEL, TinyModel
from tests.helpers import retry_after_s


@pytest.fixture
async def overloaded(fake: FakeEngine, tiny: TinyModel) -> AsyncIterator[tuple[FastAPI, Gated]]:
    gated = Gated(fake, tiny)
    async with serving(fake, tiny, max_waiting_requests=2, max_waiting_prompt_tokens=100) as app:
        yield app, gated
        gated.open_all()


async def test_a_full_queue_refuses_at_once_streamed_or_not(
    overloaded: tuple[FastAPI, Gated], fake: FakeEngine
) -> None:
    app, gated = overloaded
    async with client(app) as http:
        held = [asyncio.create_task(http.post("/v1/completions", json=text_request())) for _ in range(2)]
        await until(lambda: len(fake.requests) == 2)
        assert await metric(http, "ise_waiting_requests") == 2
        for path, body in [("/v1/completions", text_request()), ("/v1/chat/completions", chat_request())]:
            for stream in (False, True):
                refused = await http.post(path, json={**body, "stream": stream})
                error = assert_refused(refused, 429, "server_overloaded")
                assert "2 requests" in error["message"]
                assert retry_after_s(refused.headers) >= 1
                assert "x-should-retry" not in refused.headers  # capacity comes back: worth a retry
        assert len(fake.requests) == 2  # none of them reached the engine
        assert await metric(http, "ise_requests_rejected_total", reason="server_overloaded") == 4
        gated.open_all()
        for task in held:
            assert (await task).json()["choices"][0]["text"] == "Hello world"
        assert await metric(http, "ise_waiting_requests") == 0
        assert (await http.post("/v1/completions", json=text_request(stream=True))).status_code == 200


async def test_the_sdk_sees_the_overload_as_rate_limit_error(
    overloaded: tuple[FastAPI, Gated], fake: FakeEngine
) -> None:
    app, gated = overloaded
    async with client(app) as http:
        held = [asyncio.create_task(http.post("/v1/completions", json=text_request())) for _ in range(2)]
        await until(lambda: len(fake.requests) == 2)
        async with sdk_client(app) as sdk:
            for stream in (False, True):
                with pytest.raises(openai.RateLimitError) as caught:
                    await sdk.chat.completions.create(
                        model=MODEL,
                        messages=[{"role": "user", "content": "hi"}],
                        stream=stream,
                    )
                assert caught.value.code == "server_overloaded"
        gated.open_all()
        await asyncio.gather(*held)


async def test_a_first_token_frees_a_place_in_the_queue(fake: FakeEngine, tiny: TinyModel) -> None:
    first, second = asyncio.Event(), asyncio.Event()
    replies = iter(
        [
            tiny.reply("Hello", " world", gates={0: first, 1: second}),  # streams one token, then holds
            tiny.reply("Hello"),
        ]
    )
    fake.script = lambda _: next(replies)
    async with serving(fake, tiny, max_waiting_requests=1) as app, client(app) as http:
        running = asyncio.create_task(http.post("/v1/completions", json=text_request(stream=True)))
        await until(lambda: len(fake.requests) == 1)
        assert_refused(await http.post("/v1/completions", json=text_request()), 429, "server_overloaded")
        first.set()
        await until(lambda: len(fake.emitted) == 1)
        # Still running, no longer waiting: the next request is admitted.
        assert await metric(http, "ise_waiting_requests") == 0
        assert await metric(http, "ise_requests_in_flight") == 1
        answer = await http.post("/v1/completions", json=text_request())
        assert (answer.status_code, answer.json()["choices"][0]["text"]) == (200, "Hello")
        second.set()
        assert (await running).text.endswith("data: [DONE]\n\n")


async def test_waiting_prompt_tokens_are_capped(fake: FakeEngine, tiny: TinyModel) -> None:
    gated = Gated(fake, tiny)
    async with serving(fake, tiny, max_waiting_prompt_tokens=10) as app, client(app) as http:
        # Alone, a prompt longer than the cap is admitted: nothing waits ahead of it.
        lone = await asyncio.wait_for(
            asyncio.gather(http.post("/v1/completions", json=text_request(30)), _open_soon(gated, fake, 1)), 5
        )
        assert lone[0].status_code == 200
        held = asyncio.create_task(http.post("/v1/completions", json=text_request(6)))
        await until(lambda: len(fake.requests) == 2)
        assert await metric(http, "ise_waiting_prompt_tokens") == 6
        for stream in (False, True):
            refused = await http.post("/v1/completions", json=text_request(5, stream=stream))
            error = assert_refused(refused, 429, "server_overloaded")
            assert "6 prompt tokens" in error["message"]
        # A prompt that fits beside it is admitted (6 + 4 = 10).
        fits = asyncio.create_task(http.post("/v1/completions", json=text_request(4)))
        await until(lambda: len(fake.requests) == 3)
        assert await metric(http, "ise_waiting_prompt_tokens") == 10
        gated.open_all()
        assert (await held).status_code == 200 and (await fits).status_code == 200
        assert await metric(http, "ise_waiting_prompt_tokens") == 0


async def _open_soon(gated: Gated, fake: FakeEngine, requests: int) -> None:
    await until(lambda: len(fake.requests) == requests)
    gated.open_all(stay_open=False)


async def test_a_client_gone_while_waiting_frees_its_place(fake: FakeEngine, tiny: TinyModel) -> None:
    Gated(fake, tiny)
    async with serving(fake, tiny, max_waiting_requests=1) as app, client(app) as http:
        held = asyncio.create_task(http.post("/v1/completions", json=text_request(stream=True)))
        await until(lambda: len(fake.requests) == 1)
        held.cancel()
        await asyncio.gather(held, return_exceptions=True)
        await until(lambda: state_of(app).gateway.admission.waiting_requests == 0)
        assert fake.aborted == [fake.requests[0].request_id]
        late = asyncio.create_task(http.post("/v1/completions", json=text_request()))
        await until(lambda: len(fake.requests) == 2)  # admitted: it reached the engine
        late.cancel()
        await asyncio.gather(late, return_exceptions=True)


# Time-to-first-token targets.

A, B = 0.05, 0.1  # the model fed below: 50 ms fixed, 100 ms per queued prompt token


def _teach(app: FastAPI, a: float = A, b: float = B) -> None:
    """Give the admission a TTFT model fed only exact points on ``a + b * tokens``.

    (Every request served later teaches it its own, much faster, first token: tests re-teach it.)
    """
    model = state_of(app).gateway.admission.ttft = TTFTModel()
    for tokens in range(10, 130, 10):
        model.observe(tokens, a + b * tokens)
    fit = model.coefficients()
    assert fit is not None and fit == pytest.approx((a, b))


async def test_a_request_that_would_miss_the_target_gets_429_with_the_wait(fake: FakeEngine, tiny: TinyModel) -> None:
    gated = Gated(fake, tiny)
    async with serving(fake, tiny, slo_ttft_ms=1000) as app, client(app) as http:
        # Admitted before the model knows anything: the server learns from what it admits.
        held = asyncio.create_task(http.post("/v1/completions", json=text_request(50)))
        await until(lambda: len(fake.requests) == 1)
        _teach(app)
        for stream in (False, True):
            refused = await http.post("/v1/completions", json=text_request(5, stream=stream))
            error = assert_refused(refused, 429, "slo_exceeded")
            # Predicted 0.05 + 0.1 * (50 + 5) = 5.55 s; the queue must drain 4.55 s for 1 s to fit.
            assert retry_after_s(refused.headers) == pytest.approx(5.55 - 1.0, abs=0.002)
            assert refused.headers["retry-after"] == "5"
            assert "x-should-retry" not in refused.headers
            assert "1000 ms" in error["message"] and "5550 ms" in error["message"]
        # The client's own target, in the header, beats the server's.
        patient = asyncio.create_task(
            http.post("/v1/completions", json=text_request(5), headers={"x-slo-ttft-ms": "60000"})
        )
        await until(lambda: len(fake.requests) == 2)
        # Once the queue ahead has its first token, the same request fits: 0.05 + 0.1 * 5 = 0.55 s.
        gated.open_all()
        assert (await held).status_code == 200 and (await patient).status_code == 200
        _teach(app)
        assert (await http.post("/v1/completions", json=text_request(5))).status_code == 200
        assert await metric(http, "ise_requests_rejected_total", reason="slo_exceeded") == 2


async def test_an_idle_server_admits_any_target(fake: FakeEngine, tiny: TinyModel) -> None:
    """A request that would be scheduled at once is admitted, whatever the model predicts for it:
    refusing it would help no one, and its first token keeps the model current."""
    async with serving(fake, tiny, slo_ttft_ms=1) as app, client(app) as http:
        _teach(app)  # 20 tokens alone: 0.05 + 2.0 s predicted, far over 1 ms
        for stream in (False, True):
            response = await http.post(
                "/v1/completions", json=text_request(20, stream=stream), headers={"x-slo-ttft-ms": "1"}
            )
            assert response.status_code == 200, response.text


async def test_a_missed_target_is_worth_a_retry_for_the_sdk(fake: FakeEngine, tiny: TinyModel) -> None:
    gated = Gated(fake, tiny)
    async with serving(fake, tiny) as app, client(app) as http:
        held = asyncio.create_task(http.post("/v1/completions", json=text_request(20)))
        await until(lambda: len(fake.requests) == 1)
        _teach(app)
        async with sdk_client(app, max_retries=0) as sdk:
            with pytest.raises(openai.RateLimitError) as caught:
                await sdk.completions.create(
                    model=MODEL, prompt=[TOKEN] * 5, max_tokens=4, extra_headers={"x-slo-ttft-ms": "1000"}
                )
        assert caught.value.code == "slo_exceeded"
        # 0.05 + 0.1 * (20 + 5) = 2.55 s predicted: the SDK is told to come back in 1.55 s.
        assert caught.value.response.headers["retry-after-ms"] == "1550"
        assert "x-should-retry" not in caught.value.response.headers
        assert len(fake.requests) == 1
        gated.open_all()
        assert (await held).status_code == 200


async def test_the_header_target_can_be_tighter_than_the_servers(fake: FakeEngine, tiny: TinyModel) -> None:
    gated = Gated(fake, tiny)
    async with serving(fake, tiny, slo_ttft_ms=60000) as app, client(app) as http:
        held = asyncio.create_task(http.post("/v1/completions", json=text_request(5)))
        await until(lambda: len(fake.requests) == 1)
        _teach(app)  # behind 5 tokens, 5 more: 0.05 + 0.1 * 10 = 1.05 s
        refused = await http.post("/v1/completions", json=text_request(5), headers={"x-slo-ttft-ms": "1000"})
        assert_refused(refused, 429, "slo_exceeded")
        assert retry_after_s(refused.headers) == 1.0  # 50 ms over: Retry-After is at least a second
        admitted = asyncio.create_task(http.post("/v1/completions", json=text_request(5)))  # the server's 60 s target
        await until(lambda: len(fake.requests) == 2)
        gated.open_all()
        assert (await held).status_code == 200 and (await admitted).status_code == 200


async def test_a_full_batch_adds_the_wait_for_a_slot(fake: FakeEngine, tiny: TinyModel) -> None:
    """With --max-num-seqs known, a request that finds every batch slot taken waits for one to free:
    one in ``decode_s / batch_slots`` seconds, on top of the prefill the model predicts."""
    second = asyncio.Event()
    replies = iter([tiny.reply("Hello", " world", gates={1: second})])
    fake.script = lambda _: next(replies, tiny.reply("Hello"))
    async with serving(fake, tiny, batch_slots=1, slo_ttft_ms=5000) as app, client(app) as http:
        running = asyncio.create_task(http.post("/v1/completions", json=text_request(2, stream=True)))
        await until(lambda: len(fake.emitted) == 1)  # streaming: the batch's one slot is taken, nothing waits
        admission = state_of(app).gateway.admission
        _teach(app)
        admission.decode_s = 10.0  # as measured on the requests that ended before
        refused = await http.post("/v1/completions", json=text_request(2))
        error = assert_refused(refused, 429, "slo_exceeded")
        assert "1 sequences to finish" in error["message"]
        # 0.05 + 0.1 * 2 prefill, plus 10 s for the one slot: 10.25 s, 5.25 s over the target.
        assert retry_after_s(refused.headers) == pytest.approx(5.25, abs=0.002)
        second.set()
        assert (await running).status_code == 200
        _teach(app)
        admission.decode_s = 10.0
        assert (await http.post("/v1/completions", json=text_request(2))).status_code == 200  # a slot is free


async def test_no_prediction_no_refusal(fake: FakeEngine, tiny: TinyModel) -> None:
    """Until the model has seen eight first tokens, a request is admitted behind a queue, however
    tight its target; each first token teaches it."""
    gated = Gated(fake, tiny)
    gated.opened = True
    async with serving(fake, tiny) as app, client(app) as http:
        model = state_of(app).gateway.admission.ttft
        for served in range(1, 8):
            assert (await http.post("/v1/completions", json=text_request(served))).status_code == 200
            assert model.points == served  # each first token taught the model
        assert model.predict(10) is None
        gated.opened = False
        held = asyncio.create_task(http.post("/v1/completions", json=text_request(3)))
        await until(lambda: len(fake.requests) == 8)
        tight = {"x-slo-ttft-ms": "0.001"}
        admitted = asyncio.create_task(http.post("/v1/completions", json=text_request(3), headers=tight))
        await until(lambda: len(fake.requests) == 9)  # admitted: no prediction yet
        gated.open_all(stay_open=False)
        assert (await held).status_code == 200 and (await admitted).status_code == 200
        assert model.points == 9 and model.predict(10) is not None
        held = asyncio.create_task(http.post("/v1/completions", json=text_request(3)))
        await until(lambda: len(fake.requests) == 10)
        # Measured now: behind a queue, a 1 us target is out of reach.
        assert_refused(await http.post("/v1/completions", json=text_request(3), headers=tight), 429, "slo_exceeded")
        gated.open_all()
        assert (await held).status_code == 200


@pytest.mark.parametrize(
    "value", ["0", "-1", "-0", "nan", "NaN", "inf", "-inf", "1e400", "abc", "", " ", "1ms", "0x10"]
)
async def test_a_bad_target_header_is_400_naming_it(http: httpx.AsyncClient, value: str) -> None:
    for path, body in [("/v1/completions", text_request()), ("/v1/chat/completions", chat_request(stream=True))]:
        response = await http.post(path, json=body, headers={"x-slo-ttft-ms": value})
        assert response.status_code == 400, (value, response.text)
        error = response.json()["error"]
        assert (error["type"], error["param"]) == ("invalid_request_error", "x-slo-ttft-ms")
        assert "x-slo-ttft-ms" in error["message"]
        assert response.headers["x-should-retry"] == "false"


@pytest.mark.parametrize("value", ["1", "250.5", " 300 ", "1e3", "+5"])
async def test_a_good_target_header_is_taken(http: httpx.AsyncClient, value: str) -> None:
    assert (
        await http.post("/v1/completions", json=text_request(), headers={"x-slo-ttft-ms": value})
    ).status_code == 200


# Every refusal, counted by its reason.


async def test_every_refusal_is_counted_by_its_reason(fake: FakeEngine, tiny: TinyModel, clock: Clock) -> None:
    gated = Gated(fake, tiny)
    limits: dict[str, Any] = {"api_key": ["k"], "tokens_per_minute": 100, "max_waiting_requests": 2}
    async with serving(fake, tiny, **limits) as app, client(app, "k") as http, client(app, "wrong") as stranger:
        assert (await stranger.post("/v1/completions", json=text_request())).status_code == 401
        refused = await http.post("/v1/completions", json=text_request(max_tokens=99))  # 101 tokens
        assert refused.json()["error"]["code"] == "rate_limit_exceeded"
        held = [asyncio.create_task(http.post("/v1/completions", json=text_request()))]
        await until(lambda: len(fake.requests) == 1)
        _teach(app)
        headers = {"x-slo-ttft-ms": "100"}
        assert_refused(await http.post("/v1/completions", json=text_request(5), headers=headers), 429, "slo_exceeded")
        held.append(asyncio.create_task(http.post("/v1/completions", json=text_request())))
        await until(lambda: len(fake.requests) == 2)
        assert_refused(await http.post("/v1/completions", json=text_request()), 429, "server_overloaded")
        gated.open_all()
        await asyncio.gather(*held)
        state_of(app).gateway.admission.draining = True
        assert_refused(await http.post("/v1/completions", json=text_request()), 503, "server_shutting_down")
        counts = {reason: await metric(http, "ise_requests_rejected_total", reason=reason) for reason in REASONS}
    assert counts == dict.fromkeys(REASONS, 1) | {"invalid_api_key": 0}  # unauthorized requests are not counted


REASONS = ("rate_limit_exceeded", "server_overloaded", "slo_exceeded", "server_shutting_down", "invalid_api_key")


async def test_a_refused_request_costs_the_key_no_tokens(fake: FakeEngine, tiny: TinyModel, clock: Clock) -> None:
    gated = Gated(fake, tiny)
    limits: dict[str, Any] = {"api_key": ["k"], "tokens_per_minute": 20, "max_waiting_requests": 1}
    async with serving(fake, tiny, **limits) as app, client(app, "k") as http:
        held = asyncio.create_task(http.post("/v1/completions", json=text_request()))  # 6 tokens
        await until(lambda: len(fake.requests) == 1)
        for _ in range(3):  # the server is full: refused, no work done
            assert_refused(await http.post("/v1/completions", json=text_request()), 429, "server_overloaded")
        gated.open_all()
        assert (await held).status_code == 200
        # 6 of the key's 20 tokens were served: another 6-token request must fit.
        response = await http.post("/v1/completions", json=text_request())
        assert response.status_code == 200, response.text
        assert response.headers["x-ratelimit-remaining-tokens"] == "8"
