"""A chat choice's pieces (content, reasoning, tool calls, as ``ChatStream`` splits the model's text) as
Responses output items, and the typed events that build them.

One machine builds both answers: a stream sends its events, a whole response runs the same events
and keeps only the items, so a streamed response's final object equals the whole one. Items follow
each other, never interleave: a ``reasoning`` item for the thinking, a ``message`` for the text, a
``function_call`` per call (a ``custom_tool_call`` for a free-text tool's); an item closes (its
``.done`` events) when the next one opens or the choice finishes (``incomplete`` when it ran out of
``max_output_tokens``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from adapters.engine import TokenLogprobs
from server.endpoints.generation import ChoiceEvent
from server.endpoints.responses.custom_input import final_input, input_so_far
from server.endpoints.responses.translate import ToolOrigins, item_id
from server.protocol.chat import TokenLogprob
from server.protocol.common import ChoiceFinishReason
from server.protocol.responses_output import (
    ArgumentsDeltaEvent,
    ArgumentsDoneEvent,
    ContentPartEvent,
    CustomInputDeltaEvent,
    CustomInputDoneEvent,
    CustomToolCallItemOut,
    FunctionCallItemOut,
    ItemStatus,
    MessageOut,
    OutputItem,
    OutputItemEvent,
    OutputText,
    ReasoningDeltaEvent,
    ReasoningDoneEvent,
    ReasoningOut,
    ReasoningText,
    ResponseEvent,
    TextDeltaEvent,
    TextDoneEvent,
)
from server.text.chat_output import ChatOutput, ChatPiece
from server.text.tool_parsers.base import ToolCallDelta

Kind = Literal["message", "reasoning", "function_call", "custom_tool_call"]
_PREFIX = {"message": "msg", "reasoning": "rs", "function_call": "fc", "custom_tool_call": "ctc"}


@dataclass
class _Item:
    """The item being written: its place in ``output``, and its text (or a call's arguments) so far."""

    kind: Kind
    index: int
    id: str
    texts: list[str] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)
    call_id: str = ""
    name: str = ""
    shown: str = ""  # a custom call's text sent so far (its whole input once closed)

    @property
    def text(self) -> str:
        return "".join(self.texts)


