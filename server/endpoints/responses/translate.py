"""A Responses API request as the chat completion request the chat pipeline serves, and what it dropped.

``instructions`` become the system message; the conversation is the previous response's (its
input and output, when ``previous_response_id`` names one) followed by this ``input``: message
items become messages, ``function_call`` items an assistant message's ``tool_calls``,
``function_call_output`` items ``tool`` messages (and the same for ``custom_tool_call`` items);
``reasoning`` items sent back are not shown to the model again (chat templates drop earlier thinking
too). Function tools, and the function tools inside Codex's ``namespace`` tools, become chat tools;
a free-text ``custom`` tool becomes a chat tool whose one argument, ``input``, is its text (a regex
format is that argument's ``pattern``); every field or tool that takes no effect is named for
``x-ignored-params``.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any

from pydantic import TypeAdapter, ValidationError

from server.protocol.base import FIELD_ERROR
from server.protocol.chat import ChatCompletionRequest
from server.protocol.errors import APIError, invalid_request
from server.protocol.responses import (
    OUTPUT_LOGPROBS,
    CustomTool,
    CustomToolCallItem,
    CustomToolCallOutputItem,
    FunctionCallItem,
    FunctionCallOutputItem,
    FunctionChoice,
    FunctionTool,
    InputItem,
    MessageItem,
    NamespaceTool,
    ReasoningItem,
    ResponsesRequest,
    content_text,
)

ITEMS = TypeAdapter(list[InputItem])

# Chat's names of the fields a translated request can fail on, as the Responses request calls them.
_PARAMS = {"messages": "input", "max_tokens": "max_output_tokens", "response_format": "text.format"}


def item_id(prefix: str) -> str:
    """An id in OpenAI's Responses form (``resp_…``, ``msg_…``, ``fc_…``)."""
    return f"{prefix}_{uuid.uuid4().hex}"


# The one argument of the chat tool a custom tool is offered as: the tool's free text.
CUSTOM_INPUT = "input"


@dataclass(frozen=True)
class ToolOrigins:
    """Where the chat tools an answer calls came from, so its calls are given back as offered."""

    namespaces: dict[str, str]  # function name -> the namespace tool it was offered in
    custom: frozenset[str]  # names of free-text custom tools


@dataclass(frozen=True)
class Translation:
    chat: ChatCompletionRequest
    ignored: list[str]  # fields that take no effect, for x-ignored-params
    input_items: list[dict[str, Any]]  # this request's input as items with ids, as stored and listed
    origins: ToolOrigins


def translate(req: ResponsesRequest, conversation: list[dict[str, Any]]) -> Translation:
    """``conversation``: the items a ``previous_response_id`` continues (none without one).

    Raises a 400 ``APIError`` naming the Responses field at fault.
    """
    input_items = [_listed(item.model_dump(by_alias=True, exclude_none=True)) for item in req.items()]
    earlier: list[Any] = ITEMS.validate_python(conversation) if conversation else []
    messages: list[dict[str, Any]] = [{"role": "system", "content": req.instructions}] if req.instructions else []
    messages += _messages([*earlier, *req.items()])
    if not messages:
        raise invalid_request("The input is empty: send at least one message.", param="input")
    tools, origins, ignored_tools = _tools(req)
    body: dict[str, Any] = {
        "model": req.model,
        "messages": messages,
        "max_tokens": req.max_output_tokens,
        "temperature": req.temperature,
        "top_p": req.top_p,
        "tools": tools or None,
        "tool_choice": _tool_choice(req),
        "parallel_tool_calls": req.parallel_tool_calls,
        "response_format": _response_format(req),
        "logprobs": req.wants_logprobs(),
        "top_logprobs": req.top_logprobs if req.wants_logprobs() else None,
        "user": req.user,
        "stream": req.stream,
    }
    return Translation(
        _chat_request(body), [*req.ignored_fields(), *_ignored(req), *ignored_tools], input_items, origins
    )


def _listed(item: dict[str, Any]) -> dict[str, Any]:
    """An input item as OpenAI lists it: with an id, a message's text as a part."""
    if item.get("type") == "message" and isinstance(item["content"], str):
        kind = "output_text" if item["role"] == "assistant" else "input_text"
        item = {**item, "content": [{"type": kind, "text": item["content"]}]}
    if "id" in item:
        return item
    prefix = {
        "message": "msg",
        "function_call": "fc",
        "function_call_output": "fco",
        "custom_tool_call": "ctc",
        "custom_tool_call_output": "ctco",
        "reasoning": "rs",
    }
    return {"id": item_id(prefix.get(item.get("type", "message"), "item")), **item}


