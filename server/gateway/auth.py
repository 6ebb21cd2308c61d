"""API keys: deny by default, decided on the raw ASGI request before any route runs.

vLLM checks its key in an HTTP middleware on a URL path it compares with ``startswith("/v1")``,
which is why routes outside that prefix (``/invocations``, ``/tokenize``) were open under
``--api-key`` until advisories closed them one by one. ise inverts the rule: every request needs a
key, except ``GET``/``HEAD`` of exactly ``/health`` (or ``/``) as the client spelled it (``scope["raw_path"]``,
never a path rebuilt from the Host header or decoded from ``%2F``), so a new route is private the
day it is added and no spelling (``//v1/...``, ``/v1/models/``, ``/health/``) slips through. The key
comes as OpenAI's clients send it (``Authorization: Bearer KEY``) or as Anthropic's (``x-api-key``).
"""

from __future__ import annotations

import hmac
import logging
import tomllib
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from server.gateway.options import GatewayArgs
from server.protocol.errors import APIError, api_error_response

log = logging.getLogger(__name__)

# Probes (load balancers, Kubernetes; Claude Code's HEAD / before its first request) call these
# without credentials; they reveal only liveness.
PUBLIC_PATHS = frozenset({b"/health", b"/"})
_PUBLIC_METHODS = frozenset({"GET", "HEAD"})
_BEARER = b"bearer "
STATE_KEY = "api_key"  # where the matched key goes in scope["state"] (request.state.api_key)


@dataclass(frozen=True)
class APIKey:
    """A key and its own limits; ``name`` is what logs and metrics show, never the secret."""

    name: str
    secret: bytes
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None


class _KeyEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    key: str = Field(min_length=1)
    requests_per_minute: int | None = Field(None, gt=0)
    tokens_per_minute: int | None = Field(None, gt=0)


class _KeysFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    keys: dict[str, _KeyEntry]


class Keyring:
    """The keys the server accepts; empty means the server is open (no key configured)."""

    def __init__(self, keys: list[APIKey]) -> None:
        secrets = [key.secret for key in keys]
        if len(set(secrets)) != len(secrets):
            raise ValueError("the same API key is configured twice")
        self.keys = tuple(keys)

    @classmethod
    def from_settings(cls, settings: GatewayArgs) -> Keyring:
        """``--api-key`` values (named ``key-1``, ``key-2``, ...) and the keys file's named keys.

        Keys from flags take the server-wide limits; a file's key may set its own.
        Raises ``ValueError`` for an unreadable or malformed keys file.
        """
        rpm, tpm = settings.requests_per_minute, settings.tokens_per_minute
        keys = [APIKey(f"key-{i}", k.encode(), rpm, tpm) for i, k in enumerate(settings.api_key or [], 1)]
        if settings.api_keys_file is not None:
            keys += _read_keys_file(settings.api_keys_file, rpm, tpm)
        return cls(keys)

    @property
    def enabled(self) -> bool:
        return bool(self.keys)

    def match(self, presented: bytes) -> APIKey | None:
        """The key equal to ``presented``; every key is compared in constant time, none skipped."""
        found = None
        for key in self.keys:
            if hmac.compare_digest(key.secret, presented):
                found = key
        return found


def _read_keys_file(path: Path, rpm: int | None, tpm: int | None) -> list[APIKey]:
    try:
        parsed = _KeysFile.model_validate(tomllib.loads(path.read_text()))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ValueError(f"cannot read the API keys file {path}: {exc}") from None
    except ValidationError as exc:
        # Without the input values: they may be the keys themselves.
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors(include_input=False))
        raise ValueError(f"invalid API keys file {path}: {problems}") from None
    return [
        APIKey(
            name,
            entry.key.encode(),
            entry.requests_per_minute or rpm,
            entry.tokens_per_minute or tpm,
        )
        for name, entry in parsed.keys.items()
    ]


class APIKeyMiddleware:
    """Answers 401 unless the request carries a configured key; records which key it was."""

    def __init__(self, app: ASGIApp, keyring: Keyring, public_paths: frozenset[bytes] = PUBLIC_PATHS) -> None:
        """``public_paths``: raw paths ``GET``/``HEAD`` may take without a key (the chat page's files too)."""
        self.app = app
        self.keyring = keyring
        self.public_paths = public_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or not self.keyring.enabled:
            await self.app(scope, receive, send)
            return
        raw_path = scope.get("raw_path") or scope["path"].encode()
        if scope["type"] == "http" and scope["method"] in _PUBLIC_METHODS and raw_path in self.public_paths:
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        authorization = headers.get("authorization", "").encode("latin-1")
        # Anthropic's clients send the key as x-api-key (Claude Code's ANTHROPIC_API_KEY) or as a bearer token.
        api_key = headers.get("x-api-key", "").encode("latin-1")
        key = None
        if authorization[: len(_BEARER)].lower() == _BEARER:
            key = self.keyring.match(authorization[len(_BEARER) :].strip())
        elif api_key:
            key = self.keyring.match(api_key.strip())
        if key is None:
            await _deny(scope, receive, send, missing=not (authorization or api_key))
            return
        scope.setdefault("state", {})[STATE_KEY] = key
        await self.app(scope, receive, send)


async def _deny(scope: Scope, receive: Receive, send: Send, *, missing: bool) -> None:
    if scope["type"] == "websocket":
        await send({"type": "websocket.close", "code": 1008})
        return
    message = (
        "You didn't provide an API key. Provide it in an Authorization header using Bearer auth "
        "(Authorization: Bearer YOUR_KEY), or in an x-api-key header."
        if missing
        else "Incorrect API key provided."
    )
    error = APIError(401, message, code="invalid_api_key", headers={"www-authenticate": "Bearer"})
    await api_error_response(error)(scope, receive, send)
