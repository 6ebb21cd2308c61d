"""API keys: with keys set, every request needs one, except ``GET``/``HEAD /health`` spelled exactly so.

A client without a valid key gets a 401 in OpenAI's shape that the openai SDK does not retry
(``x-should-retry: false``), and learns nothing else: no model list, no metrics, no schema. With a
key, every route answers exactly as it does on a server without keys. The odd spellings are sent
as uvicorn hands them to the app (``raw_path`` as the client wrote it, ``path`` percent-decoded
from it): httpx would resolve some of them first (``/./health`` leaves it as ``/health``).
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import openai
import pytest
from fastapi import FastAPI
from starlette.routing import Route

from server.config.command_line import split_serve_args
from server.config.settings import Settings
from server.endpoints.state import ServerState
from server.runtime.app import create_app
from server.runtime.messages_errors import is_messages_path
from tests.fast.fake_engine import FakeEngine
from tests.fast.helpers import Clock, Exchange, asgi_call, client, sdk_client, serving
from tests.fast.tiny_model import MODEL, TinyModel
from tests.helpers import openai_error

KEY = "sk-ise-correct-horse-battery"
OTHER_KEY = "sk-ise-second-key-staple"
WRONG_KEY = "sk-ise-wrong-key-tr0ub4dor"
HI = [{"role": "user", "content": "hi"}]
BODIES: dict[str, dict[str, Any]] = {
    "/v1/chat/completions": {"model": MODEL, "messages": HI, "max_tokens": 3},
    "/v1/completions": {"model": MODEL, "prompt": "hi", "max_tokens": 3},
    "/tokenize": {"model": MODEL, "messages": HI},
    "/detokenize": {"model": MODEL, "tokens": [1, 2]},
}
PUBLIC = {("GET", "/health"), ("HEAD", "/health"), ("GET", "/"), ("HEAD", "/")}


def _route_calls(app: FastAPI) -> list[tuple[str, str]]:
    """Every (method, path) the app routes, path parameters filled in, plus HEAD and OPTIONS of each path."""
    calls: set[tuple[str, str]] = set()
    for route in app.routes:
        path = re.sub(r"\{[^}]*\}", MODEL, getattr(route, "path", "/"))
        methods = (route.methods if isinstance(route, Route) else None) or {"GET", "POST"}
        for method in {*methods, "HEAD", "OPTIONS"}:
            calls.add((method, path))
    return sorted(calls)


def _headers(authorization: str | None = None, host: bytes | None = b"test") -> list[tuple[bytes, bytes]]:
    headers = [(b"content-type", b"application/json")]
    if host is not None:
        headers.append((b"host", host))
    if authorization is not None:
        headers.append((b"authorization", authorization.encode()))
    return headers


async def _call(
    app: FastAPI,
    method: str,
    raw_path: bytes,
    authorization: str | None = None,
    host: bytes | None = b"test",
    query: bytes = b"",
) -> Exchange:
    body = BODIES.get(raw_path.decode()) if method == "POST" else None
    chunks = [json.dumps(body).encode()] if body is not None else []
    return await asgi_call(app, method, raw_path, query=query, headers=_headers(authorization, host), chunks=chunks)


def assert_denied(exchange: Exchange, *, missing: bool, path: str = "") -> None:
    """A 401 in OpenAI's shape (Anthropic's on its routes), not retried by SDKs, that shows nothing of
    what the route holds."""
    assert exchange.status == 401, (exchange.status, exchange.body)
    assert exchange.headers["x-should-retry"] == "false"
    assert exchange.headers["www-authenticate"] == "Bearer"
    assert exchange.headers["content-type"] == "application/json"
    assert len(exchange.headers["x-request-id"]) >= 16
    body = exchange.json()
    if is_messages_path(path):
        assert body == {"type": "error", "error": {"type": "authentication_error", "message": body["error"]["message"]}}
    else:
        error = openai_error(body)
        assert (error["type"], error["param"], error["code"]) == ("authentication_error", None, "invalid_api_key")
    assert ("didn't provide an API key" in body["error"]["message"]) is missing
    for leak in (MODEL.encode(), b'"data"', b"ise_", b"openapi", b"swagger", b'"status"'):
        assert leak not in exchange.body


@pytest.fixture
async def keyed(fake: FakeEngine, tiny: TinyModel) -> Any:
    async with serving(fake, tiny, api_key=[KEY, OTHER_KEY]) as app:
        yield app


@pytest.fixture
async def open_app(tiny: TinyModel) -> Any:
    """The same app without keys: what a keyed request must get."""
    engine = FakeEngine(
        lambda _: tiny.reply("Hello"), eos_token_ids=tiny.info.eos_token_ids, max_model_len=tiny.info.context_length
    )
    async with serving(engine, tiny) as app:
        yield app


async def test_every_route_needs_a_key_and_routes_normally_with_one(keyed: FastAPI, open_app: FastAPI) -> None:
    calls = _route_calls(keyed)
    # The walk reaches the API, the docs and the probes alike; a route added later is walked too.
    assert {("POST", "/v1/chat/completions"), ("GET", "/metrics"), ("GET", "/openapi.json")} <= set(calls)
    assert ("OPTIONS", "/v1/models") in calls and ("HEAD", f"/v1/models/{MODEL}") in calls
    for method, path in calls:
        raw = path.encode()
        expected = await _call(open_app, method, raw)
        for authorization in (None, f"Bearer {WRONG_KEY}", f"Bearer {KEY}", f"Bearer {OTHER_KEY}"):
            got = await _call(keyed, method, raw, authorization)
            if (method, path) in PUBLIC or authorization in (f"Bearer {KEY}", f"Bearer {OTHER_KEY}"):
                assert got.status == expected.status, (method, path, authorization, got.body)
                assert got.status != 401
            else:
                assert_denied(got, missing=authorization is None, path=path)
    # What a keyed client gets is the real thing.
    for method, path, status in [
        ("GET", "/v1/models", 200),
        ("GET", f"/v1/models/{MODEL}", 200),
        ("POST", "/v1/chat/completions", 200),
        ("POST", "/v1/completions", 200),
        ("POST", "/tokenize", 200),
        ("POST", "/detokenize", 200),
        ("GET", "/version", 200),
        ("HEAD", "/v1/models", 200),
        ("HEAD", f"/v1/models/{MODEL}", 200),
        ("GET", "/metrics", 200),
        ("GET", "/openapi.json", 200),
        ("GET", "/health", 200),
        ("HEAD", "/health", 200),
        ("OPTIONS", "/v1/models", 405),
        ("DELETE", "/health", 405),
    ]:
        assert (await _call(keyed, method, path.encode(), f"Bearer {KEY}")).status == status, (method, path)


@pytest.mark.parametrize(
    ("raw_path", "keyed_get"),
    [
        (b"//v1/models", 404),
        (b"/v1//models", 404),
        (b"/v1/models/", 404),  # the model named "": no such model
        (b"/v1%2Fmodels", 200),  # decoded to /v1/models by the server: the models list, so it needs a key
        (b"/%761/models", 200),
        (b"/v1/models/%66ake", 200),
        (b"/health/", 307),  # Starlette's slash redirect, to a keyed client only
        (b"//health", 404),
        (b"/HEALTH", 404),
        (b"/health%2F..%2Fv1%2Fmodels", 404),
        (b"/health/../v1/models", 404),
        (b"/health%3F", 404),
        (b"/./health", 404),
        (b"/health;", 404),
        (b"/%68ealth", 200),  # decodes to /health, but is not spelled /health: a probe never sends it
        (b"http://test/health", 404),  # absolute-form target, as a proxy would send it
        (b"/metrics/", 307),
        (b"/openapi.json/", 307),
    ],
)
async def test_odd_spellings_need_a_key(keyed: FastAPI, open_app: FastAPI, raw_path: bytes, keyed_get: int) -> None:
    assert (await _call(keyed, "GET", raw_path, f"Bearer {KEY}")).status == keyed_get
    for method in ("GET", "HEAD", "POST", "OPTIONS"):
        assert_denied(await _call(keyed, method, raw_path), missing=True)
        assert_denied(await _call(keyed, method, raw_path, f"Bearer {WRONG_KEY}"), missing=False)
        expected = (await _call(open_app, method, raw_path)).status
        assert (await _call(keyed, method, raw_path, f"Bearer {KEY}")).status == expected


@pytest.mark.parametrize(
    ("raw_path", "query"),
    [
        (b"/v1/models", b"api_key=" + KEY.encode()),  # a key in the query string is not a key
        (b"/v1/models", b"x=/health"),
        (b"/metrics", b""),
        (b"/v1/models", b"health"),
    ],
)
async def test_a_query_does_not_open_a_route(keyed: FastAPI, raw_path: bytes, query: bytes) -> None:
    assert_denied(await _call(keyed, "GET", raw_path, query=query), missing=True)


async def test_health_with_a_query_is_still_the_probe(keyed: FastAPI) -> None:
    answer = await _call(keyed, "GET", b"/health", query=b"probe=1")
    assert (answer.status, answer.json()) == (200, {"status": "ok"})


@pytest.mark.parametrize("host", [b"evil.com", b"", b"test:8000", b"localhost", b"127.0.0.1:8000", None])
async def test_the_host_header_changes_nothing(keyed: FastAPI, host: bytes | None) -> None:
    for method in ("GET", "HEAD"):
        probe = await _call(keyed, method, b"/health", host=host)
        assert probe.status == 200
    for method, raw_path in [("GET", b"/v1/models"), ("GET", b"/metrics"), ("POST", b"/v1/chat/completions")]:
        assert_denied(await _call(keyed, method, raw_path, host=host), missing=True)
        assert (await _call(keyed, method, raw_path, f"Bearer {KEY}", host=host)).status == 200


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "OPTIONS", "get", "TRACE"])
async def test_only_get_and_head_of_health_are_open(keyed: FastAPI, method: str) -> None:
    assert_denied(await _call(keyed, method, b"/health"), missing=True)


@pytest.mark.parametrize(
    ("authorization", "accepted"),
    [
        (f"Bearer {KEY}", True),
        (f"bearer {KEY}", True),
        (f"BEARER {KEY}", True),
        (f"BeArEr {KEY}", True),
        (f"Bearer   {KEY}", True),
        (f"Bearer {KEY}  ", True),
        (f"Bearer {KEY.upper()}", False),  # the key itself is case-sensitive
        (f"Bearer {KEY[:-1]}", False),  # a prefix of the key
        (f"Bearer {KEY}x", False),
        (f"Bearer {KEY},{OTHER_KEY}", False),
        (KEY, False),  # no scheme
        (f"Basic {KEY}", False),
        (f"Token {KEY}", False),
        (f"Bearer{KEY}", False),
        ("Bearer", False),
        ("Bearer ", False),
        ("Bearer  ", False),
    ],
)
async def test_bearer_spellings(keyed: FastAPI, authorization: str, accepted: bool) -> None:
    answer = await _call(keyed, "GET", b"/v1/models", authorization)
    if accepted:
        assert answer.status == 200
        assert [m["id"] for m in answer.json()["data"]] == [MODEL]
    else:
        assert_denied(answer, missing=False)


async def test_an_empty_authorization_header_is_a_missing_key(keyed: FastAPI) -> None:
    assert_denied(await _call(keyed, "GET", b"/v1/models", ""), missing=True)


async def test_only_authorization_and_x_api_key_carry_a_key(keyed: FastAPI) -> None:
    for name in (b"api-key", b"proxy-authorization"):
        headers = [(b"host", b"test"), (name, f"Bearer {KEY}".encode())]
        assert_denied(await asgi_call(keyed, "GET", b"/v1/models", headers=headers), missing=True)
    # Anthropic's clients send the key itself as x-api-key, never a bearer credential.
    headers = [(b"host", b"test"), (b"x-api-key", f"Bearer {KEY}".encode())]
    assert_denied(await asgi_call(keyed, "GET", b"/v1/models", headers=headers), missing=False)
    headers = [(b"host", b"test"), (b"x-api-key", KEY.encode())]
    assert (await asgi_call(keyed, "GET", b"/v1/models", headers=headers)).status == 200


async def test_the_sdk_raises_authentication_error_without_retrying(keyed: FastAPI) -> None:
    async with sdk_client(keyed, key=WRONG_KEY, max_retries=2) as sdk:
        with pytest.raises(openai.AuthenticationError) as caught:
            await sdk.chat.completions.create(model=MODEL, messages=HI)  # type: ignore[arg-type]
        assert caught.value.code == "invalid_api_key"
        assert caught.value.response.headers["x-should-retry"] == "false"
    async with sdk_client(keyed, key=KEY) as sdk:
        answer = await sdk.chat.completions.create(model=MODEL, messages=HI)  # type: ignore[arg-type]
        assert answer.choices[0].message.content == "Hello world!"


async def test_unauthorized_requests_never_reach_the_engine(keyed: FastAPI, fake: FakeEngine) -> None:
    async with client(keyed, WRONG_KEY) as http:
        for stream in (False, True):
            response = await http.post(
                "/v1/chat/completions", json={**BODIES["/v1/chat/completions"], "stream": stream}
            )
            assert response.status_code == 401
    assert fake.requests == []


# Where keys come from.


async def _works(app: FastAPI, key: str) -> bool:
    async with client(app, key) as http:
        status = (await http.get("/v1/models")).status_code
    assert status in (200, 401)
    return status == 200


async def test_several_keys_each_work(fake: FakeEngine, tiny: TinyModel) -> None:
    async with serving(fake, tiny, api_key=[KEY, OTHER_KEY]) as app:
        assert await _works(app, KEY) and await _works(app, OTHER_KEY)
        assert not await _works(app, WRONG_KEY)


def _settings(monkeypatch: pytest.MonkeyPatch, env: dict[str, str], argv: list[str] | None = None) -> Settings:
    for name in ("ISE_API_KEY", "VLLM_API_KEY", "ISE_API_KEYS_FILE", "ISE_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return Settings.load(split_serve_args(argv or [], Settings.cli_flags()).ise)  # as `ise serve` reads it


@pytest.mark.parametrize(
    ("env", "argv", "accepted", "refused"),
    [
        ({"ISE_API_KEY": f"{KEY}, {OTHER_KEY}"}, [], [KEY, OTHER_KEY], [WRONG_KEY, f"{KEY}, {OTHER_KEY}"]),
        ({"ISE_API_KEY": KEY}, [], [KEY], [OTHER_KEY]),
        ({"VLLM_API_KEY": KEY}, [], [KEY], [OTHER_KEY]),
        # An ise source names the keys: VLLM_API_KEY is vLLM's fallback, not an extra key.
        ({"ISE_API_KEY": KEY, "VLLM_API_KEY": OTHER_KEY}, [], [KEY], [OTHER_KEY]),
        ({"VLLM_API_KEY": OTHER_KEY}, ["--api-key", KEY], [KEY], [OTHER_KEY]),
        ({}, ["--api-key", KEY, OTHER_KEY], [KEY, OTHER_KEY], [WRONG_KEY]),
        ({"ISE_API_KEY": WRONG_KEY}, ["--api-key", KEY], [KEY], [WRONG_KEY]),  # a flag beats the variable
    ],
)
async def test_keys_from_the_environment_and_flags(
    monkeypatch: pytest.MonkeyPatch,
    fake: FakeEngine,
    tiny: TinyModel,
    env: dict[str, str],
    argv: list[str],
    accepted: list[str],
    refused: list[str],
) -> None:
    settings = _settings(monkeypatch, env, argv)
    app = create_app(ServerState(engine=fake, tokenization=tiny.tokenization, model_name=MODEL, gateway_args=settings))
    async with app.router.lifespan_context(app):
        for key in accepted:
            assert await _works(app, key), key
        for key in refused:
            assert not await _works(app, key), key
        async with client(app) as http:
            assert (await http.get("/v1/models")).status_code == 401
            assert (await http.get("/health")).status_code == 200


async def test_without_any_key_the_server_is_open(monkeypatch: pytest.MonkeyPatch, http: Any) -> None:
    settings = _settings(monkeypatch, {})
    assert settings.api_key is None and settings.api_keys_file is None
    assert (await http.get("/v1/models")).status_code == 200


KEYS_FILE = f"""
[keys.alice]
key = "{KEY}"
requests_per_minute = 1

