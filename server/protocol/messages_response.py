"""Anthropic's Messages API answers: the message, its stream's typed events, token counts and errors.

Every stream event carries its own ``type``, which is also the SSE event's name (``event:
content_block_delta``), as the anthropic SDKs read them. Errors keep Anthropic's shape and status
codes, which its SDKs map to typed exceptions and retries (429, 529 and 5xx are retried).
"""

from __future__ import annotations

from typing import Any, Literal

from server.protocol.base import Absent, ResponseModel

StopReason = Literal["end_turn", "max_tokens", "stop_sequence", "tool_use"]


class MessageUsage(ResponseModel):
    """Anthropic counts the prompt in parts: ``input_tokens`` is what was not read from the cache."""

    input_tokens: int
    output_tokens: int
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0


class TextContent(ResponseModel):
    type: Literal["text"] = "text"
    text: str


class ThinkingContent(ResponseModel):
    type: Literal["thinking"] = "thinking"
    thinking: str
    signature: str = ""  # Anthropic signs its thinking; ise has nothing to sign it with


class ToolUseContent(ResponseModel):
    type: Literal["tool_use"] = "tool_use"
    id: str
    name: str
    input: dict[str, Any]


Content = TextContent | ThinkingContent | ToolUseContent


class Message(ResponseModel):
    id: str
    type: Literal["message"] = "message"
    role: Literal["assistant"] = "assistant"
    model: str
    content: list[Content]
    stop_reason: StopReason | None
    stop_sequence: str | None = None
    usage: MessageUsage


class CountTokensResponse(ResponseModel):
    input_tokens: int


# The stream's events, in the order they come: message_start (and a ping), then per content block
# content_block_start, content_block_delta..., content_block_stop; then message_delta and message_stop.


class MessageStart(ResponseModel):
    type: Literal["message_start"] = "message_start"
    message: Message


class Ping(ResponseModel):
    type: Literal["ping"] = "ping"


class ContentBlockStart(ResponseModel):
    type: Literal["content_block_start"] = "content_block_start"
    index: int
    content_block: Content


class TextDelta(ResponseModel):
    type: Literal["text_delta"] = "text_delta"
    text: str


class ThinkingDelta(ResponseModel):
    type: Literal["thinking_delta"] = "thinking_delta"
    thinking: str


class InputJSONDelta(ResponseModel):
    type: Literal["input_json_delta"] = "input_json_delta"
    partial_json: str


class ContentBlockDelta(ResponseModel):
    type: Literal["content_block_delta"] = "content_block_delta"
    index: int
    delta: TextDelta | ThinkingDelta | InputJSONDelta


class ContentBlockStop(ResponseModel):
    type: Literal["content_block_stop"] = "content_block_stop"
    index: int


class MessageDeltaBody(ResponseModel):
    stop_reason: StopReason | None
    stop_sequence: str | None = None


class DeltaUsage(ResponseModel):
    """The final counts, cumulative (the anthropic SDK overwrites message_start's with them)."""

    output_tokens: int
    input_tokens: int | None = Absent
    cache_creation_input_tokens: int | None = Absent
    cache_read_input_tokens: int | None = Absent


class MessageDelta(ResponseModel):
    type: Literal["message_delta"] = "message_delta"
    delta: MessageDeltaBody
    usage: DeltaUsage


class MessageStop(ResponseModel):
    type: Literal["message_stop"] = "message_stop"


StreamEvent = (
    MessageStart | Ping | ContentBlockStart | ContentBlockDelta | ContentBlockStop | MessageDelta | MessageStop
)


# Errors: ``{"type": "error", "error": {"type", "message"}}``.

AnthropicErrorType = Literal[
    "invalid_request_error",
    "authentication_error",
    "permission_error",
    "not_found_error",
    "request_too_large",
    "rate_limit_error",
    "api_error",
    "overloaded_error",
]


class AnthropicErrorDetail(ResponseModel):
    type: AnthropicErrorType
    message: str


class AnthropicError(ResponseModel):
    type: Literal["error"] = "error"
    error: AnthropicErrorDetail


# ise's refusals for a server too busy (its admission queue, an SLO it would miss, a drain): Anthropic
# calls that being overloaded, 529, which its SDKs retry.
_OVERLOADED = frozenset({"server_overloaded", "slo_exceeded", "server_shutting_down"})
_TYPES: dict[int, AnthropicErrorType] = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}
OVERLOADED_STATUS = 529


def anthropic_error(status: int, code: str | None, message: str) -> tuple[int, AnthropicError]:
    """The status and body Anthropic's API would answer for one of ise's errors (status and code).

    Overload (429 ``server_overloaded`` and ``slo_exceeded``, 503 ``server_shutting_down``) is a
    529; a dead engine (503) a 500 ``api_error``, still marked not worth a retry by its headers.
    """
    if code in _OVERLOADED:
        status = OVERLOADED_STATUS
    elif status >= 500:
        status = 500
    kind = _TYPES.get(status, "invalid_request_error" if status < 500 else "api_error")
    return status, AnthropicError(error=AnthropicErrorDetail(type=kind, message=message))
