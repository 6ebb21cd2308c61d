"""The thinking part of a reasoning model's output, split from the answer, whole or streamed.

vLLM's ``deepseek_r1`` semantics: the thinking runs from the start of the output, or from a
start tag the output opens with (after optional whitespace), to the end tag; the text after the
end tag is content. A parser made ``starts_in_reasoning`` (the chat template already opened the
thinking) treats the output as thinking from its first character, an opening start tag being
dropped. If no end tag comes, the whole output is reasoning once the thinking started, and
content when it never did. Tags appear in neither part, and a tag split across pieces is held
back until it is whole, so the thinking never leaks into content.

``ReasoningParser.split`` is one ``push`` of the whole text and ``finish``: the same machine as
the stream, whose answers do not depend on how the text is split.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Phase = Literal["opening", "reasoning", "content"]


@dataclass(frozen=True)
class ReasoningParser:
    """The tags of one model family, and whether the thinking is already open when output starts."""

    start: str = "<think>"
    end: str = "</think>"
    starts_in_reasoning: bool = False

    def stream(self) -> ReasoningStream:
        """A fresh streaming state for one output."""
        return ReasoningStream(self)

    def split(self, text: str) -> tuple[str | None, str | None]:
        """``(reasoning, content)`` of a whole output, each ``None`` when empty."""
        stream = self.stream()
        first, last = stream.push(text), stream.finish()
        reasoning, content = first[0] + last[0], first[1] + last[1]
        return reasoning or None, content or None


class ReasoningStream:
    """Splits one output as it arrives; ``in_reasoning`` is whether the text so far ends inside the thinking."""

    def __init__(self, parser: ReasoningParser) -> None:
        self._parser = parser
        self._phase: Phase = "opening"
        self._buffer = ""
        self._final = False

    @property
    def in_reasoning(self) -> bool:
        if self._phase == "opening":
            return self._parser.starts_in_reasoning
        return self._phase == "reasoning"

    def push(self, text: str) -> tuple[str, str]:
        """Add the next piece of output; return the ``(reasoning, content)`` text that is safe to send."""
        self._buffer += text
        return self._run()

    def finish(self) -> tuple[str, str]:
        """The output ended: return ``(reasoning, content)`` held back for a tag that never completed."""
        self._final = True
        return self._run()

    def _run(self) -> tuple[str, str]:
        reasoning = ""
        if self._phase == "opening":
            self._open()
        if self._phase == "reasoning":
            reasoning = self._reason()
        content = ""
        if self._phase == "content":
            content, self._buffer = self._buffer, ""
        return reasoning, content

    def _open(self) -> None:
        """Decide whether the output opens with the start tag, waiting while it still could."""
        start = self._parser.start
        rest = self._buffer.lstrip()
        if rest.startswith(start):
            self._buffer, self._phase = rest[len(start) :], "reasoning"
        elif start.startswith(rest) and not self._final:
            return
        else:
            self._phase = "reasoning" if self._parser.starts_in_reasoning else "content"

    def _reason(self) -> str:
        """The thinking up to the end tag (or up to a possible start of it), moving past the tag."""
        end, text = self._parser.end, self._buffer
        found = text.find(end)
        if found >= 0:
            self._buffer, self._phase = text[found + len(end) :], "content"
            return text[:found]
        if self._final:
            self._buffer = ""
            return text
        held = next((n for n in range(min(len(end) - 1, len(text)), 0, -1) if end.startswith(text[-n:])), 0)
        self._buffer = text[len(text) - held :]
        return text[: len(text) - held]


# The parsers --reasoning-parser names (vLLM's names): the one list of them.
REASONING_PARSERS: dict[str, ReasoningParser] = {
    "deepseek_r1": ReasoningParser(starts_in_reasoning=True),
    "qwen3": ReasoningParser(),
    "think": ReasoningParser(),
}
