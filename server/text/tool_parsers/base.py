"""What every tool-call parser returns, and the two shapes it is used in: whole output or a stream.

``ToolParser.parse`` is defined as one ``push`` of the whole text followed by ``finish``, merged
with ``merge_deltas``: there is one machine per format, so the streamed and the whole answer
cannot drift apart. What remains to hold is that the machine's output does not depend on how the
text is split into pushes; the streams guarantee it by deciding only on text they have seen,
and waiting (holding text back) whenever a decision needs text that has not arrived yet.
"""

from __future__ import annotations

import secrets
import string
from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass

_ID_ALPHABET = string.ascii_letters + string.digits


def new_call_id() -> str:
    """An OpenAI-style tool call id: ``"call_"`` and 24 random letters and digits."""
    return "call_" + "".join(secrets.choice(_ID_ALPHABET) for _ in range(24))


@dataclass(frozen=True)
class ToolCall:
    """One complete call; ``arguments`` is the JSON text of the arguments object."""

    id: str
    name: str
    arguments: str


@dataclass(frozen=True)
class ParsedMessage:
    """A whole output split into the text for the user (``None`` when there is none) and its calls."""

    content: str | None
    tool_calls: list[ToolCall]


@dataclass(frozen=True)
class ToolCallDelta:
    """One streamed fragment of call ``index``, as OpenAI streams them.

    The first fragment of a call carries its ``id`` and ``name`` (its ``arguments`` may be
    ``""``); later ones carry only the next piece of ``arguments``.
    """

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""


@dataclass(frozen=True)
class DeltaMessage:
    """What one ``push`` or ``finish`` adds: content text and call fragments, either possibly empty."""

    content: str = ""
    tool_calls: tuple[ToolCallDelta, ...] = ()


class ToolStream(ABC):
    """The streaming state of one output: text in, safe-to-send deltas out."""

    @abstractmethod
    def push(self, text: str) -> DeltaMessage:
        """Add the next piece of output (split anywhere); return what can be sent now."""

    @abstractmethod
    def finish(self) -> DeltaMessage:
        """The output ended: return what was held back waiting for more text."""

    @property
    @abstractmethod
    def called(self) -> bool:
        """Whether at least one call was emitted, so the choice ends with ``"tool_calls"``."""


class ToolParser(ABC):
    """One output format of tool calls."""

    @abstractmethod
    def stream(self) -> ToolStream:
        """A fresh streaming state for one output."""

    def parse(self, text: str) -> ParsedMessage:
        """Split a whole output into content and complete calls; never raises on malformed calls."""
        stream = self.stream()
        return merge_deltas([stream.push(text), stream.finish()])


def merge_deltas(deltas: Iterable[DeltaMessage]) -> ParsedMessage:
    """Join streamed deltas into the whole message they add up to.

    Content is concatenated (``None`` when empty); fragments are grouped by index, the id and
    name taken from a call's first fragment and the arguments concatenated in order.
    """
    content: list[str] = []
    calls: dict[int, tuple[str, str, list[str]]] = {}
    for delta in deltas:
        content.append(delta.content)
        for fragment in delta.tool_calls:
            if fragment.index not in calls:
                calls[fragment.index] = (fragment.id or "", fragment.name or "", [])
            calls[fragment.index][2].append(fragment.arguments)
    text = "".join(content)
    return ParsedMessage(
        content=text or None,
        tool_calls=[ToolCall(id=i, name=n, arguments="".join(a)) for _, (i, n, a) in sorted(calls.items())],
    )
