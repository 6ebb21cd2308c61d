"""The FastAPI application: routes, error handlers, the gateway's middleware, and the engine's lifetime."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware

from server.access_log import AccessLogMiddleware
from server.auth import APIKeyMiddleware, Keyring
from server.body_limit import BodyLimitMiddleware
from server.errors import install_error_handlers
from server.rate_limits import RATE_LIMIT_HEADERS
from server.request_id import RequestIdMiddleware
from server.routes import router, stream_schemas
from server.state import ServerState


class _App(FastAPI):
    def openapi(self) -> dict[str, Any]:
        """FastAPI's schema, plus the models that only the completions' event streams carry."""
        if self.openapi_schema is None:
            super().openapi()["components"]["schemas"].update(stream_schemas())
        return super().openapi()


def create_app(state: ServerState, on_ready: Callable[[], None] = lambda: None) -> FastAPI:
    """The app over ``state``; raises ``ValueError`` for an unreadable API keys file.

    Middleware, outermost first: request id (every response has one), access log, CORS (so
    browsers' preflights are answered without a key and every answer has CORS headers), API key,
    body size; then the routes.
    """

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await state.engine.start()
        on_ready()
        try:
            yield
        finally:
            await state.engine.shutdown()

    gateway = state.gateway
    app = _App(title="ise", summary="OpenAI-compatible inference serving endpoint", lifespan=lifespan)
    app.state.ise = state
    install_error_handlers(app)
    app.add_middleware(BodyLimitMiddleware, max_bytes=gateway.max_request_body_bytes)
    app.add_middleware(APIKeyMiddleware, keyring=Keyring.from_settings(gateway))
    if gateway.allowed_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=gateway.allowed_origins,
            allow_methods=gateway.allowed_methods,
            allow_headers=gateway.allowed_headers,
            allow_credentials=gateway.allow_credentials,
            # Browsers may read these: OpenAI's rate-limit and request-id headers.
            expose_headers=["x-request-id", "retry-after", "retry-after-ms", *RATE_LIMIT_HEADERS],
        )
    app.add_middleware(AccessLogMiddleware)
    app.add_middleware(RequestIdMiddleware)
    app.include_router(router)
    return app
