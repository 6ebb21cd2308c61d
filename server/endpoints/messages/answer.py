"""Anthropic's Messages answer, whole and streamed, from the chat pipeline's events.

The model's text is split by chat's own parsers (``ChatChoices``: thinking, text, tool calls);
here each part becomes a content block. A stream opens with ``message_start`` and a ``ping``
before the first token, sends each block as ``content_block_start``, its deltas
(``thinking_delta``, ``text_delta``, ``input_json_delta``) and ``content_block_stop``, and closes
with ``message_delta`` (stop reason, usage) and ``message_stop``; a failure after the stream began
is an ``error`` event in Anthropic's error shape.
"""

from __future__ import annotations

import json
import uuid
from typing import Literal

from pydantic import BaseModel
from sse_starlette import ServerSentEvent

from server.endpoints.chat_choices import ChatChoices
from server.endpoints.generation import ChoiceEvent
from server.endpoints.serving import Collected, Frame, typed_event
from server.protocol.common import ChoiceFinishReason, Usage
from server.protocol.errors import APIError
from server.protocol.messages_response import (
    Content,
    ContentBlockDelta,
    ContentBlockStart,
    ContentBlockStop,
    DeltaUsage,
    InputJSONDelta,
    Message,
    MessageDelta,
    MessageDeltaBody,
    MessageStart,
    MessageStop,
    MessageUsage,
    Ping,
    StopReason,
    TextContent,
    TextDelta,
    ThinkingContent,
    ThinkingDelta,
    ToolUseContent,
    anthropic_error,
)
from server.text.chat_output import ChatOutput
from server.text.tool_parsers.base import ToolCallDelta

Kind = Literal["text", "thinking", "tool_use"]


def tool_use_id(call_id: str) -> str:
    """Anthropic's ``toolu_`` ids for the chat parsers' ``call_`` ones."""
    return "toolu_" + call_id.removeprefix("call_")


def stop_reason(finish: ChoiceFinishReason, stop_string: str | None) -> StopReason:
    if finish == "length":
        return "max_tokens"
    if finish == "tool_calls":
        return "tool_use"
    return "stop_sequence" if stop_string is not None else "end_turn"


def message_usage(usage: Usage) -> MessageUsage:
    """Anthropic's split of the prompt: what the prefix cache served is ``cache_read_input_tokens``."""
    cached = usage.prompt_tokens_details.cached_tokens if usage.prompt_tokens_details is not None else 0
    return MessageUsage(
        input_tokens=usage.prompt_tokens - cached, output_tokens=usage.completion_tokens, cache_read_input_tokens=cached
    )