[keys.bob]
key = "{OTHER_KEY}"
"""


async def test_keys_file_names_keys_with_their_own_limits(
    tmp_path: Path, fake: FakeEngine, tiny: TinyModel, caplog: pytest.LogCaptureFixture, clock: Clock
) -> None:
    keys_file = tmp_path / "keys.toml"
    keys_file.write_text(KEYS_FILE)
    caplog.set_level(logging.INFO, logger="ise.access")
    async with serving(fake, tiny, api_keys_file=keys_file, requests_per_minute=5) as app:
        assert not await _works(app, WRONG_KEY)
        async with client(app, KEY) as alice, client(app, OTHER_KEY) as bob:
            chat = BODIES["/v1/chat/completions"]
            assert (await alice.post("/v1/chat/completions", json=chat)).status_code == 200
            assert (await alice.post("/v1/chat/completions", json=chat)).status_code == 429  # alice's own limit: 1
            for _ in range(5):  # bob has the server's: 5
                assert (await bob.post("/v1/chat/completions", json=chat)).status_code == 200
            assert (await bob.post("/v1/chat/completions", json=chat)).status_code == 429
    lines = [r.getMessage() for r in caplog.records if r.name == "ise.access"]
    assert any("key=alice" in line for line in lines) and any("key=bob" in line for line in lines)
    assert any("/v1/models 401 key=-" in line for line in lines)


async def test_keys_file_and_flag_keys_together(tmp_path: Path, fake: FakeEngine, tiny: TinyModel) -> None:
    keys_file = tmp_path / "keys.toml"
    keys_file.write_text(f'[keys.alice]\nkey = "{KEY}"\n')
    async with serving(fake, tiny, api_keys_file=keys_file, api_key=[OTHER_KEY]) as app:
        assert await _works(app, KEY) and await _works(app, OTHER_KEY)
        assert not await _works(app, WRONG_KEY)


@pytest.mark.parametrize(
    "content",
    [
        f'[keys.alice]\nkey = "{KEY}"\nrequests_per_minute = ',  # not TOML
        "[keys.alice]\nrequests_per_minute = 5\n",  # no key
        '[keys.alice]\nkey = ""\n',
        f'[keys.alice]\nkey = "{KEY}"\nrequests_per_minute = 0\n',
        f'[keys.alice]\nkey = "{KEY}"\ntokens_per_minute = -1\n',
        f'[keys.alice]\nkey = "{KEY}"\nrequests_per_minute = "lots"\n',
        f'[keys.alice]\nkey = "{KEY}"\nrpm = 5\n',  # a misspelt limit must not be silently ignored
        f'[keys.alice]\nkey = "{KEY}"\n[keys.bob]\nkey = "{KEY}"\n',  # one key under two names
        f'[alice]\nkey = "{KEY}"\n',  # not under [keys]
        f'key = "{KEY}"\n',
        f'[keys.alice]\nsecret = "{KEY}"\n',  # "key" misspelt: the secret is an unknown field's value
        f'[keys.alice]\nKey = "{KEY}"\n',
        f'[keys.alice]\nkey = ["{KEY}"]\n',
        "",
    ],
)
async def test_a_malformed_keys_file_stops_the_start(
    tmp_path: Path, fake: FakeEngine, tiny: TinyModel, content: str
) -> None:
    keys_file = tmp_path / "keys.toml"
    keys_file.write_text(content)
    with pytest.raises(ValueError, match=r"keys file|twice") as caught:
        async with serving(fake, tiny, api_keys_file=keys_file):
            pass
    # `ise serve` prints this message: it names the problem, never a secret from the file.
    assert KEY not in str(caught.value) and KEY[3:] not in str(caught.value)


async def test_a_missing_keys_file_or_a_key_in_both_places_stops_the_start(
    tmp_path: Path, fake: FakeEngine, tiny: TinyModel
) -> None:
    with pytest.raises(ValueError, match="keys file"):
        async with serving(fake, tiny, api_keys_file=tmp_path / "absent.toml"):
            pass
    keys_file = tmp_path / "keys.toml"
    keys_file.write_text(f'[keys.alice]\nkey = "{KEY}"\n')
    with pytest.raises(ValueError, match="twice"):
        async with serving(fake, tiny, api_keys_file=keys_file, api_key=[KEY]):
            pass


async def test_no_key_appears_in_any_log_line(
    tmp_path: Path, fake: FakeEngine, tiny: TinyModel, caplog: pytest.LogCaptureFixture
) -> None:
    keys_file = tmp_path / "keys.toml"
    keys_file.write_text(f'[keys.alice]\nkey = "{OTHER_KEY}"\nrequests_per_minute = 2\n')
    caplog.set_level(logging.DEBUG)
    async with serving(fake, tiny, api_key=[KEY], api_keys_file=keys_file, log_prompts=True) as app:
        for key in (KEY, OTHER_KEY, WRONG_KEY, None):
            async with client(app, key) as http:
                for stream in (False, True):
                    await http.post("/v1/chat/completions", json={**BODIES["/v1/chat/completions"], "stream": stream})
                await http.post("/v1/completions", json=BODIES["/v1/completions"])  # alice: over her limit
                await http.get("/v1/models")
                await http.get("/v1/nothing")
                await http.get("/health")
            async with sdk_client(app, key=key or "unset") as sdk:
                with pytest.raises(openai.APIStatusError):
                    await sdk.models.retrieve("no-such-model")
        async with client(app, **{"authorization": f"Bearer {WRONG_KEY}", "x-api-key": WRONG_KEY}) as http:
            await http.get("/metrics")
    lines = [record.getMessage() + (record.exc_text or "") for record in caplog.records]
    assert any(r.name == "ise.access" for r in caplog.records)  # the access log did log
    for secret in (KEY, OTHER_KEY, WRONG_KEY):
        assert not [line for line in lines if secret in line]
        assert not [line for line in lines if secret[3:] in line]  # nor without its prefix
