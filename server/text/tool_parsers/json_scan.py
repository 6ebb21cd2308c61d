"""Incremental JSON, a character at a time: where a streamed arguments object ends, how much of it
can be sent already, and the decoded characters of a streamed string.

Both keep every decision a function of the characters seen so far, and wait rather than guess
when the next characters would change it, so their results do not depend on how text is split.
"""

from __future__ import annotations

import re

JSON_WHITESPACE = " \t\n\r"

_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")
_NUMBER_CHARS = frozenset("0123456789+-.eE")
_LITERALS = ("true", "false", "null")
_PLAIN_RUN = re.compile(r'[^"\\\x00-\x1f]+')
_STRING_RUN = re.compile(r'[^"\\]+')
_HEX = frozenset("0123456789abcdefABCDEF")
_SIMPLE_ESCAPES = {'"': '"', "\\": "\\", "/": "/", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}

# Where ArgumentsScanner is between characters.
_OBJECT_FIRST = 0  # after "{": a key or "}"
_OBJECT_NEXT = 1  # after "," in an object: a key
_COLON = 2  # after a key
_VALUE = 3  # after ":" or "," in an array
_ARRAY_FIRST = 4  # after "[": a value or "]"
_AFTER = 5  # after a value: "," or the container's closer
_STRING = 6  # inside a string (a key or a value)
_ESCAPE = 7  # after a backslash in a string
_HEX_DIGITS = 8  # inside the four hex digits of \uXXXX
_NUMBER_TOKEN = 9
_LITERAL_TOKEN = 10


class ArgumentsScanner:
    """Follows one strict JSON object (RFC 8259) from its opening ``{``, fed in pieces.

    ``text`` is everything fed so far, starting with the ``{``. ``safe`` is the length of the
    longest prefix of ``text`` that may be sent already: it ends right after an opening bracket,
    a complete value, or a character of a string value, so ``text[:safe] + closer`` is always
    valid JSON (keys, commas and unfinished numbers or literals wait for what follows them).
    ``done`` is set when the object closed, ``end`` then being its length in ``text``; ``failed``
    when a character breaks JSON, after which nothing more is read.
    """

    def __init__(self) -> None:
        self.text = "{"
        self.safe = 1
        self.closer = "}"
        self.done = False
        self.failed = False
        self.end = 0
        self._pos = 1
        self._stack = ["}"]
        self._state = _OBJECT_FIRST
        self._in_key = False
        self._hex_left = 0
        self._token_start = 0

    def feed(self, text: str) -> None:
        """Read more of the object's text."""
        self.text += text
        while not (self.done or self.failed) and self._pos < len(self.text):
            self._step()

    def finish(self) -> None:
        """The text ended: a number or literal it ends on is complete where it is whole (``12``,
        ``true``); a part of one (``1e``, ``tr``) was cut, which is not a failure."""
        scalar = self._state in (_NUMBER_TOKEN, _LITERAL_TOKEN) and not (self.done or self.failed)
        if scalar and self._scalar_is_whole(len(self.text)):
            self._end_scalar(len(self.text))

    def _mark(self, position: int) -> None:
        self.safe = position
        self.closer = ('"' if self._state == _STRING else "") + "".join(reversed(self._stack))

    def _step(self) -> None:
        char, state = self.text[self._pos], self._state
        if state == _STRING:
            self._string_char(char)
        elif state == _ESCAPE:
            self._escape_char(char)
        elif state == _HEX_DIGITS:
            self._hex_digit(char)
        elif state == _NUMBER_TOKEN:
            if char in _NUMBER_CHARS:
                self._pos += 1
            else:
                self._end_scalar(self._pos)
        elif state == _LITERAL_TOKEN:
            self._literal_char(char)
        elif char in JSON_WHITESPACE:
            self._pos += 1
        else:
            self._structural_char(char)

    def _string_char(self, char: str) -> None:
        if char == '"':
            self._pos += 1
            self._state = _COLON if self._in_key else _AFTER
        elif char == "\\":
            self._pos += 1
            self._state = _ESCAPE
            return
        else:
            run = _PLAIN_RUN.match(self.text, self._pos)
            if run is None:  # a raw control character, which strict JSON forbids in strings
                self.failed = True
                return
            self._pos = run.end()
        if not self._in_key:
            self._mark(self._pos)

    def _escape_char(self, char: str) -> None:
        if char == "u":
            self._state, self._hex_left = _HEX_DIGITS, 4
            self._pos += 1
        elif char in _SIMPLE_ESCAPES:
            self._state = _STRING
            self._pos += 1
            if not self._in_key:
                self._mark(self._pos)
        else:
            self.failed = True

    def _hex_digit(self, char: str) -> None:
        if char not in _HEX:
            self.failed = True
            return
        self._hex_left -= 1
        self._pos += 1
        if self._hex_left == 0:
            self._state = _STRING
            if not self._in_key:
                self._mark(self._pos)

    def _literal_char(self, char: str) -> None:
        if not char.isalpha():
            self._end_scalar(self._pos)
        elif any(literal.startswith(self.text[self._token_start : self._pos + 1]) for literal in _LITERALS):
            self._pos += 1
        else:
            self.failed = True

    def _structural_char(self, char: str) -> None:
        state = self._state
        if state in (_OBJECT_FIRST, _OBJECT_NEXT) and char == '"':
            self._state, self._in_key = _STRING, True
            self._pos += 1
        elif state == _COLON and char == ":":
            self._state = _VALUE
            self._pos += 1
        elif (state == _OBJECT_FIRST and char == "}") or (state == _ARRAY_FIRST and char == "]"):
            self._close()
        elif state in (_VALUE, _ARRAY_FIRST):
            self._value_start(char)
        elif state == _AFTER and char == ",":
            self._state = _OBJECT_NEXT if self._stack[-1] == "}" else _VALUE
            self._pos += 1
        elif state == _AFTER and char == self._stack[-1]:
            self._close()
        else:
            self.failed = True

    def _value_start(self, char: str) -> None:
        if char in "{[":
            self._stack.append("}" if char == "{" else "]")
            self._state = _OBJECT_FIRST if char == "{" else _ARRAY_FIRST
        elif char == '"':
            self._state, self._in_key = _STRING, False
        elif char == "-" or char in "0123456789":
            self._state, self._token_start = _NUMBER_TOKEN, self._pos
        elif char in "tfn":
            self._state, self._token_start = _LITERAL_TOKEN, self._pos
        else:
            self.failed = True
            return
        self._pos += 1
        if self._state not in (_NUMBER_TOKEN, _LITERAL_TOKEN):
            self._mark(self._pos)

    def _scalar_is_whole(self, end: int) -> bool:
        token = self.text[self._token_start : end]
        return token in _LITERALS if self._state == _LITERAL_TOKEN else _NUMBER.fullmatch(token) is not None

    def _end_scalar(self, end: int) -> None:
        if not self._scalar_is_whole(end):
            self.failed = True
            return
        self._state = _AFTER
        self._mark(end)

    def _close(self) -> None:
        self._stack.pop()
        self._pos += 1
        self._state = _AFTER
        self._mark(self._pos)
        if not self._stack:
            self.done, self.end = True, self._pos


