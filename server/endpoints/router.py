"""The HTTP routes; each only unpacks the request and hands it on.

Each route also declares every response it can give, so ``/openapi.json`` documents the API as
clients meet it: the completions routes answer JSON or, with ``stream: true``, server-sent events;
every error has OpenAI's shape (``ErrorResponse``), never FastAPI's 422.
"""

from __future__ import annotations

from importlib.metadata import version
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from adapters.embedding.engine import is_embedder
from server.endpoints import chat_completion, completion, embeddings, scores
from server.endpoints.metrics_merge import merged_registry
from server.endpoints.responses.api import router as responses_router
from server.endpoints.state import Models, ServerState, get_embedding_state, get_models, get_state
from server.endpoints.tokenize import detokenize, tokenize
from server.gateway.load import kv_cache_usage
from server.protocol.chat import ChatCompletion, ChatCompletionChunk, ChatCompletionRequest
from server.protocol.common import ErrorResponse, Health, ModelCard, ModelList, ServerLoad, Version
from server.protocol.completion import Completion, CompletionRequest
from server.protocol.embeddings import EmbeddingRequest, EmbeddingResponse
from server.protocol.errors import APIError, api_error_response, error_response
from server.protocol.scores import RerankRequest, RerankResponse, ScoreRequest, ScoreResponse
from server.protocol.tokenize import DetokenizeRequest, DetokenizeResponse, TokenizeRequest, TokenizeResponse

_REF = "#/components/schemas/"

_ERRORS = {
    400: "Invalid request: a parameter out of range or unsupported, malformed JSON, or a prompt and "
    "max_tokens beyond the context window (code context_length_exceeded). param names the field.",
    401: "No API key, or not one the server accepts (code invalid_api_key); only when keys are configured.",
    404: "No such model (code model_not_found).",
    413: "The request body is over --max-request-body-bytes (code request_too_large).",
    429: "Refused before any work, with Retry-After: the key's rate limit (rate_limit_exceeded), a full "
    "waiting queue (server_overloaded), or a time-to-first-token target the server would miss "
    "(slo_exceeded).",
    500: "The request failed in the server; other requests are unaffected.",
    503: "The engine is not running (code engine_dead, not worth a retry), or the server is shutting down "
    "(server_shutting_down).",
}


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {status: {"model": ErrorResponse, "description": _ERRORS[status]} for status in statuses}


def _event_stream(chunk: type[BaseModel]) -> dict[str, Any]:
    """A streamed completion, described as FastAPI describes its own server-sent event routes."""
    data = {
        "oneOf": [
            {
                "type": "string",
                "contentMediaType": "application/json",
                "contentSchema": {"anyOf": [{"$ref": _REF + chunk.__name__}, {"$ref": _REF + "ErrorResponse"}]},
            },
            {"const": "[DONE]"},
        ]
    }
    return {"itemSchema": {"type": "object", "required": ["data"], "properties": {"data": data}}}


def _completion_responses(whole: type[BaseModel], chunk: type[BaseModel]) -> dict[int | str, dict[str, Any]]:
    streamed = (
        f"The {whole.__name__}; with stream: true, server-sent events instead: a {chunk.__name__} per data "
        "line (the usage chunk last, with stream_options.include_usage), then data: [DONE]. A failure "
        "after the stream began arrives as an ErrorResponse event, then data: [DONE]."
    )
    return {
        200: {"model": whole, "description": streamed, "content": {"text/event-stream": _event_stream(chunk)}},
        **_errors(400, 401, 404, 413, 429, 500, 503),
    }


def stream_schemas() -> dict[str, Any]:
    """Schemas of the models only event streams carry, which no route names for FastAPI to collect."""
    _, schema = models_json_schema([(ChatCompletionChunk, "serialization")], ref_template=_REF + "{model}")
    defs: dict[str, Any] = schema["$defs"]
    return defs


# Every other error (405 for a wrong method, say) has the same shape; declaring it also keeps
# FastAPI from documenting the 422 that the error handlers turn into a 400.
router = APIRouter(
    responses={"default": {"model": ErrorResponse, "description": "Any other error, in OpenAI's error shape."}}
)
State = Annotated[ServerState, Depends(get_state)]
EmbeddingState = Annotated[ServerState, Depends(get_embedding_state)]
router.include_router(responses_router)  # /v1/responses: server/endpoints/responses/


AllModels = Annotated[Models, Depends(get_models)]


def _card(state: ServerState, name: str) -> ModelCard:
    return ModelCard(
        id=name,
        created=state.created,
        root=state.model_path,
        max_model_len=state.engine.max_model_len,
        capabilities=["embedding", "score", "rerank"] if is_embedder(state.engine) else ["chat", "completion"],
    )


@router.head("/v1/models", include_in_schema=False)
@router.get("/v1/models", responses=_errors(401))
async def list_models(models: AllModels) -> ModelList:
    """Every name each model answers to (``--served-model-name a b``), as vLLM lists them, with what it does."""
    return ModelList(data=[_card(state, name) for state in models.states for name in state.model_names])


@router.head("/v1/models/{model:path}", include_in_schema=False)
@router.get("/v1/models/{model:path}", responses=_errors(401, 404))
async def get_model(model: str, models: AllModels) -> ModelCard:
    state = models.route(model)
    state.check_model(model)
    return _card(state, model)


