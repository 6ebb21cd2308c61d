"""OpenAI's Responses API request: input items, tools, the text format; checked here, before any work.

The request is translated into a chat completion request (``server/endpoints/responses/translate.py``)
and served by the chat pipeline, so only what that translation needs is modelled: every other field
is kept (``RequestModel`` allows extras) and named in ``x-ignored-params``. Hosted tools (web search,
file search, ...) are kept as sent (``OtherTool``) for the same report. Free-text ``custom`` tools
(Codex's ``apply_patch``) are offered as tools whose one argument is the text. Image, file and audio
parts get a 400 naming the part: the model is text-only.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Self

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from server.protocol.base import (
    MAX_CONTENT_PARTS,
    MAX_LOGPROBS,
    MAX_MESSAGES,
    MAX_TOOLS,
    Name,
    RequestModel,
    field_error,
    null_is,
)
from server.protocol.chat import FunctionDefinition
from server.protocol.constraint_limits import MAX_GRAMMAR_CHARS, MAX_REGEX_CHARS, Schema

# Include values ise acts on; the others are named in x-ignored-params.
OUTPUT_LOGPROBS = "message.output_text.logprobs"


class TextPart(RequestModel):
    """A message's text: the user's ``input_text``, or an earlier answer's ``output_text`` sent back."""

    type: Literal["input_text", "output_text", "text"]
    text: str
    # What an output_text part carries when a client sends an earlier answer back as it got it.
    annotations: list[Any] | None = None
    logprobs: list[Any] | None = None


class RefusalPart(RequestModel):
    type: Literal["refusal"]
    refusal: str


def _kind(value: Any, default: str | None = None) -> str | None:
    """The ``type`` of an item or part, read for a discriminated union (a message may leave it out)."""
    kind = value.get("type", default) if isinstance(value, dict) else getattr(value, "type", default)
    return kind if isinstance(kind, str) else None


ContentPart = Annotated[
    Annotated[TextPart, Tag("input_text")]
    | Annotated[TextPart, Tag("output_text")]
    | Annotated[TextPart, Tag("text")]
    | Annotated[RefusalPart, Tag("refusal")],
    Discriminator(_kind),
]

_MEDIA_PARTS = {"input_image": "an image", "input_file": "a file", "input_audio": "audio"}


def _text_only(content: Any) -> Any:
    """Images, files and audio get a 400 saying why, not a complaint about the part's shape."""
    if isinstance(content, list):
        for index, part in enumerate(content):
            kind = _kind(part)
            if kind in _MEDIA_PARTS:
                raise PydanticCustomError(
                    "text_only",
                    "part {index} is {what} ('{kind}'), but this model is text-only: send text parts only",
                    {"index": index, "what": _MEDIA_PARTS[kind], "kind": kind},
                )
    return content


Content = str | Annotated[list[ContentPart], Field(max_length=MAX_CONTENT_PARTS)]


def content_text(content: Content) -> str:
    if isinstance(content, str):
        return content
    return "".join(part.text if isinstance(part, TextPart) else part.refusal for part in content)


class MessageItem(RequestModel):
    type: Literal["message"] = "message"
    role: Literal["user", "assistant", "system", "developer"]
    content: Content
    id: Name | None = None
    status: str | None = None
    phase: str | None = None  # an assistant message's commentary or final answer, as OpenAI marks them

    _check_content = field_validator("content", mode="before")(_text_only)


class FunctionCallItem(RequestModel):
    """A call an earlier answer made, sent back with its result."""

    type: Literal["function_call"]
    call_id: Name
    name: Name
    arguments: str
    id: Name | None = None
    status: str | None = None
    namespace: Name | None = None


class CustomToolCallItem(RequestModel):
    """A call of a free-text tool an earlier answer made, sent back with its result."""

    type: Literal["custom_tool_call"]
    call_id: Name
    name: Name
    input: str
    id: Name | None = None
    status: str | None = None
    namespace: Name | None = None


