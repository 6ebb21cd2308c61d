"""The HTTP routes; each only unpacks the request and hands it on."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from server.completions import chat_completion, text_completion
from server.errors import error_response
from server.protocol import ChatCompletionRequest, CompletionRequest, ModelCard, ModelList
from server.state import ServerState, get_state

router = APIRouter()
State = Annotated[ServerState, Depends(get_state)]


def _card(state: ServerState) -> ModelCard:
    return ModelCard(id=state.model_name, created=state.created, max_model_len=state.engine.max_model_len)


@router.get("/v1/models")
async def list_models(state: State) -> ModelList:
    return ModelList(data=[_card(state)])


@router.get("/v1/models/{model:path}")
async def get_model(model: str, state: State) -> ModelCard:
    state.check_model(model)
    return _card(state)


@router.post("/v1/chat/completions")
async def create_chat_completion(body: ChatCompletionRequest, request: Request, state: State) -> Response:
    return await chat_completion(body, request, state)


@router.post("/v1/completions")
async def create_completion(body: CompletionRequest, request: Request, state: State) -> Response:
    return await text_completion(body, request, state)


@router.get("/health")
async def health(state: State) -> Response:
    if not state.engine.is_alive:
        return error_response(503, "The engine is not running.")
    return JSONResponse({"status": "ok"})


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    return Response(generate_latest(request.app.state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