class MessagesFormat:
    """The serving loop's ``ResponseFormat`` for ``/v1/messages`` (one choice: Anthropic has no ``n``)."""

    def __init__(self, model: str, output: ChatOutput, prompt_tokens: int) -> None:
        self.id = f"msg_{uuid.uuid4().hex}"
        self.model = model
        self.choices = ChatChoices(output)
        self.prompt_tokens = prompt_tokens
        self._open: tuple[Kind, int] | None = None  # the block being streamed: its kind and index
        self._blocks = 0
        self._call_blocks: dict[int, int] = {}  # a tool call's index -> its block's index
        self._stop: tuple[StopReason, str | None] | None = None  # a stream's stop reason and sequence
        self._stop_string: str | None = None  # the stop string that ended a whole answer

    # Streamed.

    def stream_start(self) -> list[Frame]:
        usage = MessageUsage(input_tokens=self.prompt_tokens, output_tokens=0)
        start = Message(id=self.id, model=self.model, content=[], stop_reason=None, usage=usage)
        return [typed_event(MessageStart(message=start)), self.keepalive()]

    def keepalive(self) -> ServerSentEvent:
        return typed_event(Ping())

    def opening(self, index: int) -> BaseModel | None:
        self.choices.open(index)
        return None

    def chunk(self, event: ChoiceEvent) -> list[BaseModel]:
        piece = self.choices.push(event)
        events: list[BaseModel] = []
        if piece.reasoning:
            events += self._delta("thinking", ThinkingDelta(thinking=piece.reasoning))
        if piece.content:
            events += self._delta("text", TextDelta(text=piece.content))
        for call in piece.tool_calls:
            events += self._tool_call(call)
        reason = self.choices.finish_reason(event)
        if reason is not None:
            events += self._close()
            self._stop = (stop_reason(reason, event.stop_string), event.stop_string)
        return events

    def _delta(self, kind: Kind, delta: TextDelta | ThinkingDelta) -> list[BaseModel]:
        events = []
        if self._open is None or self._open[0] != kind:
            events += self._close()
            block: Content = TextContent(text="") if kind == "text" else ThinkingContent(thinking="")
            events.append(self._start(kind, block))
        assert self._open is not None
        return [*events, ContentBlockDelta(index=self._open[1], delta=delta)]

    def _tool_call(self, call: ToolCallDelta) -> list[BaseModel]:
        events: list[BaseModel] = []
        if call.id is not None:
            events += self._close()
            events.append(
                self._start("tool_use", ToolUseContent(id=tool_use_id(call.id), name=call.name or "", input={}))
            )
            assert self._open is not None
            self._call_blocks[call.index] = self._open[1]
        if call.arguments and call.index in self._call_blocks:
            delta = InputJSONDelta(partial_json=call.arguments)
            events.append(ContentBlockDelta(index=self._call_blocks[call.index], delta=delta))
        return events

    def _start(self, kind: Kind, block: Content) -> BaseModel:
        self._open = (kind, self._blocks)
        self._blocks += 1
        return ContentBlockStart(index=self._open[1], content_block=block)

    def _close(self) -> list[BaseModel]:
        if self._open is None:
            return []
        index, self._open = self._open[1], None
        return [ContentBlockStop(index=index)]

    def frame(self, event: BaseModel, with_usage: bool) -> Frame:
        return typed_event(event)

    def stream_end(self, usage: Usage, with_usage: bool) -> list[Frame]:
        reason, sequence = self._stop or ("end_turn", None)
        counts = message_usage(usage)
        delta = MessageDelta(
            delta=MessageDeltaBody(stop_reason=reason, stop_sequence=sequence),
            usage=DeltaUsage(
                output_tokens=counts.output_tokens,
                input_tokens=counts.input_tokens,
                cache_creation_input_tokens=counts.cache_creation_input_tokens,
                cache_read_input_tokens=counts.cache_read_input_tokens,
            ),
        )
        return [typed_event(delta), typed_event(MessageStop())]

    def stream_error(self, error: APIError) -> list[Frame]:
        _, body = anthropic_error(error.status, error.code, error.message)
        return [typed_event(body)]

    # Whole.

    def observe(self, event: ChoiceEvent) -> None:
        self.choices.observe(event)
        if event.finish_reason is not None:
            self._stop_string = event.stop_string

    def whole(self, choices: list[Collected], usage: Usage) -> BaseModel:
        [collected] = choices
        parts = self.choices.output.whole(collected.text)
        content: list[Content] = []
        if parts.reasoning:
            content.append(ThinkingContent(thinking=parts.reasoning))
        if parts.content:
            content.append(TextContent(text=parts.content))
        for call in parts.tool_calls:
            content.append(ToolUseContent(id=tool_use_id(call.id), name=call.name, input=_arguments(call.arguments)))
        finish = "tool_calls" if parts.tool_calls and collected.finish_reason == "stop" else collected.finish_reason
        sequence = self._stop_string
        return Message(
            id=self.id,
            model=self.model,
            content=content,
            stop_reason=stop_reason(finish, sequence),
            stop_sequence=sequence if finish == "stop" else None,
            usage=message_usage(usage),
        )

    def reasoning_tokens(self) -> int | None:
        return self.choices.reasoning_tokens()


def _arguments(text: str) -> dict[str, object]:
    """A call's arguments as the object Anthropic's ``input`` is (the parsers close what they cut short)."""
    try:
        value = json.loads(text)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}
