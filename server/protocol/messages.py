"""Anthropic's Messages API request (``POST /v1/messages``, ``/v1/messages/count_tokens``).

Validated here in Anthropic's own terms (its field names in every 400), then translated into a
chat completion request (``server/endpoints/messages/translate.py``), so sampling, tools,
reasoning, stop strings, usage and the gateway are chat completions' own. Fields ise has no use
for are kept, like every request's (``RequestModel``), and named in ``x-ignored-params``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Self

from pydantic import Field, field_validator, model_validator

from server.protocol.base import (
    MAX_CONTENT_PARTS,
    MAX_MESSAGES,
    MAX_STOP_STRINGS,
    MAX_TOOLS,
    Name,
    RequestModel,
    StopString,
    field_error,
)
from server.protocol.chat import text_only
from server.protocol.constraint_limits import Schema
from server.protocol.schema_keywords import unenforced_keywords

# Blocks a text-only model cannot read: a 400 that says so, not a complaint about the block's shape.
_MEDIA_BLOCKS = {"image": "an image", "document": "a document", "search_result": "a search result"}


def _text_only(blocks: Any) -> Any:
    return text_only(blocks, _MEDIA_BLOCKS, "block")


class CacheControl(RequestModel):
    """Anthropic's prompt-caching mark: taken, with no more to do, since ise caches every prefix."""

    type: Literal["ephemeral"] = "ephemeral"
    ttl: str | None = None


class TextBlock(RequestModel):
    type: Literal["text"]
    text: str
    cache_control: CacheControl | None = None
    citations: None = None


class ThinkingBlock(RequestModel):
    """Earlier thinking in the history: accepted and left out of the prompt, as chat templates leave it."""

    type: Literal["thinking"]
    thinking: str
    signature: str | None = None
    cache_control: CacheControl | None = None


class RedactedThinkingBlock(RequestModel):
    type: Literal["redacted_thinking"]
    data: str


class ToolUseBlock(RequestModel):
    """A call an assistant turn in the history made."""

    type: Literal["tool_use"]
    id: Name
    name: Name
    input: dict[str, Any]
    cache_control: CacheControl | None = None


class ToolResultBlock(RequestModel):
    """A tool's answer to a call, in a user turn."""

    type: Literal["tool_result"]
    tool_use_id: Name
    content: str | Annotated[list[TextBlock], Field(max_length=MAX_CONTENT_PARTS)] | None = None
    is_error: bool | None = None
    cache_control: CacheControl | None = None

    @field_validator("content", mode="before")
    @classmethod
    def _check_content(cls, content: Any) -> Any:
        return _text_only(content)

    def text(self) -> str:
        if self.content is None or isinstance(self.content, str):
            return self.content or ""
        return "".join(block.text for block in self.content)


ContentBlock = Annotated[
    TextBlock | ThinkingBlock | RedactedThinkingBlock | ToolUseBlock | ToolResultBlock, Field(discriminator="type")
]


class InputMessage(RequestModel):
    role: Literal["user", "assistant"]
    content: str | Annotated[list[ContentBlock], Field(max_length=MAX_CONTENT_PARTS)]

    @field_validator("content", mode="before")
    @classmethod
    def _check_content(cls, content: Any) -> Any:
        return _text_only(content)


class ToolDefinition(RequestModel):
    """A client tool; Anthropic's server tools (a ``type`` such as ``web_search_20250305``) are not run here."""

    name: Annotated[str, Field(min_length=1, max_length=128)]
    description: str | None = None
    input_schema: Schema | None = None
    type: str | None = None
    cache_control: CacheControl | None = None

    @property
    def is_client_tool(self) -> bool:
        return self.type in (None, "custom")

    def ignored_fields(self, prefix: str = "") -> list[str]:
        """Also the keywords of the input schema its grammar leaves out (``server/protocol/schema_keywords.py``)."""
        found = super().ignored_fields(prefix)
        if self.input_schema:
            found += [f"{prefix}input_schema.{keyword}" for keyword in unenforced_keywords(self.input_schema)]
        return found


class ToolChoice(RequestModel):
    type: Literal["auto", "any", "tool", "none"]
    name: Name | None = None
    disable_parallel_tool_use: bool | None = None

    @model_validator(mode="after")
    def _named(self) -> Self:
        if self.type == "tool" and not self.name:
            raise field_error("tool_choice.name", "tool_choice of type 'tool' needs the tool's 'name'.")
        return self


class ThinkingConfig(RequestModel):
    type: Literal["enabled", "disabled", "adaptive"]
    budget_tokens: int | None = Field(None, ge=1)


class Metadata(RequestModel):
    user_id: Name | None = None


class MessagesInput(RequestModel):
    """What ``/v1/messages`` and ``/v1/messages/count_tokens`` both take: the prompt and its tools."""

    model: Name
    messages: Annotated[list[InputMessage], Field(min_length=1, max_length=MAX_MESSAGES)]
    system: str | Annotated[list[TextBlock], Field(max_length=MAX_CONTENT_PARTS)] | None = None
    tools: Annotated[list[ToolDefinition], Field(max_length=MAX_TOOLS)] | None = None
    tool_choice: ToolChoice | None = None
    thinking: ThinkingConfig | None = None

    @model_validator(mode="after")
    def _tools_to_choose(self) -> Self:
        choice = self.tool_choice
        if choice is None or choice.type == "none":
            return self
        names = {tool.name for tool in self.tools or () if tool.is_client_tool}
        if not names:
            raise field_error("tool_choice", "tool_choice needs tools to choose from.")
        if choice.type == "tool" and choice.name not in names:
            raise field_error("tool_choice.name", f"tool_choice names '{choice.name}', which is not among the tools.")
        return self


class MessagesRequest(MessagesInput):
    max_tokens: int = Field(ge=1)
    stop_sequences: Annotated[list[StopString], Field(max_length=MAX_STOP_STRINGS)] | None = None
    temperature: float | None = Field(None, ge=0.0, le=1.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    top_k: int | None = Field(None, ge=0)
    stream: bool | None = None
    metadata: Metadata | None = None


class CountTokensRequest(MessagesInput):
    pass
