"""A free-text tool's input, read out of the JSON arguments the model writes for it as they grow.

A custom tool is offered to the model as a function of one string (``translate.py``), so its call
arrives as argument fragments of ``{"input": "..."}``. A stream gives the client the text itself
(``response.custom_tool_call_input.delta``), so each fragment is decoded as far as it is whole: up
to the closing quote, holding back an escape cut in two (``\\``, ``\\u00``, the first half of a
surrogate pair) until its end arrives. The decoded prefix only grows, so the deltas a stream sends
join up to the whole answer's ``input``.
"""

from __future__ import annotations

import json
import re

from server.endpoints.responses.translate import CUSTOM_INPUT

_START = re.compile(r'\s*\{\s*"' + CUSTOM_INPUT + r'"\s*:\s*"')
_CLOSING_QUOTE = re.compile(r'(?<!\\)(?:\\\\)*"')
# An escape cut at the end: a lone backslash, ``\u`` with under 4 digits, or a high surrogate whose
# low half has not come yet. It cuts only where its backslash escapes (an even run before it).
_CUT_ESCAPE = re.compile(r"\\(?:u[dD][89abAB][0-9a-fA-F]{2}|u[0-9a-fA-F]{0,3})?$")
# Models write raw newlines and tabs inside strings; a lenient decoder takes them as they are.
_DECODER = json.JSONDecoder(strict=False)


def input_so_far(arguments: str) -> str | None:
    """The text of the ``input`` string in ``arguments`` as far as it is whole; None where the
    arguments do not open with ``{"input": "`` or the text so far does not decode."""
    start = _START.match(arguments)
    if start is None:
        return None
    body = arguments[start.end() :]
    closing = _CLOSING_QUOTE.search(body)
    if closing is not None:
        body = body[: closing.end() - 1]
    else:  # a high surrogate may precede a cut escape: both wait
        while (cut := _CUT_ESCAPE.search(body)) is not None and _backslashes_before(body, cut.start()) % 2 == 0:
            body = body[: cut.start()]
    try:
        text: str = _DECODER.decode(f'"{body}"')
    except ValueError:
        return None
    return text


def final_input(arguments: str) -> str:
    """The whole call's text: its ``input`` string, read as the stream read it where the arguments
    open with it, else from the parsed arguments, else the arguments as written (free text is what a
    custom tool takes)."""
    text = input_so_far(arguments)
    if text is not None:
        return text
    try:
        parsed = _DECODER.decode(arguments)
    except ValueError:
        return arguments
    value = parsed.get(CUSTOM_INPUT) if isinstance(parsed, dict) else None
    return value if isinstance(value, str) else arguments


def _backslashes_before(text: str, end: int) -> int:
    start = end
    while start > 0 and text[start - 1] == "\\":
        start -= 1
    return end - start
