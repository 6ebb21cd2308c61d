"""How a chat request's tools, tool_choice and reasoning shape its prompt, its constraint and its parsing.

Templates that know tools (Hermes-style, Llama 3, Mistral) get ``tools`` through the template and
their output is read by that format's parser. Templates that do not (the built-in model's) get
ise's generic format: the tools are described in a system message and the whole answer is one
JSON object, either calls or a response (``server/tool_parsers``). ``tool_choice`` ``required``
and a named function are enforced by structured decoding against the tools' parameter schemas
(vLLM's approach), as is ``auto`` in the generic format, so those answers always parse; the
server compiles that constraint under its budget like any other (``server/text/structured_outputs.py``),
naming ``tools`` when it cannot be enforced.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from adapters.engine import StructuredOutput
from server.protocol.chat import ChatMessage, NamedToolChoice, Tool, ToolChoice
from server.protocol.sampling import schema_text
from server.text.chat_output import ChatOutput
from server.text.options import ApiArgs
from server.text.reasoning import REASONING_PARSERS, ReasoningParser
from server.text.tool_parsers import (
    TOOL_PARSERS,
    ToolParser,
    detect_tool_parser,
    history_messages,
    render_tools_prompt,
    tools_json_schema,
)
from server.text.tool_parsers.formats import ForcedJsonToolParser

GENERIC_PARSER = "ise_json"


@dataclass(frozen=True)
class ChatPlan:
    messages: list[dict[str, Any]]  # as the chat template gets them
    template_tools: list[dict[str, Any]] | None  # ``tools`` for a template that knows them
    structured: StructuredOutput | None  # the constraint tool_choice needs, if any (not yet compiled)
    output: ChatOutput


def plan_chat(
    chat_messages: list[ChatMessage],
    request_tools: list[Tool] | None,
    tool_choice: ToolChoice | None,
    parallel_tool_calls: bool,
    api: ApiArgs,
    chat_template: str | None,
) -> ChatPlan:
    """One plan for chat completions and ``/tokenize`` alike, so a token count is what a completion is charged.

    The request model has checked that ``tool_choice`` has tools to choose from (``check_tool_choice``),
    and bounded each parameters schema.
    """
    messages = [m.template_dict() for m in chat_messages]
    tools = [t.model_dump(exclude_none=True, by_alias=True) for t in request_tools or []]
    choice = tool_choice if tool_choice is not None else ("auto" if tools else "none")
    named = choice.function.name if isinstance(choice, NamedToolChoice) else None
    parser_name = api.tool_call_parser if api.tool_call_parser != "auto" else detect_tool_parser(chat_template)
    generic = parser_name == GENERIC_PARSER
    reasoning = _reasoning_parser(api)
    if generic:
        # The template knows no tool roles or calls: the history is rewritten in the generic format
        # (its calls as prose when this answer may not call: the model would copy the JSON).
        messages = history_messages(messages, calls_as_json=choice != "none")
    if choice == "none":
        return ChatPlan(messages, tools if tools and not generic else None, None, ChatOutput(reasoning))
    mode = "named" if named is not None else str(choice)
    wire_choice: str | dict[str, Any] = choice.model_dump() if isinstance(choice, NamedToolChoice) else choice
    structured: StructuredOutput | None = None
    if mode in ("required", "named") or generic:
        structured = StructuredOutput(json=schema_text(tools_json_schema(tools, wire_choice, parallel_tool_calls)))
    parser: ToolParser = ForcedJsonToolParser(named) if mode in ("required", "named") else TOOL_PARSERS[parser_name]()
    output = ChatOutput(reasoning, parser, calls_only=mode in ("required", "named"))
    if generic:
        messages = _with_system_text(messages, render_tools_prompt(tools, wire_choice))
        return ChatPlan(messages, None, structured, output)
    return ChatPlan(messages, tools, structured, output)


def _reasoning_parser(api: ApiArgs) -> ReasoningParser | None:
    if api.reasoning_parser is None:
        return None
    start, end = api.reasoning_tags
    return replace(REASONING_PARSERS[api.reasoning_parser], start=start, end=end)


def _with_system_text(messages: list[dict[str, Any]], text: str) -> list[dict[str, Any]]:
    """The tools' description joins the system message (templates take one), or opens the conversation."""
    if messages and messages[0]["role"] == "system":
        first = {**messages[0], "content": f"{messages[0]['content']}\n\n{text}".strip()}
        return [first, *messages[1:]]
    return [{"role": "system", "content": text}, *messages]
