"""``POST /v1/messages`` and ``/v1/messages/count_tokens``: Anthropic's Messages API on the chat pipeline.

A request is validated in Anthropic's terms, translated into a chat completion request
(``translate.py``) and served by the one serving loop with chat's job (``chat_job``): the same
sampling, tools, reasoning, stop strings, usage, limits and admission as ``/v1/chat/completions``.
Only the answer's shape is Anthropic's (``answer.py``); so are its errors, reshaped in one place
for every route under ``/v1/messages`` (``server/runtime/messages_errors.py``).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from server.endpoints.chat_completion import chat_job
from server.endpoints.generation import Job
from server.endpoints.messages.answer import MessagesFormat
from server.endpoints.messages.translate import to_chat
from server.endpoints.serving import TYPED_EVENT_STREAM, ResponseFormat, serve
from server.endpoints.state import ServerState, get_state
from server.protocol.errors import APIError
from server.protocol.messages import CountTokensRequest, MessagesRequest
from server.protocol.messages_response import AnthropicError, CountTokensResponse, Message
from server.text.chat_tools import plan_chat

# The max_tokens a client asks for counts against the context: Claude Code asks for 32,000 unless told.
_MAX_TOKENS_HINT = (
    " On the Messages API the completion's share is max_tokens (Claude Code: set CLAUDE_CODE_MAX_OUTPUT_TOKENS)."
)

router = APIRouter(
    responses={"default": {"model": AnthropicError, "description": "Any error, in Anthropic's error shape."}}
)
State = Annotated[ServerState, Depends(get_state)]


@router.post(
    "/v1/messages",
    response_model=None,
    responses={
        200: {
            "model": Message,
            "description": "The message; with stream: true, Anthropic's typed server-sent events instead.",
            "content": {"text/event-stream": TYPED_EVENT_STREAM},
        }
    },
)
async def create_message(body: MessagesRequest, request: Request, state: State) -> Response:
    """A message, or with ``stream: true`` Anthropic's typed server-sent events; ``?beta=true`` is ignored."""
    translation = to_chat(body, reasoning=state.api.reasoning_parser is not None)
    chat = translation.chat

    async def prepare() -> tuple[Job, ResponseFormat]:
        try:
            job, output = await chat_job(chat, request, state)
        except APIError as exc:
            if exc.code == "context_length_exceeded":
                exc.message += _MAX_TOKENS_HINT
            raise
        return job, MessagesFormat(body.model, output, job.prompt_tokens)

    return await serve(chat, request, state, prepare, ignored=translation.ignored)


@router.post("/v1/messages/count_tokens")
async def count_tokens(body: CountTokensRequest, state: State) -> CountTokensResponse:
    """The prompt's tokens as ``/v1/messages`` counts them, its tools included (input_tokens plus
    cache_read_input_tokens of its usage)."""
    state.check_model(body.model)
    chat = to_chat(body, reasoning=state.api.reasoning_parser is not None).chat
    template = state.tokenization.chat_template
    plan = plan_chat(chat.messages, chat.tools, chat.tool_choice, chat.parallel_tool_calls, state.api, template)
    prompt = state.prompts.chat(plan.messages, tools=plan.template_tools)
    return CountTokensResponse(input_tokens=len(prompt))
