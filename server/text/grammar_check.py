"""Whether a structured-output constraint can be enforced: what a compile worker runs for each one.

A constraint that cannot be enforced must be a 400 naming its field, never a 500 from inside an
engine, and never an answer that silently ignores it. So each is compiled here exactly as the
CPU engine compiles it (``adapters/grammars.py``), and a JSON schema is first validated against
its metaschema and searched for keywords xgrammar accepts but does not enforce.

Everything here may take time that grows with the constraint, and a compile cannot be
interrupted in-thread: it runs only in a worker process (``server/text/grammar_workers.py``), which
the server stops at its time budget. The request's size and nesting were bounded before
(``server/protocol/constraint_limits.py``), so nothing here can exhaust the stack.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import xgrammar as xgr
from jsonschema import SchemaError
from jsonschema.validators import validator_for

from adapters.engine import StructuredOutput
from adapters.grammars import compile_constraint

# JSON Schema keywords xgrammar accepts but does not enforce: a schema using one would get output
# that may not validate, so it is refused instead (keywords that only annotate are fine).
UNSUPPORTED_KEYWORDS = frozenset(
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

# A problem is shown to the client; xgrammar's may quote the whole constraint back.
_MAX_PROBLEM_CHARS = 1000


def problem(compiler: xgr.GrammarCompiler, constraint: StructuredOutput) -> str | None:
    """Why ``constraint`` cannot be enforced, in words for the client, or None when it compiles."""
    if constraint.json is not None:
        found = _schema_problem(json.loads(constraint.json))
        if found is not None:
            return found
    try:
        compile_constraint(compiler, constraint)
    except Exception as exc:  # xgrammar reports every problem as a RuntimeError
        # Its messages start with a time and a C++ source position; the rest is for the user.
        message = re.sub(r"^\[[^\]]*\]\s*\S+:\d+:\s*", "", str(exc).strip())
        return message[:_MAX_PROBLEM_CHARS]
    return None


def _schema_problem(schema: dict[str, Any]) -> str | None:
    try:
        validator_for(schema).check_schema(schema)
    except SchemaError as exc:
        return f"the schema is invalid: {exc.message}"[:_MAX_PROBLEM_CHARS]
    unsupported = sorted(set(_keywords(schema)) & UNSUPPORTED_KEYWORDS)
    if unsupported:
        return f"the schema uses {', '.join(unsupported)}, which structured decoding does not support"
    return None


def _keywords(schema: Any) -> Iterator[str]:
    """Every keyword used anywhere in the schema (property names are not keywords)."""
    if isinstance(schema, list):
        for item in schema:
            yield from _keywords(item)
    elif isinstance(schema, dict):
        for key, value in schema.items():
            yield key
            if key in _SCHEMA_MAPS and isinstance(value, dict):
                for sub in value.values():
                    yield from _keywords(sub)
            elif key not in ("enum", "const", "default", "examples"):
                yield from _keywords(value)
