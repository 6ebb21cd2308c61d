"""The chat page at ``/``: three static files shipped in the package (``server/runtime/web/``).

The page is plain HTML, CSS and JavaScript, with no build step and nothing fetched from elsewhere:
it talks to this server's own ``/v1/models`` and ``/v1/chat/completions``, with the key the user
types (kept in the browser's session storage). The page and its two files are public, as ``/``
was before, so a keyed server still shows the page, which then asks for the key; the API stays
private. The page's Content-Security-Policy lets it run only its own script and reach only this
origin: a second fence behind the script, which puts model output in as text, never HTML.

``HEAD /`` keeps answering an empty 200 from the API's own root route (Claude Code probes it).
"""

from __future__ import annotations

from functools import cache
from importlib.resources import files

from fastapi import APIRouter, HTTPException
from fastapi.responses import Response

ASSETS = {"app.js": "text/javascript; charset=utf-8", "style.css": "text/css; charset=utf-8"}
PREFIX = "/ui/"
# What the API key middleware lets through without a key, beside /health and /.
PUBLIC_PATHS = frozenset((PREFIX + name).encode() for name in ASSETS)
_HEADERS = {
    "content-security-policy": "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cache-control": "no-cache",  # a new ise's page, not yesterday's, after an upgrade
}


@cache
def _read(name: str) -> bytes:
    return files("server.runtime").joinpath("web", name).read_bytes()


router = APIRouter(include_in_schema=False)


@router.get("/")
async def page() -> Response:
    return Response(_read("index.html"), media_type="text/html; charset=utf-8", headers=_HEADERS)


@router.get(PREFIX + "{name}")
async def asset(name: str) -> Response:
    if name not in ASSETS:
        raise HTTPException(404, f"No such file: {PREFIX}{name}")
    return Response(_read(name), media_type=ASSETS[name], headers=_HEADERS)
