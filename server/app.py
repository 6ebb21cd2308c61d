"""The FastAPI application: routes, error handlers, and the engine's lifetime."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI

from server.errors import install_error_handlers
from server.metrics import Metrics
from server.request_id import RequestIdMiddleware
from server.routes import router
from server.state import ServerState


def create_app(state: ServerState, on_ready: Callable[[], None] = lambda: None) -> FastAPI:
    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await state.engine.start()
        on_ready()
        try:
            yield
        finally:
            await state.engine.shutdown()

    app = FastAPI(title="ise", summary="OpenAI-compatible inference serving endpoint", lifespan=lifespan)
    app.state.ise = state
    app.state.metrics = Metrics(state.engine)
    install_error_handlers(app)
    app.add_middleware(RequestIdMiddleware)
    app.include_router(router)
    return app
