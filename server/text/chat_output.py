"""A chat choice's text, split into what the API reports: reasoning, content and tool calls.

Model text goes through the reasoning parser first (the thinking is never content) and the
tool-call parser second (calls are lifted out of the content). The streamed path feeds each text
delta through both parsers' streaming states; the whole-response path parses the whole text. The
parsers are proven to agree on every split (tests/fast/test_tool_parsers.py,
test_reasoning_parser.py), so a streamed answer concatenates to the non-streamed one.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from server.text.reasoning import ReasoningParser
from server.text.tool_parsers.base import DeltaMessage, ToolCall, ToolCallDelta, ToolParser


@dataclass(frozen=True)
class ChatPiece:
    """What one text delta adds to a streamed choice."""

    content: str = ""
    reasoning: str = ""
    tool_calls: tuple[ToolCallDelta, ...] = ()
    # Whether the text pushed was the model's thinking (its tokens count as reasoning tokens).
    in_reasoning: bool = False

    def __bool__(self) -> bool:
        return bool(self.content or self.reasoning or self.tool_calls)


@dataclass(frozen=True)
class ChatMessageParts:
    """A whole choice's message: ``None`` where the model wrote nothing of that kind."""

    content: str | None
    reasoning: str | None = None
    tool_calls: list[ToolCall] = field(default_factory=list)


@dataclass(frozen=True)
class ChatOutput:
    """How one request's choices are split: which parsers apply (None: that kind is not split out)."""

    reasoning: ReasoningParser | None = None
    tools: ToolParser | None = None
    # tool_choice required or a named function: the whole answer is calls, so no text of it is
    # content (a reply cut short by max_tokens leaves call syntax, never words for the user).
    calls_only: bool = False

    def whole(self, text: str) -> ChatMessageParts:
        reasoning, content = self.reasoning.split(text) if self.reasoning is not None else (None, text)
        if self.tools is None or content is None:
            return ChatMessageParts(content, reasoning)
        parsed = self.tools.parse(content)
        return ChatMessageParts(None if self.calls_only else parsed.content, reasoning, parsed.tool_calls)

    def stream(self) -> ChatStream:
        return ChatStream(self)


class ChatStream:
    """One streamed choice's parser states."""

    def __init__(self, output: ChatOutput) -> None:
        self._calls_only = output.calls_only
        self._reasoning = output.reasoning.stream() if output.reasoning is not None else None
        self._tools = output.tools.stream() if output.tools is not None else None

    @property
    def called(self) -> bool:
        """A tool call was streamed: the choice finishes with ``tool_calls``."""
        return self._tools is not None and self._tools.called

    def push(self, text: str) -> ChatPiece:
        in_reasoning = self._reasoning is not None and self._reasoning.in_reasoning
        reasoning, content = self._reasoning.push(text) if self._reasoning is not None else ("", text)
        return self._with_tools(reasoning, content, self._tools.push(content) if self._tools else None, in_reasoning)

    def finish(self) -> ChatPiece:
        reasoning, content = self._reasoning.finish() if self._reasoning is not None else ("", "")
        if self._tools is None:
            return ChatPiece(content, reasoning)
        pushed = self._tools.push(content) if content else DeltaMessage()
        flushed = self._tools.finish()
        text = "" if self._calls_only else pushed.content + flushed.content
        return ChatPiece(text, reasoning, (*pushed.tool_calls, *flushed.tool_calls), False)

    def _with_tools(self, reasoning: str, content: str, tools: DeltaMessage | None, in_reasoning: bool) -> ChatPiece:
        if tools is None:
            return ChatPiece(content, reasoning, (), in_reasoning)
        return ChatPiece("" if self._calls_only else tools.content, reasoning, tools.tool_calls, in_reasoning)
