"""Tools for chat templates that know nothing of them: ise describes the tools and the reply
format in a system prompt, and rewrites the tool turns of the history as plain text.

The system prompt (``render_tools_prompt``) is, for ``tools`` and ``tool_choice``::

    You can call these functions:

    <one entry per function>
    Function: <name>
    Description: <description, when the tool has one>
    Parameters (JSON schema): <parameters schema as JSON>

    <the reply format, by tool_choice>

and the reply format is

- ``"auto"`` (the ``ise_json`` parser reads the reply): reply with one JSON object and nothing
  else, ``{"tool_calls": [{"name": "<function name>", "arguments": {<arguments>}}]}`` to call
  functions or ``{"response": "<your answer>"}`` to answer;
- ``"required"`` (the ``json`` parser): a JSON array of one or more
  ``{"name": "<function name>", "parameters": {<arguments>}}``;
- a named function (the ``json`` parser): only the JSON object of that function's arguments.

Each is followed by how results come back: as a user message
``Result of <name> (call <id>): <result>`` (see ``history_messages``). ``"none"`` is rendered
like ``"auto"``'s function list with an instruction to answer in plain text without calling.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from server.text.tool_parsers.schema import ToolChoice, named_function, tool_name, tool_parameters

_RESULTS = 'Results of calls come back in a user message as "Result of <name> (call <id>): <result>".'


def render_tools_prompt(tools: Sequence[Mapping[str, Any]], tool_choice: ToolChoice) -> str:
    """The system prompt text that describes ``tools`` and the reply format ``tool_choice`` asks for."""
    entries = []
    for tool in tools:
        lines = [f"Function: {tool_name(tool)}"]
        description = tool["function"].get("description")
        if description:
            lines.append(f"Description: {description}")
        lines.append(f"Parameters (JSON schema): {json.dumps(tool_parameters(tool), ensure_ascii=False)}")
        entries.append("\n".join(lines))
    return "You can call these functions:\n\n" + "\n\n".join(entries) + "\n\n" + _reply_format(tool_choice)


def _reply_format(tool_choice: ToolChoice) -> str:
    named = named_function(tool_choice)
    if named is not None:
        return (
            f"Call the function {named}: reply with only the JSON object of its arguments, "
            f"following its parameters schema, and nothing else.\n{_RESULTS}"
        )
    if tool_choice == "required":
        return (
            "Call one or more of the functions: reply with only a JSON array of calls, each "
            '{"name": "<function name>", "parameters": {<arguments following its parameters schema>}}, '
            f"and nothing else.\n{_RESULTS}"
        )
    if tool_choice == "none":
        return f"Do not call any function now: answer in plain text.\n{_RESULTS}"
    return (
        "Reply with exactly one JSON object and nothing else, in one of two forms.\n"
        'To call functions: {"tool_calls": [{"name": "<function name>", '
        '"arguments": {<arguments following its parameters schema>}}]}\n'
        'To answer directly: {"response": "<your answer>"}\n'
        f"{_RESULTS}"
    )


def history_messages(messages: Sequence[Mapping[str, Any]], calls_as_json: bool = True) -> list[dict[str, Any]]:
    """OpenAI chat messages with their tool turns rewritten as plain text in the ``ise_json`` format.

    An assistant message with ``tool_calls`` becomes one whose content is the ``{"tool_calls":
    [...]}`` object it would have written (after its own content, if it had any); each run of
    ``tool`` messages becomes one user message of ``Result of <name> (call <id>): <content>``
    lines, the name found from the call's id. Other messages are copied unchanged.

    ``calls_as_json`` False (a request that may not call tools: the answer must be text) writes
    the calls as a sentence instead, ``Called get_weather with {"city": "Paris"}.``: a model shown
    its own earlier calls as JSON writes JSON again, which would reach the user as content.
    """
    names: dict[str, str] = {}
    out: list[dict[str, Any]] = []
    results: list[str] = []
    for message in messages:
        if message.get("role") == "tool":
            results.append(_result_text(message, names))
            continue
        if results:
            out.append({"role": "user", "content": "\n\n".join(results)})
            results = []
        calls = message.get("tool_calls")
        if message.get("role") == "assistant" and calls:
            for call in calls:
                names[str(call.get("id", ""))] = str(call["function"]["name"])
            out.append({"role": "assistant", "content": _calls_text(message.get("content"), calls, calls_as_json)})
        else:
            out.append(dict(message))
    if results:
        out.append({"role": "user", "content": "\n\n".join(results)})
    return out


def _calls_text(content: Any, calls: Sequence[Mapping[str, Any]], as_json: bool) -> str:
    objects = [{"name": call["function"]["name"], "arguments": _arguments(call["function"])} for call in calls]
    if as_json:
        text = json.dumps({"tool_calls": objects}, ensure_ascii=False)
    else:
        text = " ".join(f"Called {o['name']} with {json.dumps(o['arguments'], ensure_ascii=False)}." for o in objects)
    prefix = _text(content)
    return f"{prefix}\n\n{text}" if prefix else text


def _arguments(function: Mapping[str, Any]) -> Any:
    """The arguments as a JSON value; OpenAI sends them as JSON text, which a client may have broken."""
    arguments = function.get("arguments")
    if not isinstance(arguments, str):
        return arguments if arguments is not None else {}
    try:
        return json.loads(arguments)
    except ValueError:
        return arguments


def _result_text(message: Mapping[str, Any], names: Mapping[str, str]) -> str:
    call_id = str(message.get("tool_call_id", ""))
    name = names.get(call_id) or message.get("name")
    source = f"{name} (call {call_id})" if name else f"call {call_id}"
    return f"Result of {source}: {_text(message.get('content'))}"


def _text(content: Any) -> str:
    """A message's text: a string, or the text parts of a list of content parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(part.get("text", "")) for part in content if isinstance(part, Mapping))
    return ""
