"""Anthropic's Messages request as the chat completion request the chat pipeline serves.

Nothing here samples, plans tools or parses output: the translation only renames. Turns become
chat messages (a user turn's ``tool_result`` blocks become ``tool`` messages, an assistant
turn's ``tool_use`` blocks its ``tool_calls``), ``tool_choice`` ``any`` becomes ``required`` and
``tool`` a named function, ``stop_sequences`` become ``stop``, ``metadata.user_id`` the
``user``. What the translation cannot carry is returned by name for ``x-ignored-params``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from server.protocol.chat import ChatCompletionRequest
from server.protocol.errors import invalid_request
from server.protocol.messages import (
    CountTokensRequest,
    InputMessage,
    MessagesInput,
    MessagesRequest,
    TextBlock,
    ToolChoice,
    ToolResultBlock,
    ToolUseBlock,
)


@dataclass(frozen=True)
class Translation:
    chat: ChatCompletionRequest
    ignored: list[str]  # the Messages fields the chat request does not carry


def to_chat(req: MessagesRequest | CountTokensRequest, *, reasoning: bool) -> Translation:
    """``reasoning``: the server runs a reasoning parser, so ``thinking`` takes effect as thinking blocks."""
    ignored = req.ignored_fields()
    body: dict[str, Any] = {"model": req.model, "messages": _messages(req)}
    tools = [tool for tool in req.tools or () if tool.is_client_tool]
    ignored += [f"tools.{i}" for i, tool in enumerate(req.tools or ()) if not tool.is_client_tool]
    if tools:
        body["tools"] = [
            {
                "type": "function",
                "function": {"name": t.name, "description": t.description, "parameters": t.input_schema},
            }
            for t in tools
        ]
    if req.tool_choice is not None:
        body["tool_choice"] = _tool_choice(req.tool_choice)
        if req.tool_choice.disable_parallel_tool_use:
            body["parallel_tool_calls"] = False
    ignored += _thinking_ignored(req, reasoning)
    if isinstance(req, MessagesRequest):
        body |= {
            "max_tokens": req.max_tokens,
            "stop": req.stop_sequences,
            "temperature": req.temperature,
            "top_p": req.top_p,
            "top_k": req.top_k,
            "stream": bool(req.stream),
            "user": req.metadata.user_id if req.metadata is not None else None,
        }
    try:
        chat = ChatCompletionRequest.model_validate(body)
    except ValidationError as exc:  # what Anthropic allows and chat completions do not (a longer tool name)
        first = exc.errors(include_input=False)[0]
        where = ".".join(str(part) for part in first["loc"])
        raise invalid_request(f"Invalid value for '{where}': {first['msg']}.", param=where) from None
    return Translation(chat, ignored)


def _messages(req: MessagesInput) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    if req.system is not None:
        system = req.system if isinstance(req.system, str) else "\n".join(block.text for block in req.system)
        messages.append({"role": "system", "content": system})
    for index, message in enumerate(req.messages):
        messages += _user_turn(message, index) if message.role == "user" else [_assistant_turn(message, index)]
    return messages


def _user_turn(message: InputMessage, index: int) -> list[dict[str, Any]]:
    """A user turn's text, and each ``tool_result`` block as a ``tool`` message, in their order."""
    if isinstance(message.content, str):
        return [{"role": "user", "content": message.content}]
    out: list[dict[str, Any]] = []
    text: list[str] = []
    for position, block in enumerate(message.content):
        if isinstance(block, TextBlock):
            text.append(block.text)
        elif isinstance(block, ToolResultBlock):
            if text:
                out.append({"role": "user", "content": "".join(text)})
                text = []
            result = block.text()
            out.append(
                {
                    "role": "tool",
                    "tool_call_id": block.tool_use_id,
                    "content": f"Error: {result}" if block.is_error else result,
                }
            )
        elif isinstance(block, ToolUseBlock):
            raise _misplaced(index, position, "tool_use", "user")
    if text or not out:
        out.append({"role": "user", "content": "".join(text)})
    return out


def _assistant_turn(message: InputMessage, index: int) -> dict[str, Any]:
    """An assistant turn's text and calls; its thinking is left out, as chat templates leave earlier thinking."""
    if isinstance(message.content, str):
        return {"role": "assistant", "content": message.content}
    text: list[str] = []
    calls: list[dict[str, Any]] = []
    for position, block in enumerate(message.content):
        if isinstance(block, TextBlock):
            text.append(block.text)
        elif isinstance(block, ToolUseBlock):
            arguments = json.dumps(block.input, ensure_ascii=False)
            calls.append({"id": block.id, "type": "function", "function": {"name": block.name, "arguments": arguments}})
        elif isinstance(block, ToolResultBlock):
            raise _misplaced(index, position, "tool_result", "assistant")
    turn: dict[str, Any] = {"role": "assistant", "content": "".join(text)}
    if calls:
        turn["tool_calls"] = calls
    return turn


def _misplaced(index: int, position: int, kind: str, role: str) -> Exception:
    param = f"messages.{index}.content.{position}"
    return invalid_request(f"'{param}': a {role} turn cannot hold a '{kind}' block.", param=param)


def _tool_choice(choice: ToolChoice) -> str | dict[str, Any]:
    if choice.type == "tool":
        return {"type": "function", "function": {"name": choice.name}}
    return {"auto": "auto", "any": "required", "none": "none"}[choice.type]


def _thinking_ignored(req: MessagesInput, reasoning: bool) -> list[str]:
    """``thinking`` takes effect only where a reasoning parser can tell the thinking from the answer,
    and then its budget does not: the model thinks as long as it thinks."""
    thinking = req.thinking
    if thinking is None or thinking.type == "disabled":
        return []
    if not reasoning:
        return ["thinking"]
    return ["thinking.budget_tokens"] if thinking.budget_tokens is not None else []
