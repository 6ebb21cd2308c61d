"""The markup around calls, matched on held-back text: tags, call headers up to the arguments'
``{``, and what closes a call.

Markup is a sequence of tokens with JSON whitespace allowed before each one. A match is decided
only when no pattern can still grow with more text, and the longest match wins, so the answer is
the same however the text arrived; text that ends while a pattern could still grow is cut markup.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Literal

from server.text.tool_parsers.json_scan import JSON_WHITESPACE

_BARE_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.")


@dataclass(frozen=True)
class Lit:
    """Exactly one of ``options``."""

    options: tuple[str, ...]


@dataclass(frozen=True)
class Name:
    """A JSON string without escapes or control characters, not empty: a function's name."""


@dataclass(frozen=True)
class BareName:
    """A function name written without quotes (letters, digits, ``_-.``), as Mistral's newer format does."""


Token = Lit | Name | BareName


class Kind(enum.Enum):
    """What follows a pattern's match."""

    CALL = enum.auto()  # the match ends with the arguments object's "{"
    ARGUMENTS_FIRST = enum.auto()  # the same with no name yet: a NAME match after the arguments gives it
    NAME = enum.auto()  # the name of an ARGUMENTS_FIRST call, after its arguments
    RESPONSE = enum.auto()  # the match ends with the opening quote of a JSON string for the user
    END = enum.auto()  # the structure is complete


@dataclass(frozen=True)
class Pattern:
    """Markup of one ``kind``; ``then`` names the patterns tried after the call or string it opens."""

    tokens: tuple[Token, ...]
    kind: Kind
    then: str = ""


@dataclass(frozen=True)
class Match:
    """``pattern`` matched ``text[:end]``; ``name`` is the function name it holds, if any."""

    end: int
    pattern: Pattern
    name: str | None


WAIT: Literal["wait"] = "wait"


def lit(*options: str) -> Lit:
    """A literal token: one of ``options``."""
    return Lit(options)


def match_markup(patterns: tuple[Pattern, ...], text: str) -> Match | Literal["wait"] | None:
    """The longest of ``patterns`` matching the start of ``text``.

    Returns ``WAIT`` while some pattern could still match given more text, and ``None`` when
    none matches.
    """
    best: Match | None = None
    for pattern in patterns:
        result = _match(pattern, text)
        if result == WAIT:
            return WAIT
        if result is not None and (best is None or result.end > best.end):
            best = result
    return best


def _match(pattern: Pattern, text: str) -> Match | Literal["wait"] | None:
    position, name = 0, None
    for token in pattern.tokens:
        while position < len(text) and text[position] in JSON_WHITESPACE:
            position += 1
        rest = text[position:]
        if not rest:
            return WAIT
        if isinstance(token, Lit):
            matched = next((option for option in token.options if rest.startswith(option)), None)
            if matched is None:
                partial = any(option.startswith(rest) for option in token.options)
                return WAIT if partial else None
            position += len(matched)
        elif isinstance(token, Name):
            if rest[0] != '"':
                return None
            close = rest.find('"', 1)
            body = rest[1:] if close < 0 else rest[1:close]
            if "\\" in body or any(ord(c) < 0x20 for c in body) or close == 1:
                return None
            if close < 0:
                return WAIT
            name, position = body, position + close + 1
        else:
            length = next((i for i, c in enumerate(rest) if c not in _BARE_NAME_CHARS), len(rest))
            if length == len(rest):
                return WAIT
            if length == 0:
                return None
            name, position = rest[:length], position + length
    return Match(position, pattern, name)
