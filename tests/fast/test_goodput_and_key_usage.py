"""Goodput (requests that met their latency targets) and usage by API key name on ``/metrics``:
counted once per request as it ends, tokens exactly as the responses' usage reported them."""

from __future__ import annotations

from pathlib import Path

import httpx

from tests.fast.fake_engine import FakeEngine
from tests.fast.helpers import chat_request, client, metric, sdk_client, serving
from tests.fast.tiny_model import MODEL, TinyModel

LABELS = {"model_name": MODEL, "engine": "0"}


async def test_requests_are_judged_against_each_target_and_all(fake: FakeEngine, tiny: TinyModel) -> None:
    async with serving(fake, tiny, slo_ttft_ms=200, slo_tpot_ms=30) as app, client(app) as http:
        # On time: first token at once, tokens 0 ms apart.
        fake.script = lambda _: tiny.reply("Hello", " world", "!")
        assert (await http.post("/v1/chat/completions", json=chat_request())).status_code == 200
        # Late first token (300 ms > 200), then quick tokens: misses TTFT only.
        fake.script = lambda _: tiny.reply("Hello", " world", "!", delays=[0.3])
        assert (await http.post("/v1/chat/completions", json=chat_request())).status_code == 200
        # Quick first token, then 60 ms per token (> 30): misses TPOT only.
        fake.script = lambda _: tiny.reply("Hello", " world", "!", delays=[0.0, 0.06, 0.06, 0.06])
        assert (await http.post("/v1/chat/completions", json=chat_request(stream=True))).status_code == 200
        # A request's own, looser TTFT target (x-slo-ttft-ms) is the one it is judged by.
        fake.script = lambda _: tiny.reply("Hello", " world", "!", delays=[0.3])
        own = await http.post("/v1/chat/completions", json=chat_request(), headers={"x-slo-ttft-ms": "5000"})
        assert own.status_code == 200

        async def count(slo: str, outcome: str) -> float:
            return await metric(http, "ise_request_slo_total", **LABELS, slo=slo, outcome=outcome)

        assert (await count("ttft", "met"), await count("ttft", "missed")) == (3, 1)
        assert (await count("tpot", "met"), await count("tpot", "missed")) == (3, 1)
        assert (await count("all", "met"), await count("all", "missed")) == (2, 2)


async def test_a_failed_request_misses_every_target(fake: FakeEngine, tiny: TinyModel) -> None:
    async with serving(fake, tiny, slo_tpot_ms=1000) as app, client(app) as http:
        fake.script = lambda _: tiny.reply("Hello", " world", fail_at=1)
        await http.post("/v1/chat/completions", json=chat_request())
        assert await metric(http, "ise_request_slo_total", **LABELS, slo="tpot", outcome="missed") == 1
        assert await metric(http, "ise_request_slo_total", **LABELS, slo="all", outcome="missed") == 1
        response = await http.get("/metrics")
        assert 'slo="ttft"' not in response.text  # no TTFT target: no TTFT series


async def test_without_targets_nothing_is_judged(http: httpx.AsyncClient) -> None:
    await http.post("/v1/chat/completions", json=chat_request())
    assert "ise_request_slo_total{" not in (await http.get("/metrics")).text


async def test_usage_by_key_name_matches_the_responses_usage(fake: FakeEngine, tiny: TinyModel, tmp_path: Path) -> None:
    fake.script = lambda _: tiny.reply("Hello", " world", "!")
    keys = tmp_path / "keys.toml"
    keys.write_text('[keys.alice]\nkey = "sk-alice"\n[keys.batch-jobs]\nkey = "sk-batch"\n')
    async with (
        serving(fake, tiny, api_key=["sk-flag"], api_keys_file=keys) as app,
        sdk_client(app, key="sk-alice") as alice,
        sdk_client(app, key="sk-flag") as flag_key,
        client(app, key="sk-batch") as http,
    ):
        usages = []
        for _ in range(2):
            whole = await alice.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
            usages.append(whole.usage)
        stream = await alice.completions.create(
            model=MODEL, prompt="Once upon", n=2, stream=True, stream_options={"include_usage": True}, max_tokens=5
        )
        usages.append([chunk async for chunk in stream][-1].usage)
        other = await flag_key.completions.create(model=MODEL, prompt="One two three", max_tokens=5)
        prompt = completion = 0
        for usage in usages:
            assert usage is not None
            prompt, completion = prompt + usage.prompt_tokens, completion + usage.completion_tokens
        assert other.usage is not None

        async def by_key(name: str, key: str) -> float:
            return await metric(http, name, **LABELS, api_key_name=key)

        assert await by_key("ise_api_key_requests_total", "alice") == 3
        assert await by_key("ise_api_key_prompt_tokens_total", "alice") == prompt
        assert await by_key("ise_api_key_generation_tokens_total", "alice") == completion
        assert await by_key("ise_api_key_prompt_tokens_total", "key-1") == other.usage.prompt_tokens
        assert await by_key("ise_api_key_generation_tokens_total", "key-1") == other.usage.completion_tokens
        text = (await http.get("/metrics")).text
        assert "sk-alice" not in text and "sk-flag" not in text  # names, never keys
        # The Messages API's usage (input + cache read, output) counts the same tokens.
        messages = await http.post(
            "/v1/messages", json={"model": MODEL, "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}
        )
        usage = messages.json()["usage"]
        assert await by_key("ise_api_key_prompt_tokens_total", "batch-jobs") == (
            usage["input_tokens"] + usage["cache_read_input_tokens"]
        )
        assert await by_key("ise_api_key_generation_tokens_total", "batch-jobs") == usage["output_tokens"]


async def test_a_refused_request_is_not_counted_for_its_key(fake: FakeEngine, tiny: TinyModel) -> None:
    async with serving(fake, tiny, api_key=["sk-1"], requests_per_minute=1) as app, client(app, key="sk-1") as http:
        assert (await http.post("/v1/chat/completions", json=chat_request())).status_code == 200
        assert (await http.post("/v1/chat/completions", json=chat_request())).status_code == 429
        assert await metric(http, "ise_api_key_requests_total", **LABELS, api_key_name="key-1") == 1
