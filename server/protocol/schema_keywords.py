"""JSON Schema keywords structured decoding does not enforce, found and taken out of a schema.

xgrammar accepts these keywords and ignores them, so output constrained by a schema that uses one
may not validate against it. Where the schema is a promise (``response_format``, a tool marked
``strict``) such a schema is refused (``server/text/grammar_check.py``). Where it is guidance (a
tool without ``strict``: OpenAI does not promise its arguments validate), the grammar enforces the
rest of the schema and the keywords are named in ``x-ignored-params``; coding agents' tools use
them (Claude Code's ``propertyNames``), and refusing the request would refuse the agent.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

UNENFORCED_KEYWORDS = frozenset(
    {
        "not",
        "if",
        "then",
        "else",
        "dependentSchemas",
        "dependentRequired",
        "dependencies",
        "uniqueItems",
        "contains",
        "minContains",
        "maxContains",
        "propertyNames",
        "unevaluatedProperties",
        "unevaluatedItems",
        "multipleOf",
        "$dynamicRef",
        "$recursiveRef",
    }
)

# Keywords whose value is a map of names to schemas: the names are data, not keywords.
_SCHEMA_MAPS = frozenset({"properties", "patternProperties", "$defs", "definitions"})
# Keywords whose value is data, never a schema.
_DATA = frozenset({"enum", "const", "default", "examples"})


def unenforced_keywords(schema: Any) -> list[str]:
    """The unenforced keywords ``schema`` uses anywhere, sorted (property names are not keywords)."""
    return sorted(set(_keywords(schema)) & UNENFORCED_KEYWORDS)


def without_unenforced(schema: Any) -> Any:
    """``schema`` with every unenforced keyword taken out, at any depth (a copy; data is kept as is)."""
    if isinstance(schema, list):
        return [without_unenforced(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    kept: dict[str, Any] = {}
    for key, value in schema.items():
        if key in UNENFORCED_KEYWORDS:
            continue
        if key in _SCHEMA_MAPS and isinstance(value, dict):
            kept[key] = {name: without_unenforced(sub) for name, sub in value.items()}
        elif key in _DATA:
            kept[key] = value
        else:
            kept[key] = without_unenforced(value)
    return kept


def _keywords(schema: Any) -> Iterator[str]:
    if isinstance(schema, list):
        for item in schema:
            yield from _keywords(item)
    elif isinstance(schema, dict):
        for key, value in schema.items():
            yield key
            if key in _SCHEMA_MAPS and isinstance(value, dict):
                for sub in value.values():
                    yield from _keywords(sub)
            elif key not in _DATA:
                yield from _keywords(value)