@router.post(
    "/v1/chat/completions", response_model=None, responses=_completion_responses(ChatCompletion, ChatCompletionChunk)
)
async def create_chat_completion(body: ChatCompletionRequest, request: Request, state: State) -> Response:
    return await chat_completion.create_chat_completion(body, request, state)


@router.post("/v1/completions", response_model=None, responses=_completion_responses(Completion, Completion))
async def create_completion(body: CompletionRequest, request: Request, state: State) -> Response:
    return await completion.create_completion(body, request, state)


@router.post(
    "/v1/embeddings",
    response_model=EmbeddingResponse,
    responses={200: {"model": EmbeddingResponse}, **_errors(400, 401, 404, 413, 429, 500, 503)},
)
async def create_embeddings(body: EmbeddingRequest, request: Request, state: State) -> Response:
    """OpenAI's embeddings, from an embedding model (a 400 from a generating one)."""
    return await embeddings.create_embeddings(body, request, state)


@router.post("/score", response_model=ScoreResponse, responses=_errors(400, 401, 404, 413, 429, 500, 503))
@router.post("/v1/score", response_model=ScoreResponse, responses=_errors(400, 401, 404, 413, 429, 500, 503))
async def create_score(body: ScoreRequest, request: Request, state: EmbeddingState) -> Response:
    """vLLM's: the cosine similarity of each pair's embeddings (text_1 with text_2, 1:1, 1:N or N:N)."""
    return await scores.create_score(body, request, state)


@router.post("/rerank", response_model=RerankResponse, responses=_errors(400, 401, 404, 413, 429, 500, 503))
@router.post("/v1/rerank", response_model=RerankResponse, responses=_errors(400, 401, 404, 413, 429, 500, 503))
@router.post("/v2/rerank", response_model=RerankResponse, responses=_errors(400, 401, 404, 413, 429, 500, 503))
async def create_rerank(body: RerankRequest, request: Request, state: EmbeddingState) -> Response:
    """vLLM's (Jina's and Cohere's shape): documents by the cosine of their embedding and the query's, best first."""
    return await scores.create_rerank(body, request, state)


@router.head("/", include_in_schema=False)
@router.get("/", include_in_schema=False)
async def root() -> Response:
    """Claude Code checks that its base URL answers (``HEAD /``) before its first request."""
    return Response()


@router.head("/health", include_in_schema=False)
@router.get(
    "/health",
    response_model=None,
    responses={
        200: {"model": Health, "description": "The engine is running and the server takes requests."},
        **_errors(503),
    },
)
async def health(models: AllModels) -> Response:
    """Liveness and readiness for load balancers; the one route open without an API key.

    With several models, healthy while one engine runs, each model's state in ``models``: one
    model's engine failing does not take the others out of the load balancer.
    """
    alive = {name: state.engine.is_alive for state in models.states for name in state.model_names}
    if not any(alive.values()):
        return api_error_response(APIError(503, "The engine is not running.", code="engine_dead", retryable=False))
    if models.states[0].gateway.admission.draining:
        message = "The server is draining: it finishes running requests and takes no new ones."
        return error_response(503, message, code="server_shutting_down")
    if len(models.states) == 1:
        return JSONResponse(Health().model_dump())
    each: dict[str, Literal["ok", "engine_dead"]] = {n: "ok" if up else "engine_dead" for n, up in alive.items()}
    status: Literal["ok", "degraded"] = "ok" if all(alive.values()) else "degraded"
    return JSONResponse(Health(status=status, models=each).model_dump(exclude_none=True))


@router.get(
    "/metrics",
    response_class=PlainTextResponse,
    responses={200: {"description": "Prometheus metrics, in its text exposition format."}, **_errors(401)},
)
async def metrics(models: AllModels) -> Response:
    """Each model's series; with several models, ise's own series carry a ``model_name`` label too (vLLM's do)."""
    registries = [state.gateway.metrics.registry for state in models.states]
    if len(registries) == 1:
        return Response(generate_latest(registries[0]), media_type=CONTENT_TYPE_LATEST)
    names = [state.model_name for state in models.states]
    return Response(generate_latest(merged_registry(registries, names)), media_type=CONTENT_TYPE_LATEST)


@router.get("/load", responses=_errors(401))
async def load(state: State) -> ServerLoad:
    """vLLM's load report for routers: requests in flight (``server_load``), and the engine's running and
    waiting requests and KV cache usage. With ``endpoint-load-metrics-format: TEXT`` (or ``JSON``), a
    completion's response carries the same in vLLM's ORCA header, ``endpoint-load-metrics``."""
    stats = state.engine.stats()
    return ServerLoad(
        server_load=len(state.gateway.admission.tickets),
        num_requests_running=stats.running,
        num_requests_waiting=stats.waiting,
        kv_cache_usage_perc=kv_cache_usage(stats),
    )


@router.post("/tokenize", responses=_errors(400, 401, 404, 413))
async def create_tokenize(body: TokenizeRequest, state: State) -> TokenizeResponse:
    """vLLM's: the prompt's token ids, counted exactly as a completion's ``usage.prompt_tokens``."""
    return tokenize(body, state)


@router.post("/detokenize", responses=_errors(400, 401, 404, 413))
async def create_detokenize(body: DetokenizeRequest, state: State) -> DetokenizeResponse:
    """vLLM's: token ids back into text."""
    return detokenize(body, state)


_VERSION = Version(version=version("ise"))


@router.get("/version", responses=_errors(401))
async def get_version() -> Version:
    """vLLM's: the server's package version, for ops tools that check what they talk to."""
    return _VERSION