class CustomToolCallOutputItem(RequestModel):
    type: Literal["custom_tool_call_output"]
    call_id: Name
    output: Content
    id: Name | None = None

    _check_output = field_validator("output", mode="before")(_text_only)


class FunctionCallOutputItem(RequestModel):
    type: Literal["function_call_output"]
    call_id: Name
    output: Content
    id: Name | None = None
    status: str | None = None

    _check_output = field_validator("output", mode="before")(_text_only)


class ReasoningItem(RequestModel):
    """An earlier answer's thinking, sent back: not shown to the model again, as chat templates drop it."""

    type: Literal["reasoning"]
    id: Name | None = None
    summary: list[Any] | None = None
    content: list[Any] | None = None
    encrypted_content: str | None = None
    status: str | None = None


InputItem = Annotated[
    Annotated[MessageItem, Tag("message")]
    | Annotated[FunctionCallItem, Tag("function_call")]
    | Annotated[FunctionCallOutputItem, Tag("function_call_output")]
    | Annotated[CustomToolCallItem, Tag("custom_tool_call")]
    | Annotated[CustomToolCallOutputItem, Tag("custom_tool_call_output")]
    | Annotated[ReasoningItem, Tag("reasoning")],
    Discriminator(lambda value: _kind(value, "message")),
]


_ITEM: TypeAdapter[Any] = TypeAdapter(InputItem)


def _input_items(value: Any) -> Any:
    """A string is one user message; each item is checked here so a 400 names it as the client wrote it
    (``input.0.content``), not by pydantic's location, which names the union's branch."""
    if isinstance(value, str):
        return [MessageItem(role="user", content=value)]
    if not isinstance(value, list) or len(value) > MAX_MESSAGES:
        return value  # the field's own type and bounds refuse it
    items = []
    for index, item in enumerate(value):
        try:
            items.append(_ITEM.validate_python(item, strict=False) if isinstance(item, dict) else item)
        except ValidationError as exc:
            raise _item_error(index, item, exc) from None
    return items


def _item_error(index: int, item: dict[str, Any], exc: ValidationError) -> PydanticCustomError:
    """The first error of item ``index`` as a 400 naming the deepest field of it the client sent."""
    error = exc.errors()[0]
    path = ["input", str(index)]
    node: Any = item  # the part of the item the location has reached: a dict or a list, as sent
    for part in error["loc"][1:]:  # the first is the item's type, the union's branch
        found = part in node if isinstance(node, dict) else isinstance(part, int) and 0 <= part < len(node)
        if found:
            node = node[part]
        else:
            if error["type"] == "missing":
                path.append(str(part))
            break
        path.append(str(part))
    param = ".".join(path)
    if error["type"] == "missing":
        return field_error(param, f"Missing required parameter: '{param}'.")
    return field_error(param, f"Invalid value for '{param}': {error['msg']}.", code="invalid_value")


class FunctionTool(FunctionDefinition):
    """A function tool: chat's function definition, flattened into the tool (the Responses API's shape)."""

    type: Literal["function"]


class NamespaceTool(RequestModel):
    """Codex's group of function tools under one name: its functions are offered as they are."""

    type: Literal["namespace"]
    name: Name
    description: str | None = None
    tools: Annotated[list[FunctionTool], Field(max_length=MAX_TOOLS)]


class TextInputFormat(RequestModel):
    type: Literal["text"]


class GrammarInputFormat(RequestModel):
    """A custom tool's input grammar: a regex is enforced where the tool's arguments are (a ``pattern``
    on the text); Lark is not (xgrammar reads no Lark) and is named in x-ignored-params."""

    type: Literal["grammar"]
    syntax: Literal["lark", "regex"]
    definition: Annotated[str, Field(max_length=MAX_GRAMMAR_CHARS)]

    @model_validator(mode="after")
    def _bounded_regex(self) -> Self:
        if self.syntax == "regex" and len(self.definition) > MAX_REGEX_CHARS:
            raise field_error("definition", f"a regex is limited to {MAX_REGEX_CHARS} characters.")
        return self


