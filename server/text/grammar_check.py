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
from typing import Any

import xgrammar as xgr
from jsonschema import SchemaError
from jsonschema.validators import validator_for

from adapters.engine import StructuredOutput
from adapters.grammars import compile_constraint
from server.protocol.schema_keywords import unenforced_keywords

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
    unsupported = unenforced_keywords(schema)
    if unsupported:
        return f"the schema uses {', '.join(unsupported)}, which structured decoding does not support"
    return None
