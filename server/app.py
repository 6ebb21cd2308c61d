"""The FastAPI application: routes, error handlers, and the engine's lifetime."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI

from server.errors import install_error_handlers
from server.metrics import Metrics
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
    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await state.engine.start()
        on_ready()
        try:
            yield
        finally:
            await state.engine.shutdown()

    app = _App(title="ise", summary="OpenAI-compatible inference serving endpoint", lifespan=lifespan)
    app.state.ise = state
    app.state.metrics = Metrics(state.engine)
    install_error_handlers(app)
    app.add_middleware(RequestIdMiddleware)
    app.include_router(router)
    return app
