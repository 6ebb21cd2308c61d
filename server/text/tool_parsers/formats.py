"""The call formats ise reads, by vLLM's tool parser names, as ``Format`` data for ``FormatStream``.

A call object holds ``"name"`` and ``"arguments"`` (or ``"parameters"``: both are accepted
everywhere), and nothing else, in either order. Name first, the arguments stream as they come;
arguments first, the whole call is held until its name follows, and is content if none does.
Arguments must be a JSON object.

- ``hermes``: ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``, any number, with
  content around them; a call the output ends in before ``</tool_call>`` still counts.
- ``llama3_json``: the output opens with ``{"name": ..., "parameters": {...}}``, optionally after
  ``<|python_tag|>`` and with ``"type": "function"`` first; several are separated by ``;``.
  Any other output is content.
- ``mistral``: ``[TOOL_CALLS][{"name": ..., "arguments": {...}}, ...]`` or the newer
  ``[TOOL_CALLS]name[ARGS]{...}``, after content.
- ``ise_json``: the whole output is ``{"tool_calls": [{"name": ..., "arguments": {...}}, ...]}`` or
  ``{"response": "..."}``, whose string is decoded and sent as content as it arrives. Any other
  output is content (see ``server.text.tool_parsers.prompt`` for the instructions that ask for it).
- ``json``: forced calls (``tool_choice`` ``"required"`` or a named function, whose output a
  grammar constrains as vLLM does): ``[{"name": ..., "parameters": {...}}, ...]``, or for a named
  function the arguments object alone.
"""

from __future__ import annotations

from server.text.tool_parsers.base import ParsedMessage, ToolParser, ToolStream
from server.text.tool_parsers.format_stream import Format, FormatStream
from server.text.tool_parsers.markup import BareName, Kind, Name, Pattern, Token, lit

_ARGUMENTS_KEY = lit('"arguments"', '"parameters"')
_NAME_FIRST = (lit('"name"'), lit(":"), Name(), lit(","), _ARGUMENTS_KEY, lit(":"), lit("{"))
_TYPE_FUNCTION = (lit('"type"'), lit(":"), lit('"function"'), lit(","))


def _call(prefix: tuple[Token, ...], then: str) -> tuple[Pattern, ...]:
    """A call object opening after ``prefix``, its name first or its arguments first; ``then`` is
    the state after its arguments (and its name, when that comes after them)."""
    return (
        Pattern((*prefix, lit("{"), *_NAME_FIRST), Kind.CALL, then),
        Pattern((*prefix, lit("{"), _ARGUMENTS_KEY, lit(":"), lit("{")), Kind.ARGUMENTS_FIRST, f"{then}/name"),
    )


def _calls_then(closing: tuple[Token, ...], separator: str, state: str) -> tuple[Pattern, ...]:
    """After a call object's arguments: another call after ``separator``, or ``closing``."""
    return (*_call((lit("}"), lit(separator)), state), Pattern((lit("}"), *closing), Kind.END))


def _format(tag: str | None, **states: tuple[Pattern, ...]) -> Format:
    """A format with its ``states``, and for each call that can have its name after its arguments
    the state that reads that name."""
    named = {
        pattern.then: (Pattern((lit(","), lit('"name"'), lit(":"), Name()), Kind.NAME, pattern.then[: -len("/name")]),)
        for patterns in states.values()
        for pattern in patterns
        if pattern.kind == Kind.ARGUMENTS_FIRST
    }
    return Format(tag=tag, states={**states, **named})


HERMES = _format(
    "<tool_call>",
    start=_call((lit("<tool_call>"),), "close"),
    close=(Pattern((lit("}"), lit("</tool_call>")), Kind.END), Pattern((lit("}"),), Kind.END)),
)

LLAMA3_JSON = _format(
    None,
    start=(
        *_call((), "next"),
        *_call((lit("<|python_tag|>"),), "next"),
        Pattern((lit("{"), *_TYPE_FUNCTION, *_NAME_FIRST), Kind.CALL, "next"),
        Pattern((lit("<|python_tag|>"), lit("{"), *_TYPE_FUNCTION, *_NAME_FIRST), Kind.CALL, "next"),
    ),
    next=_calls_then((), ";", "next"),
)

MISTRAL = _format(
    "[TOOL_CALLS]",
    start=(
        *_call((lit("[TOOL_CALLS]"), lit("[")), "array"),
        Pattern((lit("[TOOL_CALLS]"), BareName(), lit("[ARGS]"), lit("{")), Kind.CALL, "end"),
    ),
    array=_calls_then((lit("]"),), ",", "array"),
    end=(Pattern((), Kind.END),),
)

ISE_JSON = _format(
    None,
    start=(
        *_call((lit("{"), lit('"tool_calls"'), lit(":"), lit("[")), "next"),
        Pattern((lit("{"), lit('"response"'), lit(":"), lit('"')), Kind.RESPONSE, "close"),
    ),
    next=_calls_then((lit("]"), lit("}")), ",", "next"),
    close=(Pattern((lit("}"),), Kind.END),),
)

FORCED_REQUIRED = _format(None, start=_call((lit("["),), "next"), next=_calls_then((lit("]"),), ",", "next"))

FORCED_NAMED = _format(None, start=(Pattern((lit("{"),), Kind.CALL, "end"),), end=(Pattern((), Kind.END),))


class HermesToolParser(ToolParser):
    """``hermes``: Qwen's and NousResearch's ``<tool_call>`` blocks."""

    def stream(self) -> ToolStream:
        return FormatStream(HERMES)


class Llama3JsonToolParser(ToolParser):
    """``llama3_json``: Llama 3.1-3.3's JSON calls."""

    def stream(self) -> ToolStream:
        return FormatStream(LLAMA3_JSON)


class MistralToolParser(ToolParser):
    """``mistral``: calls after ``[TOOL_CALLS]``."""

    def stream(self) -> ToolStream:
        return FormatStream(MISTRAL)


class IseJsonToolParser(ToolParser):
    """``ise_json``: ise's own format, for chat templates that know nothing of tools."""

    def stream(self) -> ToolStream:
        return FormatStream(ISE_JSON)


class ForcedJsonToolParser(ToolParser):
    """``json``: the output of a grammar forcing calls; ``named`` is the function ``tool_choice``
    names, or ``None`` for ``"required"``."""

    def __init__(self, named: str | None = None) -> None:
        self._named = named

    def stream(self) -> ToolStream:
        if self._named is None:
            return FormatStream(FORCED_REQUIRED)
        return FormatStream(FORCED_NAMED, named=self._named)


def parse_forced(text: str, named: str | None) -> ParsedMessage:
    """Calls from a forced output: a ``[{"name", "parameters"}, ...]`` array when ``named`` is
    ``None``, else the arguments object of a call to ``named``."""
    return ForcedJsonToolParser(named).parse(text)
