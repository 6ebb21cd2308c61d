"""One streaming machine for every call format; a format is data (``Format``), not code.

The machine moves through five modes:

- content: text for the user, searched for the format's tag (a tag format) — text that could
  still become the tag, and whitespace that could precede it, is held back;
- passthrough: all remaining text is content (formats that must open the output, once the
  output turned out not to, or once their calls ended);
- markup: held text is matched against the patterns of the current state (``markup.py``);
- arguments: a call's arguments object, sent as it arrives up to ``ArgumentsScanner.safe``;
- response: a JSON string whose decoded characters are content (the ``ise_json`` format).

Rules that make a stream equal to the whole output whatever the split:

- A call is committed, and its first fragment sent, once its header is matched up to the
  arguments' ``{``. Markup that does not match before that is content, exactly as written. A
  call whose arguments come before its name is held whole until the name follows them, and is
  content, exactly as written, if it does not.
- Arguments are the model's own text of the arguments object, sliced exactly. If the object
  breaks JSON, the arguments end at the longest prefix that was already sendable, closed by the
  quote and brackets still open, and the text from there on is content again (searched for
  further calls in a tag format). Markup after a call that does not match is content in the
  same way: the machine drops nothing but the markup it matched, and cut calls.
- A cut call is dropped, never content: when the output ends (``max_tokens``, say) on text that
  could still be call syntax (the start of a tag, a call's markup, arguments not yet sendable, a
  response string's escape), that text is dropped. A call already opened keeps the arguments
  sent up to the cut, closed as above so they parse; the choice's ``finish_reason`` says it was
  cut. Content already sent was never call syntax, since such text is held back until decided.
- Whitespace next to matched markup is dropped rather than sent as content.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

from server.text.tool_parsers.base import DeltaMessage, ToolCallDelta, ToolStream, new_call_id
from server.text.tool_parsers.json_scan import JSON_WHITESPACE, ArgumentsScanner, StringDecoder
from server.text.tool_parsers.markup import WAIT, Kind, Pattern, match_markup

Mode = Literal["content", "passthrough", "markup", "arguments", "response"]


@dataclass(frozen=True)
class Format:
    """A call format: ``tag`` marks where calls start inside content (``None``: the output
    itself must start with the markup); ``states`` maps a state name to the patterns tried in
    it, ``"start"`` being the first."""

    tag: str | None
    states: dict[str, tuple[Pattern, ...]] = field(default_factory=dict)


class FormatStream(ToolStream):
    """The streaming state of one output in ``fmt``; ``named`` names calls whose markup has no name."""

    def __init__(self, fmt: Format, named: str | None = None) -> None:
        self._format = fmt
        self._named = named
        self._mode: Mode = "content" if fmt.tag is not None else "markup"
        self._state = "start"
        self._buffer = ""
        self._final = False
        self._after_markup = False
        self._content: list[str] = []
        self._fragments: list[ToolCallDelta] = []
        self._calls = 0
        self._scanner = ArgumentsScanner()
        self._sent = 0
        self._decoder = StringDecoder()
        # A call whose arguments come before its name: its text so far (None when there is none),
        # the state its markup began in, and its arguments once complete.
        self._held: str | None = None
        self._held_since = ""
        self._held_arguments = ""

    @property
    def called(self) -> bool:
        return self._calls > 0

    def push(self, text: str) -> DeltaMessage:
        self._buffer += text
        return self._run()

    def finish(self) -> DeltaMessage:
        self._final = True
        return self._run()

    def _run(self) -> DeltaMessage:
        while self._step():
            pass
        delta = DeltaMessage(content="".join(self._content), tool_calls=tuple(self._fragments))
        self._content, self._fragments = [], []
        return delta

    def _step(self) -> bool:
        """Advance once; False when nothing more can be decided on the text so far."""
        if self._mode in ("content", "passthrough") and self._after_markup:
            self._buffer = self._buffer.lstrip(JSON_WHITESPACE)
            if not self._buffer:
                return False
            self._after_markup = False
        if self._mode == "content":
            return self._content_step()
        if self._mode == "passthrough":
            self._content.append(self._buffer)
            self._buffer = ""
            return False
        if self._mode == "markup":
            return self._markup_step()
        if self._mode == "arguments":
            return self._arguments_step()
        return self._response_step()

    def _content_step(self) -> bool:
        tag, text = self._format.tag, self._buffer
        assert tag is not None
        found = text.find(tag)
        if found >= 0:
            keep = len(text[:found].rstrip(JSON_WHITESPACE))
            self._send_content(keep)
            self._mode, self._state = "markup", "start"
            return True
        partial = next((n for n in range(min(len(tag) - 1, len(text)), 0, -1) if tag.startswith(text[-n:])), 0)
        if self._final and not partial:
            self._send_content(len(text))
            return False
        self._send_content(len(text[: len(text) - partial].rstrip(JSON_WHITESPACE)))
        return self._drop_cut() if self._final else False

    def _send_content(self, length: int) -> None:
        self._content.append(self._buffer[:length])
        self._buffer = self._buffer[length:]

    def _back_to_content(self, text: str, since: str | None = None) -> None:
        """``text``, held as markup or a call, turned out not to be: it is content again.

        ``since`` is the state the held text began in: from ``"start"`` in a tag format it opens
        with the tag, which is sent as content so that searching resumes after it.
        """
        self._buffer = text + self._buffer
        tag = self._format.tag
        if since == "start" and tag is not None:
            self._send_content(self._buffer.index(tag) + len(tag))
        self._mode = "content" if tag is not None else "passthrough"

    def _drop_cut(self) -> bool:
        """The output ended inside call syntax: drop what is held, and stop."""
        self._buffer, self._held, self._mode = "", None, "passthrough"
        return False

    def _markup_step(self) -> bool:
        match = match_markup(self._format.states[self._state], self._buffer)
        if match == WAIT:
            return self._drop_cut() if self._final else False
        if match is None:
            if self._held is not None:
                self._back_to_content(self._held, self._held_since)
                self._held = None
            else:
                self._back_to_content("", self._state)
            return True
        pattern: Pattern = match.pattern
        if pattern.kind == Kind.ARGUMENTS_FIRST:
            self._held = self._buffer[: match.end - 1]  # up to the arguments' "{", which the scanner holds
            self._held_since = self._state
        elif pattern.kind == Kind.CALL:
            self._open_call(match.name or self._named or "", "")
        elif pattern.kind == Kind.NAME:
            self._open_call(match.name or "", self._held_arguments)
            self._held = None
        self._buffer = self._buffer[match.end :]
        self._state = pattern.then
        if pattern.kind in (Kind.CALL, Kind.ARGUMENTS_FIRST):
            self._scanner, self._sent, self._mode = ArgumentsScanner(), 0, "arguments"
        elif pattern.kind == Kind.RESPONSE:
            self._decoder, self._mode = StringDecoder(), "response"
        elif pattern.kind == Kind.END:
            self._back_to_content("")
            self._after_markup = True
        return True

    def _open_call(self, name: str, arguments: str) -> None:
        self._fragments.append(ToolCallDelta(index=self._calls, id=new_call_id(), name=name, arguments=arguments))
        self._calls += 1

    def _arguments_step(self) -> bool:
        scanner = self._scanner
        scanner.feed(self._buffer)
        self._buffer = ""
        if self._final:
            scanner.finish()
        if self._held is not None:
            return self._held_arguments_step()
        self._send_arguments(scanner.text[self._sent : scanner.safe])
        self._sent = scanner.safe
        if scanner.done:
            self._buffer, self._mode = scanner.text[scanner.end :], "markup"
            return True
        if scanner.failed or self._final:
            self._send_arguments(scanner.closer)
            if not scanner.failed:
                return self._drop_cut()
            self._back_to_content(scanner.text[scanner.safe :])
            return True
        return False

    def _held_arguments_step(self) -> bool:
        """Arguments before the name: nothing is sent until the name follows them."""
        assert self._held is not None
        scanner = self._scanner
        if scanner.done:
            self._held_arguments = scanner.text[: scanner.end]
            self._held += self._held_arguments
            self._buffer, self._mode = scanner.text[scanner.end :], "markup"
            return True
        if scanner.failed:
            self._back_to_content(self._held + scanner.text, self._held_since)
            self._held = None
            return True
        return self._drop_cut() if self._final else False

    def _send_arguments(self, text: str) -> None:
        if not text:
            return
        index = self._calls - 1
        last = self._fragments[-1] if self._fragments else None
        if last is not None and last.index == index:
            self._fragments[-1] = replace(last, arguments=last.arguments + text)
        else:
            self._fragments.append(ToolCallDelta(index=index, arguments=text))

    def _response_step(self) -> bool:
        decoder = self._decoder
        self._content.append(decoder.feed(self._buffer, self._final))
        self._buffer = ""
        if decoder.closed:
            self._buffer, self._mode = decoder.text[decoder.end :], "markup"
            return True
        if decoder.failed:
            self._back_to_content(decoder.text[decoder.end :])
            return True
        return self._drop_cut() if decoder.cut else False
