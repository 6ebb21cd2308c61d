"""The FastAPI application: routes, error handlers, the gateway's middleware, and the engine's lifetime."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware

from adapters.embedding.engine import is_embedder
from server.endpoints.messages.api import router as messages_router
from server.endpoints.router import router, stream_schemas
from server.endpoints.state import Models, ServerState
from server.gateway.access_log import AccessLogMiddleware
from server.gateway.auth import PUBLIC_PATHS, APIKeyMiddleware, Keyring
from server.gateway.body_limit import BodyLimitMiddleware
from server.gateway.rate_limits import RATE_LIMIT_HEADERS
from server.gateway.request_id import RequestIdMiddleware
from server.protocol.chat import ChatCompletionRequest
from server.protocol.completion import CompletionRequest
from server.runtime import web_ui
from server.runtime.error_handlers import install_error_handlers
from server.runtime.kserve.server import start_grpc
from server.runtime.messages_errors import MessagesErrorsMiddleware

_GRPC_STOP_GRACE_S = 5.0
_BOUNDS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")


def _exact_bounds(published: Any, exact: Any) -> None:
    """Put pydantic's integer bounds back where FastAPI's schema model made them floats.

    FastAPI types ``maximum`` as a float, so the seed's 2**63 - 1 is published as
    9.223372036854776e18, which is 2**63: a schema-driven client would send a seed ise refuses.
    """
    if isinstance(published, dict) and isinstance(exact, dict):
        for key, value in exact.items():
            if key in _BOUNDS and isinstance(value, int):
                published[key] = value
            elif key in published:
                _exact_bounds(published[key], value)
    elif isinstance(published, list) and isinstance(exact, list):
        for p, e in zip(published, exact, strict=False):
            _exact_bounds(p, e)


class _App(FastAPI):
    def openapi(self) -> dict[str, Any]:
        """FastAPI's schema, plus the models that only the completions' event streams carry."""
        if self.openapi_schema is None:
            schemas = super().openapi()["components"]["schemas"]
            schemas.update(stream_schemas())
            for model in (ChatCompletionRequest, CompletionRequest):
                exact = model.model_json_schema()
                _exact_bounds(schemas[model.__name__], exact)
                for name, definition in exact.get("$defs", {}).items():
                    _exact_bounds(schemas.get(name), definition)
        return super().openapi()


def create_app(
    served: ServerState | Models,
    on_ready: Callable[[], None] = lambda: None,
    *,
    serve_web_ui: bool = True,
    grpc_address: tuple[str, int] | None = None,
) -> FastAPI:
    """The app over one model's state, or several models', with the chat page at ``/`` unless
    ``serve_web_ui`` is false, and gRPC on ``grpc_address`` (host, port) when given, on the app's
    event loop for the app's lifetime; raises ``ValueError`` for an unreadable API keys file.

    With several models, the first one's gateway options (keys, CORS, body size) are the server's.

    Middleware, outermost first: request id (every response has one), access log, Anthropic's error
    shape on its routes (so the log shows the status sent), CORS (so
    browsers' preflights are answered without a key and every answer has CORS headers), API key,
    body size; then the routes.
    """

    models = served if isinstance(served, Models) else Models([served])
    state = models.states[0]

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        for one in models.states:
            if not is_embedder(one.engine):
                one.grammars.warm()  # the compile workers' fork server imports while the model loads
        for one in models.states:
            await one.engine.start()
            one.gateway.metrics.engine_started()
        grpc_server = None
        try:
            if grpc_address is not None:
                grpc_server = await start_grpc(app, state, *grpc_address)
            on_ready()
            yield
        finally:
            if grpc_server is not None:  # HTTP has drained; calls still open get a moment to end
                await grpc_server.stop(grace=_GRPC_STOP_GRACE_S)
            for one in models.states:
                await one.grammars.close()
                await one.engine.shutdown()
                await one.gateway.close()

    gateway = state.gateway_args
    docs = not gateway.disable_fastapi_docs
    app = _App(
        title="ise",
        summary="OpenAI-compatible inference serving endpoint",
        lifespan=lifespan,
        docs_url="/docs" if docs else None,
        redoc_url="/redoc" if docs else None,
        openapi_url="/openapi.json" if docs else None,
    )
    app.state.ise = state  # the default model's
    app.state.models = models
    install_error_handlers(app)
    app.add_middleware(BodyLimitMiddleware, max_bytes=gateway.max_request_body_bytes)
    public = PUBLIC_PATHS | web_ui.PUBLIC_PATHS if serve_web_ui else PUBLIC_PATHS
    app.add_middleware(APIKeyMiddleware, keyring=Keyring.from_settings(gateway), public_paths=public)
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
    app.add_middleware(MessagesErrorsMiddleware)
    app.add_middleware(AccessLogMiddleware, quiet_paths=frozenset(gateway.disable_access_log_for_endpoints))
    app.add_middleware(RequestIdMiddleware)
    if serve_web_ui:
        app.include_router(web_ui.router)  # before the API's root, so GET / is the page (HEAD / stays empty)
    app.include_router(router)
    app.include_router(messages_router)
    return app
