"""The chat page's serving: ``GET /`` is the page, its two files load without a key, ``HEAD /`` stays
the empty probe Claude Code sends, and ``--no-web-ui`` puts back the plain root.

What the page does in a browser is tested in tests/real/test_web_ui.py.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import AsyncIterator
from fnmatch import fnmatch
from pathlib import Path

import pytest
from fastapi import FastAPI

from server.config.settings import Settings
from server.endpoints.state import ServerState
from server.gateway.options import GatewayArgs
from server.runtime.app import create_app
from tests.fast.fake_engine import FakeEngine
from tests.fast.helpers import client
from tests.fast.tiny_model import MODEL, TinyModel

KEY = "sk-ise-web-ui"


async def _app(fake: FakeEngine, tiny: TinyModel, *, web_ui: bool, keys: list[str]) -> AsyncIterator[FastAPI]:
    state = ServerState(
        engine=fake, tokenization=tiny.tokenization, model_name=MODEL, gateway_args=GatewayArgs(api_key=keys)
    )
    app = create_app(state, serve_web_ui=web_ui)
    async with app.router.lifespan_context(app):
        yield app


@pytest.fixture
async def keyed(fake: FakeEngine, tiny: TinyModel) -> AsyncIterator[FastAPI]:
    async for app in _app(fake, tiny, web_ui=True, keys=[KEY]):
        yield app


async def test_the_page_and_its_files_load_without_a_key_while_the_api_needs_one(keyed: FastAPI) -> None:
    async with client(keyed) as http:
        page = await http.get("/")
        assert page.status_code == 200 and page.headers["content-type"] == "text/html; charset=utf-8"
        # Everything the page loads is its own, and each file it names is served, public.
        names = re.findall(r'(?:src|href)="([^"]+)"', page.text)
        assert sorted(names) == ["/ui/app.js", "/ui/style.css"]
        for name in names:
            asset = await http.get(name)
            assert asset.status_code == 200 and asset.content, name
        assert (await http.get("/ui/app.js")).headers["content-type"].startswith("text/javascript")
        # Only the page runs script, and only its own file: no inline script, no other origin.
        policy = page.headers["content-security-policy"]
        assert "script-src 'self'" in policy and "default-src 'none'" in policy and "unsafe" not in policy
        # The API is as private as ever; the page's requests carry the key.
        assert (await http.get("/v1/models")).status_code == 401
        assert (await http.get("/ui/other.js")).status_code == 401  # only the page's own files are public
    async with client(keyed, key=KEY) as http:
        assert (await http.get("/ui/other.js")).status_code == 404


async def test_head_root_answers_without_a_key(keyed: FastAPI) -> None:
    """Claude Code's probe of its base URL before its first request."""
    async with client(keyed) as http:
        assert (await http.head("/")).status_code == 200


@pytest.mark.parametrize("keys", [[], [KEY]])
async def test_no_web_ui_serves_the_plain_root(fake: FakeEngine, tiny: TinyModel, keys: list[str]) -> None:
    async for app in _app(fake, tiny, web_ui=False, keys=keys):
        async with client(app) as http:
            root = await http.get("/")
            assert root.status_code == 200 and root.content == b""
            assert (await http.head("/")).status_code == 200
            assert (await http.get("/ui/app.js")).status_code == (401 if keys else 404)


def test_no_web_ui_is_a_flag_and_a_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings.load([]).web_ui is True
    assert Settings.load(["--no-web-ui"]).web_ui is False
    monkeypatch.setenv("ISE_WEB_UI", "false")
    assert Settings.load([]).web_ui is False


def test_page_files_are_package_data() -> None:
    """A non-editable install (a wheel) holds every file of the page: setuptools' package data names them."""
    root = Path(__file__).resolve().parents[2]
    globs = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["server.runtime"]
    web = root / "server" / "runtime" / "web"
    shipped = {path.name for path in web.iterdir() if any(fnmatch(f"web/{path.name}", glob) for glob in globs)}
    assert shipped == {"index.html", "app.js", "style.css"}