class OutputItems:
    """One choice's output items, built from its events; ``push`` answers the stream events each adds."""

    def __init__(
        self,
        output: ChatOutput,
        origins: ToolOrigins,
        logprob: Callable[[TokenLogprobs], TokenLogprob] | None,
        sequence: Callable[[], int],
    ) -> None:
        """``logprob``: converts a token's logprobs, when the request asked for them; ``sequence``:
        the next event's sequence number."""
        self._stream = output.stream()
        self._origins = origins
        self._logprob = logprob
        self._seq = sequence
        self.items: list[OutputItem] = []
        self.reasoning_tokens = 0
        self.finish_reason: ChoiceFinishReason | None = None
        self._open: _Item | None = None
        self._calls: dict[int, _Item] = {}
        self._pending: list[TokenLogprob] = []  # logprobs of tokens whose text is not yet sent
        self._count = 0

    def push(self, event: ChoiceEvent) -> list[ResponseEvent]:
        piece = self._stream.push(event.text)
        if piece.in_reasoning:
            self.reasoning_tokens += event.num_tokens
        if self._logprob is not None:
            self._pending += [self._logprob(entry) for entry in event.logprobs]
        events = self._piece(piece)
        if event.finish_reason is not None:
            self.finish_reason = event.finish_reason
            events += self._piece(self._stream.finish())
            if self._count == 0:  # an empty answer is an empty message, as OpenAI's
                events += self._start("message")
            events += self._close("incomplete" if event.finish_reason == "length" else "completed")
        return events

    def _piece(self, piece: ChatPiece) -> list[ResponseEvent]:
        events = self._text("reasoning", piece.reasoning) if piece.reasoning else []
        if piece.content:
            events += self._text("message", piece.content)
        for call in piece.tool_calls:
            events += self._call(call)
        return events

    def _text(self, kind: Kind, text: str) -> list[ResponseEvent]:
        events = [] if self._open is not None and self._open.kind == kind else [*self._close(), *self._start(kind)]
        item = self._open
        assert item is not None
        item.texts.append(text)
        seq = self._seq()
        if kind == "reasoning":
            delta = ReasoningDeltaEvent(
                sequence_number=seq, item_id=item.id, output_index=item.index, content_index=0, delta=text
            )
            return [*events, delta]
        logprobs, self._pending = self._pending, []
        item.logprobs += logprobs
        text_delta = TextDeltaEvent(
            sequence_number=seq,
            item_id=item.id,
            output_index=item.index,
            content_index=0,
            delta=text,
            logprobs=logprobs,
        )
        return [*events, text_delta]

    def _call(self, call: ToolCallDelta) -> list[ResponseEvent]:
        events: list[ResponseEvent] = []
        if call.id is not None:  # a call's first fragment names it
            events += self._close()
            kind: Kind = "custom_tool_call" if call.name in self._origins.custom else "function_call"
            opened = self._calls[call.index] = self._open = self._new(kind)
            opened.call_id, opened.name = call.id, call.name or ""
            events.append(self._item_event("response.output_item.added", opened, "in_progress"))
        item = self._calls.get(call.index)
        if item is None or not call.arguments:
            return events
        item.texts.append(call.arguments)
        if item.kind == "custom_tool_call":
            return events + self._custom_delta(item, input_so_far(item.text))
        seq = self._seq()
        events.append(
            ArgumentsDeltaEvent(sequence_number=seq, item_id=item.id, output_index=item.index, delta=call.arguments)
        )
        return events

    def _custom_delta(self, item: _Item, text: str | None) -> list[ResponseEvent]:
        """The part of a custom call's text not yet sent, as a delta (none while it does not grow)."""
        if text is None or len(text) <= len(item.shown) or not text.startswith(item.shown):
            return []
        delta, item.shown = text[len(item.shown) :], text
        seq = self._seq()
        return [CustomInputDeltaEvent(sequence_number=seq, item_id=item.id, output_index=item.index, delta=delta)]

    def _new(self, kind: Kind) -> _Item:
        item = _Item(kind, self._count, item_id(_PREFIX[kind]))
        self._count += 1
        return item

    def _start(self, kind: Kind) -> list[ResponseEvent]:
        item = self._open = self._new(kind)
        added = self._item_event("response.output_item.added", item, "in_progress")
        return [added, self._part_event("response.content_part.added", item)]

    def _close(self, status: ItemStatus = "completed") -> list[ResponseEvent]:
        """The open item's closing events, in order: its text's or arguments' done, its part's, its own."""
        item, self._open = self._open, None
        if item is None:
            return []
        events: list[ResponseEvent] = []
        if item.kind == "custom_tool_call":
            text = final_input(item.text)
            events += self._custom_delta(item, text)
            item.shown = text
            seq = self._seq()
            text_done = CustomInputDoneEvent(sequence_number=seq, item_id=item.id, output_index=item.index, input=text)
            events.append(text_done)
        elif item.kind == "function_call":
            seq = self._seq()
            events.append(
                ArgumentsDoneEvent(
                    sequence_number=seq, item_id=item.id, output_index=item.index, name=item.name, arguments=item.text
                )
            )
        else:
            if item.kind == "message":
                item.logprobs += self._pending
                self._pending = []
                seq = self._seq()
                events.append(
                    TextDoneEvent(
                        sequence_number=seq,
                        item_id=item.id,
                        output_index=item.index,
                        content_index=0,
                        text=item.text,
                        logprobs=item.logprobs,
                    )
                )
            else:
                seq = self._seq()
                events.append(
                    ReasoningDoneEvent(
                        sequence_number=seq, item_id=item.id, output_index=item.index, content_index=0, text=item.text
                    )
                )
            events.append(self._part_event("response.content_part.done", item))
        done = self._item_event("response.output_item.done", item, status)
        self.items.append(done.item)
        return [*events, done]

    def _part_event(
        self, kind: Literal["response.content_part.added", "response.content_part.done"], item: _Item
    ) -> ContentPartEvent:
        seq = self._seq()
        return ContentPartEvent(
            type=kind,
            sequence_number=seq,
            item_id=item.id,
            output_index=item.index,
            content_index=0,
            part=self._part(item),
        )

    def _part(self, item: _Item) -> OutputText | ReasoningText:
        return ReasoningText(text=item.text) if item.kind == "reasoning" else self._output_text(item)

    def _output_text(self, item: _Item) -> OutputText:
        return OutputText(text=item.text, logprobs=list(item.logprobs) if self._logprob is not None else None)

    def _item_event(
        self, kind: Literal["response.output_item.added", "response.output_item.done"], item: _Item, status: ItemStatus
    ) -> OutputItemEvent:
        seq = self._seq()
        return OutputItemEvent(type=kind, sequence_number=seq, output_index=item.index, item=self._output(item, status))

    def _output(self, item: _Item, status: ItemStatus) -> OutputItem:
        namespace = self._origins.namespaces.get(item.name)
        if item.kind == "custom_tool_call":
            return CustomToolCallItemOut(
                id=item.id, call_id=item.call_id, name=item.name, input=item.shown, namespace=namespace
            )
        if item.kind == "function_call":
            return FunctionCallItemOut(
                id=item.id,
                call_id=item.call_id,
                name=item.name,
                arguments=item.text,
                status=status,
                namespace=namespace,
            )
        if item.kind == "reasoning":
            parts = [ReasoningText(text=item.text)] if status != "in_progress" else []
            return ReasoningOut(id=item.id, content=parts, status=status)
        content = [self._output_text(item)] if status != "in_progress" else []
        return MessageOut(id=item.id, status=status, content=content)
