"""SLO admission end to end: ``--slo-ttft-ms`` refuses what a burst would make late, not a lone request.

The server predicts a request's time to first token from the prompt tokens queued ahead of it
and the rate it measured on the requests it served (after 8 of them). Every request here has the
same ~200-token prompt, so a lone request is predicted to take what the warm-up requests took,
and the k-th request of a burst about k times that: with a target of 4 s, a lone request fits on
any machine that prefills 200 tokens within 4 s (about 1 s on a busy two-core box), and a burst
of 40 overruns it on any machine that needs more than 0.1 s. Prefix caching is off, so every
prompt costs its full prefill.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from tests.helpers import metric_sample
from tests.real.helpers import SMALL_SERVER, Attempts, ServerHandle, running_server, scrape, user, wait_until

SLO_MS = 4000
BURST = 40
PROMPT = "Summarize this report in one line. " + " ".join(
    f"Station {i} logged a calm morning, light winds from the west and a clear sky." for i in range(9)
)


@pytest.fixture(scope="module")
def slo_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerHandle]:
    home = tmp_path_factory.mktemp("slo")
    args = [*SMALL_SERVER, "--slo-ttft-ms", str(SLO_MS), "--no-prefix-caching"]
    with running_server(args, home / "ise.log") as handle:
        body = {"model": handle.model, "messages": user(PROMPT), "max_tokens": 1}
        for _ in range(8):  # the TTFT model's first observations: it predicts nothing before them
            warm = httpx.post(f"{handle.base_url}/chat/completions", json=body, timeout=300)
            assert warm.status_code == 200, warm.text
        yield handle


@dataclass
class _Answer:
    status: int
    code: str | None
    retry_after: str | None


async def _alone(client: httpx.AsyncClient, server: ServerHandle) -> httpx.Response:
    body = {"model": server.model, "messages": user(PROMPT), "max_tokens": 1}
    return await client.post(f"{server.base_url}/chat/completions", json=body)


async def test_a_burst_is_refused_by_the_slo_but_a_lone_request_is_not(slo_server: ServerHandle) -> None:
    async with httpx.AsyncClient(timeout=300, limits=httpx.Limits(max_connections=BURST + 4)) as client:
        alone = await _alone(client, slo_server)
        assert alone.status_code == 200, alone.text

        release = asyncio.Event()
        answers: list[_Answer] = []

        async def one() -> None:
            body = {"model": slo_server.model, "messages": user(PROMPT), "max_tokens": 1, "stream": True}
            async with client.stream("POST", f"{slo_server.base_url}/chat/completions", json=body) as r:
                code = None if r.status_code == 200 else json.loads(await r.aread())["error"]["code"]
                answers.append(_Answer(r.status_code, code, r.headers.get("retry-after")))
                if len(answers) == BURST:
                    release.set()
                await release.wait()  # the admitted stay queued until every answer is in, then leave

        await asyncio.wait_for(asyncio.gather(*(one() for _ in range(BURST))), timeout=300)

        outcomes = Counter((a.status, a.code) for a in answers)
        assert set(outcomes) <= {(200, None), (429, "slo_exceeded")}, outcomes
        assert outcomes[(200, None)] >= 1 and outcomes[(429, "slo_exceeded")] >= 1, outcomes
        for answer in answers:
            if answer.status == 429:
                assert answer.retry_after is not None and int(answer.retry_after) >= 1

        async def idle() -> bool:
            return metric_sample(await scrape(client, slo_server.root_url), "ise_requests_in_flight") == 0

        await wait_until(idle, 120, "idle after the burst")
        again = await _alone(client, slo_server)
        assert again.status_code == 200, again.text
        metrics = await scrape(client, slo_server.root_url)
        refused = metric_sample(metrics, "ise_requests_rejected_total", reason="slo_exceeded")
        assert refused == outcomes[(429, "slo_exceeded")]


def test_an_idle_server_admits_whatever_the_target(slo_server: ServerHandle) -> None:
    """A request scheduled at once is never refused: refusing it helps no one, and a server that
    refused every lone request would never measure that its predictions had become wrong."""
    attempts = Attempts()
    with attempts.client(slo_server.base_url, "unused", max_retries=0) as client:
        reply = client.chat.completions.create(
            model=slo_server.model, messages=user(PROMPT), max_tokens=1, extra_headers={"x-slo-ttft-ms": "1"}
        )
    assert reply.choices[0].finish_reason == "length"
    assert attempts.statuses == [200]