class StringDecoder:
    """Decodes the body of a JSON string fed in pieces, after its opening quote.

    Escapes wait until complete; a ``\\uD800``-``\\uDBFF`` escape waits for the low half of its
    surrogate pair, and a half without its partner decodes to U+FFFD (it could not be sent as
    UTF-8). Raw control characters are let through, as ``json.loads(strict=False)`` does.
    ``closed`` is set at the closing quote, ``end`` then being the length of the body and
    quote in ``text``; ``failed`` at an escape JSON does not have, ``end`` then being where the
    backslash is; ``cut`` when the text ended before the closing quote, ``end`` then being where
    the characters decoded end (an escape the text ends inside is not one of them).
    """

    def __init__(self) -> None:
        self.text = ""
        self.closed = False
        self.failed = False
        self.cut = False
        self.end = 0
        self._pos = 0

    def feed(self, text: str, final: bool = False) -> str:
        """Read more of the string; return the characters decoded so far. ``final``: no more text comes."""
        self.text += text
        out: list[str] = []
        while not (self.closed or self.failed) and self._pos < len(self.text):
            char = self.text[self._pos]
            if char == '"':
                self.closed, self.end = True, self._pos + 1
            elif char != "\\":
                run = _STRING_RUN.match(self.text, self._pos)
                assert run is not None
                out.append(run.group())
                self._pos = run.end()
            else:
                decoded = self._escape()
                if decoded is None:
                    break
                out.append(decoded)
        if final and not (self.closed or self.failed):
            self.cut, self.end = True, self._pos
        return "".join(out)

    def _escape(self) -> str | None:
        """Decode the escape at the cursor and step past it; None when it needs more text (or ``failed``)."""
        rest = self.text[self._pos :]
        if len(rest) < 2:
            return None
        if rest[1] in _SIMPLE_ESCAPES:
            self._pos += 2
            return _SIMPLE_ESCAPES[rest[1]]
        code = _hex_escape(rest[:6])
        if code is None:
            if len(rest) >= 6 or rest[1] != "u" or not all(c in _HEX for c in rest[2:]):
                self.failed, self.end = True, self._pos
            return None
        if 0xD800 <= code <= 0xDBFF:
            if len(rest) < 12 and _could_be_low_half(rest[6:]):
                return None
            low = _hex_escape(rest[6:12])
            if low is not None and 0xDC00 <= low <= 0xDFFF:
                self._pos += 12
                return chr(0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00))
        self._pos += 6
        return "\ufffd" if 0xD800 <= code <= 0xDFFF else chr(code)


def _hex_escape(text: str) -> int | None:
    if len(text) == 6 and text.startswith("\\u") and all(c in _HEX for c in text[2:]):
        return int(text[2:], 16)
    return None


def _could_be_low_half(text: str) -> bool:
    """Whether ``text`` (shorter than six characters) can still grow into ``\\uXXXX``."""
    return "\\u".startswith(text[:2]) and all(c in _HEX for c in text[2:])
