"""A chat answer's choices as they stream: each one's parsers, its finish, and the tokens spent thinking.

Chat completions and Anthropic's Messages dress the same split text (content, reasoning, tool
calls) in different JSON; both read it from here, so their answers cannot drift apart.
"""

from __future__ import annotations

from server.endpoints.generation import ChoiceEvent
from server.protocol.common import ChoiceFinishReason
from server.text.chat_output import ChatOutput, ChatPiece, ChatStream


class ChatChoices:
    def __init__(self, output: ChatOutput) -> None:
        self.output = output
        self._streams: dict[int, ChatStream] = {}
        self._reasoning_tokens = 0

    def open(self, index: int) -> None:
        self._streams[index] = self.output.stream()

    def push(self, event: ChoiceEvent) -> ChatPiece:
        """What the event adds to its choice; on its last event, with whatever the parsers held back."""
        stream = self._streams.setdefault(event.index, self.output.stream())
        piece = stream.push(event.text)
        if piece.in_reasoning:
            self._reasoning_tokens += event.num_tokens
        if event.finish_reason is None:
            return piece
        last = stream.finish()
        return ChatPiece(
            piece.content + last.content, piece.reasoning + last.reasoning, (*piece.tool_calls, *last.tool_calls)
        )

    def observe(self, event: ChoiceEvent) -> None:
        """See an event of a whole answer: only its reasoning tokens are counted from the stream."""
        if self.output.reasoning is not None:
            self.push(event)

    def finish_reason(self, event: ChoiceEvent) -> ChoiceFinishReason | None:
        """The event's finish reason as chat reports it: a choice that called a tool stopped to call it."""
        stream = self._streams.get(event.index)
        called = stream is not None and stream.called
        return "tool_calls" if called and event.finish_reason == "stop" else event.finish_reason

    def reasoning_tokens(self) -> int | None:
        return self._reasoning_tokens if self.output.reasoning is not None else None