def _messages(items: list[Any]) -> list[dict[str, Any]]:
    """Chat messages for items; consecutive calls join the assistant message before them."""
    messages: list[dict[str, Any]] = []
    for item in items:
        if isinstance(item, MessageItem):
            messages.append({"role": item.role, "content": content_text(item.content)})
        elif isinstance(item, FunctionCallItem | CustomToolCallItem):
            arguments = item.arguments if isinstance(item, FunctionCallItem) else json.dumps({CUSTOM_INPUT: item.input})
            call = {"id": item.call_id, "type": "function", "function": {"name": item.name, "arguments": arguments}}
            if messages and messages[-1]["role"] == "assistant":
                messages[-1]["tool_calls"] = [*messages[-1].get("tool_calls", []), call]
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif isinstance(item, FunctionCallOutputItem | CustomToolCallOutputItem):
            messages.append({"role": "tool", "tool_call_id": item.call_id, "content": content_text(item.output)})
        else:
            assert isinstance(item, ReasoningItem)
    return messages


def _tools(req: ResponsesRequest) -> tuple[list[dict[str, Any]], ToolOrigins, list[str]]:
    """Chat tools for the function tools (a namespace's flattened) and custom tools, where they came
    from, and what was left out."""
    tools: list[dict[str, Any]] = []
    namespaces: dict[str, str] = {}
    custom: set[str] = set()
    ignored: dict[str, None] = {}
    for tool in req.tools or []:
        if isinstance(tool, FunctionTool):
            tools.append(_chat_tool(tool))
        elif isinstance(tool, NamespaceTool):
            for inner in tool.tools:
                tools.append(_chat_tool(inner))
                namespaces[inner.name] = tool.name
        elif isinstance(tool, CustomTool):
            tools.append(_custom_chat_tool(tool))
            custom.add(tool.name)
            if tool.format is not None and tool.format.type == "grammar" and tool.format.syntax == "lark":
                ignored["tools.custom.format"] = None
        else:
            ignored[f"tools.{tool.type}"] = None
    return tools, ToolOrigins(namespaces, frozenset(custom)), list(ignored)


def _chat_tool(tool: FunctionTool) -> dict[str, Any]:
    function = tool.model_dump(include={"name", "description", "parameters", "strict"}, exclude_none=True)
    return {"type": "function", "function": function}


def _custom_chat_tool(tool: CustomTool) -> dict[str, Any]:
    """A free-text tool as a function of one string: the chat pipeline's tool formats, parsers and
    grammars all take JSON arguments, so the text travels as ``{"input": "..."}`` and is given back
    unwrapped. A regex format becomes the string's ``pattern``, enforced wherever the tools' schemas
    are (a required or named call, and ise's generic tool format)."""
    text: dict[str, Any] = {"type": "string"}
    if tool.format is not None and tool.format.type == "grammar" and tool.format.syntax == "regex":
        text["pattern"] = tool.format.definition
    parameters = {"type": "object", "properties": {CUSTOM_INPUT: text}, "required": [CUSTOM_INPUT]}
    function = {"name": tool.name, "parameters": {**parameters, "additionalProperties": False}}
    if tool.description is not None:
        function["description"] = tool.description
    return {"type": "function", "function": function}


def _tool_choice(req: ResponsesRequest) -> Any:
    choice = req.tool_choice
    if choice is None or isinstance(choice, str):
        return choice
    if isinstance(choice, FunctionChoice):
        return {"type": "function", "function": {"name": choice.name}}
    raise invalid_request(
        f"tool_choice of type '{choice.type}' is not supported: ise runs no hosted tools; "
        "send 'none', 'auto', 'required' or a function.",
        param="tool_choice",
    )


def _response_format(req: ResponsesRequest) -> dict[str, Any] | None:
    fmt = req.text.format if req.text is not None else None
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_object":
        return {"type": "json_object"}
    schema = {"name": fmt.name or "response", "schema": fmt.json_schema, "strict": fmt.strict}
    return {"type": "json_schema", "json_schema": schema}


def _ignored(req: ResponsesRequest) -> list[str]:
    """Declared fields sent with a value that takes no effect (undeclared ones ``ignored_fields`` finds)."""
    found = [f"include.{value}" for value in req.include or () if value != OUTPUT_LOGPROBS]
    if req.prompt_cache_key is not None:
        found.append("prompt_cache_key")  # ise caches every prompt's prefix without being asked
    if req.truncation == "auto":
        found.append("truncation")
    if req.reasoning is not None:
        found += [f"reasoning.{name}" for name, value in req.reasoning if value is not None]
    if req.text is not None:
        if req.text.verbosity is not None:
            found.append("text.verbosity")
        if req.text.format is not None and req.text.format.description is not None:
            found.append("text.format.description")
    return found


def _chat_request(body: dict[str, Any]) -> ChatCompletionRequest:
    """The chat request, validated as chat validates any; its failures named as the Responses request's."""
    try:
        return ChatCompletionRequest.model_validate_json(json.dumps(body))
    except ValidationError as exc:
        error = exc.errors()[0]
        if error["type"] == FIELD_ERROR:
            ctx = error["ctx"]
            param = _PARAMS.get(ctx["param"], ctx["param"])
            raise APIError(400, ctx["message"], param=param, code=ctx["code"]) from None
        loc = [str(part) for part in error["loc"]]
        param = ".".join([_PARAMS.get(loc[0], loc[0]), *loc[1:]]) if loc else None
        raise invalid_request(f"Invalid value for '{param}': {error['msg']}.", param=param) from None
