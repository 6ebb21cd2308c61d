"""Bounds on structured-output constraints, checked while a request is parsed, before any compile.

Every constraint (a JSON schema in any of its fields, a tool's parameters, a regex, an EBNF
grammar, a choice) is bounded in size, and a schema in depth, far above what real clients send
and far below what would cost the server real work before its compile budget applies: a schema
is validated, walked and serialized before it is compiled, and a schema nested ~100 levels deep
exhausts the Python stack in jsonschema's validator. What a compile may cost beyond that is
bounded by its time budget (``server/text/grammar_workers.py``): xgrammar's compile time depends on
a constraint's shape far more than on its size.

The numbers (README, "Limits that name the field"):

- a schema's compact JSON: 256 KiB. OpenAI caps a schema at 5,000 properties and 120,000
  characters of names and enum values; the tools of a coding agent (Claude Code sends 24 in a
  76 kB request) fit several times over.
- nesting: 64 levels of objects and arrays. OpenAI allows 10 levels of objects in a schema, each
  two to four JSON levels (``properties``, the property, an ``anyOf`` for a nullable one); the
  validator needs about 8 stack frames per level, so 64 keeps well inside Python's 1,000.
- a regex, and each ``pattern`` in a schema: 16,384 characters. Real ones (dates, identifiers,
  phone numbers) are tens to hundreds; regexes generated from schemas reach a few thousand.
- an EBNF grammar, and a choice's strings together: 65,536 characters (llama.cpp's JSON grammar
  is about 1,000; grammars of whole programming languages about 10,000); 1,024 choices.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator, Field
from pydantic_core import PydanticCustomError

MAX_SCHEMA_CHARS = 256 * 1024
MAX_SCHEMA_DEPTH = 64
MAX_REGEX_CHARS = 16 * 1024
MAX_GRAMMAR_CHARS = 64 * 1024
MAX_CHOICE_CHARS = 64 * 1024
MAX_CHOICE_STRINGS = 1024  # vLLM's choice / guided_choice


def _schema_from_text(value: Any) -> Any:
    """vLLM's schema fields also take the schema as JSON text: parsed here, once it is small enough."""
    if not isinstance(value, str):
        return value
    if len(value) > MAX_SCHEMA_CHARS:
        raise _too_large(len(value))
    try:
        schema = json.loads(value)
    except RecursionError:
        raise _too_deep() from None
    except ValueError as exc:
        raise PydanticCustomError("schema_not_json", "the schema is not JSON ({error})", {"error": str(exc)}) from None
    if not isinstance(schema, dict):
        raise PydanticCustomError("schema_not_object", "a JSON schema must be an object")
    return schema


def _bounded_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """The schema, if within the bounds; its nesting is measured without recursion, before
    anything recursive (serializing it, validating it) runs."""
    depth = 0
    stack: list[tuple[Any, int]] = [(schema, 1)]
    while stack:
        node, level = stack.pop()
        depth = max(depth, level)
        if depth > MAX_SCHEMA_DEPTH:
            raise _too_deep()
        if isinstance(node, dict):
            _check_patterns(node)
            children = node.values()
        else:
            children = node
        stack.extend((child, level + 1) for child in children if isinstance(child, dict | list))
    size = len(json.dumps(schema, separators=(",", ":")))
    if size > MAX_SCHEMA_CHARS:
        raise _too_large(size)
    return schema


def _check_patterns(node: dict[str, Any]) -> None:
    """A schema's regexes (``pattern``, ``patternProperties``' names) are bounded as a regex is."""
    patterns = [node["pattern"]] if isinstance(node.get("pattern"), str) else []
    if isinstance(node.get("patternProperties"), dict):
        patterns += node["patternProperties"]
    longest = max(map(len, patterns), default=0)
    if longest > MAX_REGEX_CHARS:
        raise PydanticCustomError(
            "pattern_too_long",
            "the schema has a pattern of {chars} characters; at most {limit}",
            {"chars": longest, "limit": MAX_REGEX_CHARS},
        )


def _too_large(chars: int) -> PydanticCustomError:
    return PydanticCustomError(
        "schema_too_large",
        "the schema is {chars} characters of JSON; at most {limit}",
        {"chars": chars, "limit": MAX_SCHEMA_CHARS},
    )


def _too_deep() -> PydanticCustomError:
    return PydanticCustomError(
        "schema_too_deep",
        "the schema nests objects and arrays more than {limit} levels deep",
        {"limit": MAX_SCHEMA_DEPTH},
    )


def _bounded_choice(choice: list[str]) -> list[str]:
    chars = sum(map(len, choice))
    if chars > MAX_CHOICE_CHARS:
        raise PydanticCustomError(
            "choice_too_large",
            "the choices hold {chars} characters together; at most {limit}",
            {"chars": chars, "limit": MAX_CHOICE_CHARS},
        )
    return choice


# OpenAI's schema fields (response_format's, a tool's parameters) take a JSON object.
Schema = Annotated[dict[str, Any], AfterValidator(_bounded_schema)]
# vLLM's (structured_outputs.json, guided_json) take an object or its JSON text; either becomes the object.
SchemaOrText = Annotated[
    dict[str, Any],
    BeforeValidator(_schema_from_text, json_schema_input_type=dict[str, Any] | str),
    AfterValidator(_bounded_schema),
]
Regex = Annotated[str, Field(max_length=MAX_REGEX_CHARS)]
GrammarText = Annotated[str, Field(max_length=MAX_GRAMMAR_CHARS)]
Choice = Annotated[list[str], Field(min_length=1, max_length=MAX_CHOICE_STRINGS), AfterValidator(_bounded_choice)]