class CustomTool(RequestModel):
    """A free-text tool: the model writes its input as plain text, not JSON arguments."""

    type: Literal["custom"]
    name: Name
    description: str | None = None
    format: Annotated[TextInputFormat | GrammarInputFormat, Field(discriminator="type")] | None = None


class OtherTool(BaseModel):
    """A hosted tool (``web_search``, ``file_search``, ...): kept as sent, and named in x-ignored-params
    (ise runs no hosted tools)."""

    model_config = ConfigDict(extra="allow")

    type: str


def _tool_kind(value: Any) -> str:
    kind = _kind(value)
    return kind if kind in ("function", "namespace", "custom") else "other"


ToolItem = Annotated[
    Annotated[FunctionTool, Tag("function")]
    | Annotated[NamespaceTool, Tag("namespace")]
    | Annotated[CustomTool, Tag("custom")]
    | Annotated[OtherTool, Tag("other")],
    Discriminator(_tool_kind),
]


class FunctionChoice(RequestModel):
    """A named function or custom tool the answer must call."""

    type: Literal["function", "custom"]
    name: Name


class OtherChoice(BaseModel):
    """A tool_choice naming a hosted tool or a set of allowed tools: refused, ise cannot honour it."""

    model_config = ConfigDict(extra="allow")

    type: str


ToolChoice = Literal["none", "auto", "required"] | FunctionChoice | OtherChoice


class TextFormat(RequestModel):
    type: Literal["text", "json_object", "json_schema"]
    name: Name | None = None
    # ``schema`` shadows a BaseModel attribute, hence the alias.
    json_schema: Schema | None = Field(None, alias="schema")
    strict: bool | None = None
    description: str | None = None


class TextConfig(RequestModel):
    format: TextFormat | None = None
    verbosity: Literal["low", "medium", "high"] | None = None


class ReasoningConfig(RequestModel):
    effort: str | None = None
    summary: str | None = None
    generate_summary: str | None = None


class ResponsesRequest(RequestModel):
    model: Name
    input: Annotated[list[InputItem], Field(max_length=MAX_MESSAGES), BeforeValidator(_input_items)] = Field(
        default_factory=list
    )
    instructions: str | None = None
    previous_response_id: Name | None = None
    store: Annotated[bool, null_is(True, bool)] = True
    stream: Annotated[bool, null_is(False, bool)] = False
    background: bool | None = None
    max_output_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    tools: Annotated[list[ToolItem], Field(max_length=MAX_TOOLS)] | None = None
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: Annotated[bool, null_is(True, bool)] = True
    text: TextConfig | None = None
    reasoning: ReasoningConfig | None = None
    include: list[str] | None = None
    top_logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)
    metadata: Annotated[dict[str, Annotated[str, Field(max_length=512)]], Field(max_length=16)] | None = None
    user: Name | None = None
    prompt_cache_key: str | None = None
    truncation: Literal["auto", "disabled"] | None = None
    # Fields that change what is answered so much that ignoring them would mislead: refused.
    conversation: Any = None
    prompt: Any = None

    @model_validator(mode="after")
    def _refusals(self) -> Self:
        if self.background:
            raise field_error("background", "ise does not run responses in the background: send background false.")
        for name in ("conversation", "prompt"):
            if getattr(self, name) is not None:
                raise field_error(
                    name, f"ise does not support '{name}': send the conversation as input or previous_response_id."
                )
        fmt = self.text.format if self.text is not None else None
        if fmt is not None and fmt.type == "json_schema" and fmt.json_schema is None:
            raise field_error("text.format.schema", "text.format of type 'json_schema' needs 'schema'.")
        return self

    def items(self) -> list[Any]:
        return list(self.input)

    def wants_logprobs(self) -> bool:
        return OUTPUT_LOGPROBS in (self.include or ()) or bool(self.top_logprobs)
