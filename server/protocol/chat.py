"""OpenAI's chat completions: the request (messages, tools) and the response, whole and streamed."""

from __future__ import annotations

from typing import Annotated, Any, Literal, Self

from pydantic import Field, ValidationInfo, field_validator, model_validator
from pydantic_core import PydanticCustomError

from server.protocol.base import (
    MAX_CONTENT_PARTS,
    MAX_LOGPROBS,
    MAX_MESSAGES,
    MAX_TOOLS,
    Absent,
    Name,
    RequestModel,
    ResponseModel,
    field_error,
    null_is,
)
from server.protocol.common import ChoiceFinishReason, Envelope, PromptLogprobs, Usage
from server.protocol.constraint_limits import Schema
from server.protocol.sampling import SamplingFields
from server.protocol.schema_keywords import unenforced_keywords


class TextPart(RequestModel):
    type: Literal["text"]
    text: str


class FunctionCall(RequestModel):
    name: Name
    arguments: str


class ToolCallParam(RequestModel):
    """A call an assistant message in the history made."""

    id: Name
    type: Literal["function"] = "function"
    function: FunctionCall


_MEDIA_PARTS = {
    "image_url": "an image",
    "input_audio": "audio",
    "file": "a file",
    "image": "an image",
    "audio": "audio",
}


def text_only(content: Any, media: dict[str, str], noun: str) -> Any:
    """Images, audio and files get a 400 saying why, not a complaint about the part's shape.

    ``media``: the part types (``type``) a text-only model cannot read, each with its description.
    """
    if isinstance(content, list):
        for index, part in enumerate(content):
            kind = part.get("type") if isinstance(part, dict) else None
            if isinstance(kind, str) and kind in media:
                raise PydanticCustomError(
                    "text_only",
                    "{noun} {index} is {what} ('{kind}'), but this model is text-only: send text {noun}s only",
                    {"noun": noun, "index": index, "what": media[kind], "kind": kind},
                )
    return content


class ChatMessage(RequestModel):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | Annotated[list[TextPart], Field(max_length=MAX_CONTENT_PARTS)] | None = None
    name: Name | None = None
    tool_calls: Annotated[list[ToolCallParam], Field(max_length=MAX_TOOLS)] | None = None
    tool_call_id: Name | None = None

    @field_validator("content", mode="before")
    @classmethod
    def _text_only(cls, content: Any) -> Any:
        return text_only(content, _MEDIA_PARTS, "part")

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)

    def template_dict(self) -> dict[str, Any]:
        """The message as chat templates take it: plain text content, OpenAI's tool fields kept."""
        message: dict[str, Any] = {"role": "system" if self.role == "developer" else self.role, "content": self.text()}
        if self.name is not None:
            message["name"] = self.name
        if self.tool_calls:
            message["tool_calls"] = [
                {"id": c.id, "type": c.type, "function": {"name": c.function.name, "arguments": c.function.arguments}}
                for c in self.tool_calls
            ]
        if self.tool_call_id is not None:
            message["tool_call_id"] = self.tool_call_id
        return message


class FunctionDefinition(RequestModel):
    name: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[a-zA-Z0-9_-]+$")]
    description: str | None = None
    parameters: Schema | None = None
    strict: bool | None = None

    def ignored_fields(self, prefix: str = "") -> list[str]:
        """Also the keywords of a non-strict tool's parameters that its grammar leaves out; a strict
        tool's are refused when its constraint is checked (``server/protocol/schema_keywords.py``)."""
        found = super().ignored_fields(prefix)
        if not self.strict and self.parameters:
            found += [f"{prefix}parameters.{keyword}" for keyword in unenforced_keywords(self.parameters)]
        return found


class Tool(RequestModel):
    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(RequestModel):
    name: Name


class NamedToolChoice(RequestModel):
    type: Literal["function"]
    function: NamedFunction


