"""``/v1/responses``: OpenAI's Responses API over the chat pipeline, and its stored responses.

A request is translated into a chat request (``translate.py``) and served by the one serving loop
with chat's job (``chat_job``: tools, structured outputs, reasoning, stop, usage, the gateway), so
nothing of chat is implemented twice; only the answer's shape is the Responses API's
(``response_format.py``). Stored responses (``store.py``) belong to the API key that made them.

Codex opens a WebSocket to ``/v1/responses`` first and falls back to HTTP when the upgrade is
refused: the refusal is immediate, in OpenAI's error shape.
"""

from __future__ import annotations

import hashlib
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request, WebSocket
from fastapi.responses import JSONResponse, Response

from server.endpoints.chat_completion import chat_job
from server.endpoints.generation import Job
from server.endpoints.responses.response_format import ResponsesFormat
from server.endpoints.responses.store import StoredResponse
from server.endpoints.responses.translate import item_id, translate
from server.endpoints.serving import TYPED_EVENT_STREAM, ResponseFormat, serve
from server.endpoints.state import ServerState, get_state
from server.gateway.auth import STATE_KEY, APIKey
from server.protocol.base import now
from server.protocol.common import ErrorResponse
from server.protocol.errors import APIError, api_error_response, invalid_request
from server.protocol.responses import ResponsesRequest
from server.protocol.responses_output import DeletedResponse, InputItemList, ResponseObject

router = APIRouter()
State = Annotated[ServerState, Depends(get_state)]
_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse} for status in (400, 401, 404, 413, 429, 500, 503)
}


def tenant(raw: Request | WebSocket) -> str:
    """The request's scope in the store: a digest of its API key ('' when the server has no keys)."""
    key: APIKey | None = getattr(raw.state, STATE_KEY, None)
    return hashlib.sha256(key.secret).hexdigest() if key is not None else ""


def _not_found(response_id: str) -> APIError:
    return APIError(404, f"Response with id '{response_id}' not found.", param="response_id", code="not_found")


@router.post(
    "/v1/responses",
    response_model=None,
    responses={
        200: {
            "model": ResponseObject,
            "description": "The response; with stream: true, its typed server-sent events instead.",
            "content": {"text/event-stream": TYPED_EVENT_STREAM},
        },
        **_ERRORS,
    },
)
async def create_response(req: ResponsesRequest, raw: Request, state: State) -> Response:
    state.check_model(req.model, "generate")
    scope = tenant(raw)
    conversation: list[dict[str, Any]] = []
    if req.previous_response_id is not None:
        previous = state.responses.get(scope, req.previous_response_id)
        if previous is None:
            raise APIError(
                400,
                f"Previous response with id '{req.previous_response_id}' not found.",
                param="previous_response_id",
                code="previous_response_not_found",
            )
        conversation = previous.conversation
    translation = translate(req, conversation)
    chat = translation.chat
    template = _in_progress(req, state)

    def on_done(final: ResponseObject) -> None:
        if req.store:
            output = [item.model_dump(exclude_none=True) for item in final.output]
            history = [*conversation, *translation.input_items, *output]
            state.responses.put(scope, final.id, StoredResponse(final.model_dump(), translation.input_items, history))

    async def prepare() -> tuple[Job, ResponseFormat]:
        job, output = await chat_job(chat, raw, state, prompt_param="input")
        fmt = ResponsesFormat(template, output, translation.origins, state.tokenization, chat.logprobs, on_done)
        return job, fmt

    return await serve(chat, raw, state, prepare, ignored=translation.ignored)


def _in_progress(req: ResponsesRequest, state: ServerState) -> ResponseObject:
    """The response before its output: the request's settings echoed as they take effect, as OpenAI's are."""
    defaults = state.sampling_defaults
    fmt = req.text.format if req.text is not None else None
    reasoning = req.reasoning
    choice = req.tool_choice
    return ResponseObject(
        id=item_id("resp"),
        created_at=now(),
        status="in_progress",
        instructions=req.instructions,
        max_output_tokens=req.max_output_tokens,
        model=req.model,
        parallel_tool_calls=req.parallel_tool_calls,
        previous_response_id=req.previous_response_id,
        reasoning={
            "effort": reasoning.effort if reasoning else None,
            "summary": reasoning.summary if reasoning else None,
        },
        store=req.store,
        temperature=defaults.temperature if req.temperature is None else req.temperature,
        text={"format": fmt.model_dump(by_alias=True, exclude_none=True) if fmt else {"type": "text"}},
        tool_choice=choice.model_dump() if choice is not None and not isinstance(choice, str) else choice or "auto",
        tools=[tool.model_dump(by_alias=True, exclude_none=True) for tool in req.tools or []],
        top_logprobs=req.top_logprobs,
        top_p=defaults.top_p if req.top_p is None else req.top_p,
        truncation=req.truncation or "disabled",
        user=req.user,
        metadata=req.metadata or {},
        prompt_cache_key=req.prompt_cache_key,
    )


@router.get("/v1/responses/{response_id}", responses={200: {"model": ResponseObject}, **_ERRORS})
async def get_response(response_id: str, raw: Request, state: State, stream: bool = False) -> JSONResponse:
    """The stored response; replaying its events (``stream=true``) is refused: ise keeps answers, not events."""
    if stream:
        raise invalid_request("ise does not replay a stored response's events: leave out stream.", param="stream")
    stored = state.responses.get(tenant(raw), response_id)
    if stored is None:
        raise _not_found(response_id)
    return JSONResponse(stored.response)


@router.delete("/v1/responses/{response_id}", responses=_ERRORS)
async def delete_response(response_id: str, raw: Request, state: State) -> DeletedResponse:
    if not state.responses.delete(tenant(raw), response_id):
        raise _not_found(response_id)
    return DeletedResponse(id=response_id)


@router.get("/v1/responses/{response_id}/input_items", responses=_ERRORS)
async def list_input_items(
    response_id: str,
    raw: Request,
    state: State,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    order: Literal["asc", "desc"] = "desc",
    after: str | None = None,
) -> InputItemList:
    """The input items the response's request sent (not earlier turns'), newest first unless ``order=asc``."""
    stored = state.responses.get(tenant(raw), response_id)
    if stored is None:
        raise _not_found(response_id)
    items = stored.input_items if order == "asc" else stored.input_items[::-1]
    if after is not None:
        ids = [item.get("id") for item in items]
        items = items[ids.index(after) + 1 :] if after in ids else []
    page = items[:limit]
    first, last = (page[0].get("id"), page[-1].get("id")) if page else (None, None)
    return InputItemList(data=page, first_id=first, last_id=last, has_more=len(items) > limit)


@router.websocket("/v1/responses")
async def refuse_websocket(websocket: WebSocket) -> None:
    """Codex tries a WebSocket before HTTP: a 426 at once sends it to HTTP without a retry."""
    message = "ise serves the Responses API over HTTP only: POST /v1/responses."
    if "websocket.http.response" in websocket.scope.get("extensions", {}):
        await websocket.send_denial_response(api_error_response(APIError(426, message, code="websocket_unsupported")))
    else:
        await websocket.close(code=1008, reason=message)
