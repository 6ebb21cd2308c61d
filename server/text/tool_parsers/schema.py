"""JSON schemas that constrain an output to calls (for a structured-output grammar).

Tools and ``tool_choice`` come in OpenAI's shapes: a tool is ``{"type": "function",
"function": {"name", "description"?, "parameters"?}}``; ``tool_choice`` is ``"auto"``,
``"required"``, ``"none"`` or ``{"type": "function", "function": {"name": ...}}``. The schemas
use only what xgrammar compiles (``anyOf``, ``const``, ``minItems``/``maxItems``), with the
properties of call objects listed name first, the order the parsers need.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from server.protocol.schema_keywords import without_unenforced

ToolChoice = str | Mapping[str, Any]

EMPTY_PARAMETERS: dict[str, Any] = {"type": "object", "properties": {}}


def tool_name(tool: Mapping[str, Any]) -> str:
    """The function name of an OpenAI tool."""
    return str(tool["function"]["name"])


def tool_parameters(tool: Mapping[str, Any]) -> dict[str, Any]:
    """A tool's parameters schema as its grammar enforces it; a tool without one takes an empty object.
    A tool not marked ``strict`` loses the keywords structured decoding cannot enforce (the request
    names them as ignored); a strict one keeps them, so its constraint is refused."""
    function = tool["function"]
    parameters = function.get("parameters")
    if not parameters:
        return dict(EMPTY_PARAMETERS)
    return dict(parameters) if function.get("strict") else dict(without_unenforced(parameters))


def named_function(tool_choice: ToolChoice) -> str | None:
    """The function ``tool_choice`` names, or ``None`` for ``"auto"``, ``"required"`` and ``"none"``."""
    if isinstance(tool_choice, str):
        return None
    return str(tool_choice["function"]["name"])


def tools_json_schema(
    tools: Sequence[Mapping[str, Any]], tool_choice: ToolChoice, parallel_tool_calls: bool
) -> dict[str, Any]:
    """The schema an output must follow to be what ``tool_choice`` asks for.

    - ``"auto"``: the ``ise_json`` object, ``{"tool_calls": [{"name", "arguments"}, ...]}`` or
      ``{"response": "..."}``;
    - ``"required"``: the ``json`` parser's ``[{"name", "parameters"}, ...]``, at least one call;
    - a named function: that function's parameters schema.

    At most one call unless ``parallel_tool_calls``. Raises ``ValueError`` for ``"none"``
    (nothing to constrain), an unknown choice or a named function not in ``tools``.
    """
    named = named_function(tool_choice)
    if named is not None:
        for tool in tools:
            if tool_name(tool) == named:
                return tool_parameters(tool)
        raise ValueError(f"tool_choice names {named!r}, which is not among the tools")
    if tool_choice == "auto":
        calls = _calls_array(tools, "arguments", parallel_tool_calls)
        return {
            "anyOf": [
                _object({"tool_calls": calls}),
                _object({"response": {"type": "string"}}),
            ]
        }
    if tool_choice == "required":
        return _calls_array(tools, "parameters", parallel_tool_calls)
    raise ValueError(f"tool_choice {tool_choice!r} does not constrain the output")


def _object(properties: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "properties": properties, "required": list(properties), "additionalProperties": False}


def _calls_array(tools: Sequence[Mapping[str, Any]], arguments_key: str, parallel: bool) -> dict[str, Any]:
    calls = [
        _object({"name": {"type": "string", "const": tool_name(tool)}, arguments_key: tool_parameters(tool)})
        for tool in tools
    ]
    array: dict[str, Any] = {"type": "array", "items": {"anyOf": calls}, "minItems": 1}
    if not parallel:
        array["maxItems"] = 1
    return array