ToolChoice = Literal["none", "auto", "required"] | NamedToolChoice


def check_tool_choice(tools: list[Tool] | None, tool_choice: ToolChoice | None) -> None:
    """A tool_choice other than none needs tools, and a named one a tool of that name (raises a field error)."""
    if tool_choice is None or tool_choice == "none":
        return
    if not tools:
        raise field_error("tool_choice", "tool_choice needs tools to choose from.")
    if isinstance(tool_choice, NamedToolChoice) and tool_choice.function.name not in {t.function.name for t in tools}:
        raise field_error(
            "tool_choice", f"tool_choice names '{tool_choice.function.name}', which is not among the tools."
        )


class ChatCompletionRequest(SamplingFields):
    messages: Annotated[list[ChatMessage], Field(min_length=1, max_length=MAX_MESSAGES)]
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: Annotated[bool, null_is(False, bool)] = False
    top_logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)
    tools: Annotated[list[Tool], Field(max_length=MAX_TOOLS)] | None = None
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: Annotated[bool, null_is(True, bool)] = True
    # vLLM's extensions for chat templates.
    chat_template_kwargs: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _tools_to_choose(self) -> Self:
        check_tool_choice(self.tools, self.tool_choice)
        return self

    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    def num_logprobs(self) -> int | None:
        return (self.top_logprobs or 0) if self.logprobs else None

    @field_validator("top_logprobs")
    @classmethod
    def _needs_logprobs(cls, top_logprobs: int | None, info: ValidationInfo) -> int | None:
        if top_logprobs and not info.data.get("logprobs"):
            raise PydanticCustomError("needs_logprobs", "top_logprobs needs logprobs: true")
        return top_logprobs


class TopLogprob(ResponseModel):
    token: str
    logprob: float
    bytes: list[int] | None


class TokenLogprob(ResponseModel):
    """One token of a chat choice's ``logprobs.content``, in OpenAI's shape."""

    token: str
    logprob: float
    bytes: list[int] | None
    top_logprobs: list[TopLogprob]


class ChatLogprobs(ResponseModel):
    content: list[TokenLogprob] | None
    refusal: None = None


class FunctionCallOut(ResponseModel):
    name: str
    arguments: str  # JSON text


class ToolCallOut(ResponseModel):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCallOut


class ResponseMessage(ResponseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None
    refusal: None = None
    # vLLM's field for a reasoning model's thinking, kept out of ``content``.
    reasoning_content: str | None = Absent
    tool_calls: list[ToolCallOut] | None = Absent


class ChatChoice(ResponseModel):
    index: int
    message: ResponseMessage
    logprobs: ChatLogprobs | None = None
    finish_reason: ChoiceFinishReason


class ChatCompletion(Envelope):
    object: Literal["chat.completion"] = "chat.completion"
    choices: list[ChatChoice]
    usage: Usage
    # Only when asked for (vLLM's extension), keeping OpenAI's shape otherwise.
    prompt_logprobs: PromptLogprobs | None = Absent


class FunctionCallDelta(ResponseModel):
    name: str | None = Absent
    arguments: str = ""


class ToolCallDeltaOut(ResponseModel):
    """A streamed fragment of a call: the first carries its id, type and name; later ones argument text."""

    index: int
    id: str | None = Absent
    type: Literal["function"] | None = Absent
    function: FunctionCallDelta


class Delta(ResponseModel):
    """A streamed message fragment; OpenAI leaves out the fields a fragment does not carry."""

    role: Literal["assistant"] | None = Absent
    content: str | None = Absent
    reasoning_content: str | None = Absent
    tool_calls: list[ToolCallDeltaOut] | None = Absent


class ChatChunkChoice(ResponseModel):
    index: int
    delta: Delta
    logprobs: ChatLogprobs | None = None
    finish_reason: ChoiceFinishReason | None = None


class ChatCompletionChunk(Envelope):
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    choices: list[ChatChunkChoice]
