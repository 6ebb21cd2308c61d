"""The OpenAI wire format: request and response models for chat and text completions.

Requests accept every field, so SDKs and UIs that send fields ise has no use for keep working,
but nothing is ignored silently: a field that takes no effect is named in the response's
``x-ignored-params`` header (and refused under ``--strict``; see ``ignored_fields``), and a field
whose omission would change the answer in a way the client relies on is refused outright (see
``unsupported_fields``). vLLM's extensions are accepted so vLLM clients work unchanged.

Every number a request carries is bounded here, at the edge, to what the engines can take:
finite floats only (Python's JSON parser turns ``1e400`` into inf and accepts ``NaN``), seeds in
the signed 64-bit range torch and vLLM use, penalties where float32 sampling stays finite.
"""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError

from adapters.engine import SEED_MAX, SEED_MIN
from server.protocol.constraint_limits import Choice, GrammarText, Regex, Schema, SchemaOrText

FinishReason = Literal["stop", "length", "tool_calls"]

# Bounds on the sizes of a request's parts, checked while it is parsed, so oversized requests are
# refused (400 naming the field) before any work is done for them. OpenAI's own limits where it
# has them (n up to 128); elsewhere far above what a client needs and far below what would let
# one request cost the server seconds (a stop string is matched against each new token's text).
MAX_NAME_CHARS = 256  # model, user, a message's name
MAX_STOP_STRINGS = 16  # OpenAI allows 4; vLLM clients send more
MAX_STOP_CHARS = 1024
MAX_STOP_TOKEN_IDS = 1024
MAX_MESSAGES = 4096
MAX_CONTENT_PARTS = 1024
MAX_PROMPTS = 256  # a batch of prompts in one text completion
MAX_CHOICES = 128  # prompts x n: each one a request in the engine
MAX_LOGIT_BIAS = 1024  # entries of logit_bias (OpenAI documents no limit; 300 is common)
MAX_LOGPROBS = 20  # OpenAI's top_logprobs bound; vLLM's default --max-logprobs
MAX_TOOLS = 128  # OpenAI's limit on tools per request
# Structured-output constraints have their own bounds: server/constraint_limits.py.

Name = Annotated[str, Field(max_length=MAX_NAME_CHARS)]


def _null_is(default: Any, schema: Any) -> BeforeValidator:
    """OpenAI's nullable fields: ``null`` means the default (clients send unset options as null).

    ``schema`` is the field's type with its bounds, published as ``schema | None``.
    """
    return BeforeValidator(lambda value: default if value is None else value, json_schema_input_type=schema | None)


Penalty = Annotated[float, Field(ge=-2.0, le=2.0)]
Choices = Annotated[int, Field(ge=1, le=MAX_CHOICES)]
StopString = Annotated[str, Field(max_length=MAX_STOP_CHARS)]
Probability = Annotated[float, Field(ge=0.0, le=1.0)]
Count = Annotated[int, Field(ge=0)]
Bias = Annotated[float, Field(ge=-100.0, le=100.0)]


# OpenAI's defaults of fields ise does not act on: a request that sends one at its default asks
# for nothing ise fails to do, so it is not reported as ignored.
_NO_EFFECT_VALUES: dict[str, tuple[object, ...]] = {
    "store": (False,),
    "service_tier": ("auto", "default"),
    "parallel_tool_calls": (True, False),
    "skip_special_tokens": (True,),
    "spaces_between_special_tokens": (True,),
    "include_obfuscation": (False,),
    "add_generation_prompt": (True,),
}


class _Request(BaseModel):
    # Fields ise does not declare are kept (not refused, not dropped unseen): ``ignored_fields``
    # names them for the x-ignored-params header.
    model_config = ConfigDict(extra="allow", allow_inf_nan=False, strict=True)

    def ignored_fields(self, prefix: str = "") -> list[str]:
        """Fields sent that take no effect, as dotted paths (``stream_options.include_obfuscation``).

        ``null`` and OpenAI's own default values are not counted: they ask for nothing.
        """
        # An ordered set: a body can name a hundred thousand fields, each message its own.
        found = dict.fromkeys(
            f"{prefix}{name}"
            for name, value in (self.model_extra or {}).items()
            if value is not None and not (name in _NO_EFFECT_VALUES and value in _NO_EFFECT_VALUES[name])
        )
        for name in type(self).model_fields:
            value = getattr(self, name)
            # A list holds models or none (its type says which), so its first item tells: a prompt
            # of a million token ids is not walked.
            items = value if isinstance(value, list) and value and isinstance(value[0], _Request) else [value]
            for item in items:
                if isinstance(item, _Request):
                    found.update(dict.fromkeys(item.ignored_fields(f"{prefix}{name}.")))
        return list(found)


class StreamOptions(_Request):
    include_usage: Annotated[bool, _null_is(False, bool)] = False
    # vLLM's: every chunk carries the usage so far.
    continuous_usage_stats: Annotated[bool, _null_is(False, bool)] = False


class JSONSchemaFormat(_Request):
    name: Name = "response"
    # ``schema`` shadows a BaseModel attribute, hence the alias.
    json_schema: Schema = Field(default_factory=dict, alias="schema")
    strict: bool | None = None


class ResponseFormat(_Request):
    """OpenAI's ``response_format``; vLLM's ``structural_tag`` is not supported."""

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JSONSchemaFormat | None = None


class StructuredOutputsFields(_Request):
    """vLLM's ``structured_outputs`` request field: exactly one constraint."""

    json_: SchemaOrText | None = Field(None, alias="json")
    regex: Regex | None = None
    choice: Choice | None = None
    grammar: GrammarText | None = None
    json_object: bool | None = None


class SamplingFields(_Request):
    """Sampling settings that chat and text completions share."""

    model: Name
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    top_k: int | None = Field(None, ge=-1)
    min_p: Annotated[Probability, _null_is(0.0, Probability)] = 0.0
    seed: int | None = Field(None, ge=SEED_MIN, le=SEED_MAX)
    stop: StopString | Annotated[list[StopString], Field(max_length=MAX_STOP_STRINGS)] | None = None
    n: Annotated[Choices, _null_is(1, Choices)] = 1
    presence_penalty: Annotated[Penalty, _null_is(0.0, Penalty)] = 0.0
    frequency_penalty: Annotated[Penalty, _null_is(0.0, Penalty)] = 0.0
    # Token ids (as JSON object keys, so strings) to a bias added to their logits.
    logit_bias: Annotated[dict[str, Bias], Field(max_length=MAX_LOGIT_BIAS)] | None = None
    stream: Annotated[bool, _null_is(False, bool)] = False
    stream_options: StreamOptions | None = None
    user: Name | None = None
    response_format: ResponseFormat | None = None
    # vLLM's extensions, so clients written for vLLM work unchanged.
    ignore_eos: Annotated[bool, _null_is(False, bool)] = False
    min_tokens: Annotated[Count, _null_is(0, Count)] = 0
    # vLLM takes any positive value; dividing logits by less than ~1e-36 overflows float32, and
    # outside [0.01, 100] the penalty is a ban or a forced repeat, not a nudge.
    repetition_penalty: float | None = Field(None, ge=0.01, le=100.0)
    stop_token_ids: Annotated[list[int], Field(max_length=MAX_STOP_TOKEN_IDS)] | None = None
    include_stop_str_in_output: Annotated[bool, _null_is(False, bool)] = False
    prompt_logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)
    structured_outputs: StructuredOutputsFields | None = None
    # vLLM's older names for structured_outputs' fields.
    guided_json: SchemaOrText | None = None
    guided_regex: Regex | None = None
    guided_choice: Choice | None = None
    guided_grammar: GrammarText | None = None
    use_beam_search: Annotated[bool, _null_is(False, bool)] = False

    def stop_strings(self) -> list[str]:
        if self.stop is None:
            return []
        stops = [self.stop] if isinstance(self.stop, str) else self.stop
        return [s for s in stops if s]

    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage

    def continuous_usage(self) -> bool:
        """vLLM's continuous_usage_stats, which (as in vLLM) takes effect with include_usage."""
        return self.include_usage() and self.stream_options is not None and self.stream_options.continuous_usage_stats

    def num_logprobs(self) -> int | None:
        """Top alternatives per sampled token the response reports; None: no logprobs."""
        return None

    def unsupported_fields(self) -> list[str]:
        """Fields set to values ise cannot honour: refused rather than silently ignored."""
        return ["use_beam_search"] if self.use_beam_search else []


class TextPart(_Request):
    type: Literal["text"]
    text: str


class FunctionCall(_Request):
    name: Name
    arguments: str


class ToolCallParam(_Request):
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


class ChatMessage(_Request):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | Annotated[list[TextPart], Field(max_length=MAX_CONTENT_PARTS)] | None = None
    name: Name | None = None
    tool_calls: Annotated[list[ToolCallParam], Field(max_length=MAX_TOOLS)] | None = None
    tool_call_id: Name | None = None

    @field_validator("content", mode="before")
    @classmethod
    def _text_only(cls, content: Any) -> Any:
        """Images, audio and files get a 400 saying why, not a complaint about the part's shape."""
        if isinstance(content, list):
            for index, part in enumerate(content):
                kind = part.get("type") if isinstance(part, dict) else None
                if isinstance(kind, str) and kind in _MEDIA_PARTS:
                    raise PydanticCustomError(
                        "text_only",
                        "part {index} is {what} ('{kind}'), but this model is text-only: send text parts only",
                        {"index": index, "what": _MEDIA_PARTS[kind], "kind": kind},
                    )
        return content

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


class FunctionDefinition(_Request):
    name: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[a-zA-Z0-9_-]+$")]
    description: str | None = None
    parameters: Schema | None = None
    strict: bool | None = None


class Tool(_Request):
    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(_Request):
    name: Name


class NamedToolChoice(_Request):
    type: Literal["function"]
    function: NamedFunction


ToolChoice = Literal["none", "auto", "required"] | NamedToolChoice


class ChatCompletionRequest(SamplingFields):
    messages: Annotated[list[ChatMessage], Field(min_length=1, max_length=MAX_MESSAGES)]
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: Annotated[bool, _null_is(False, bool)] = False
    top_logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)
    tools: Annotated[list[Tool], Field(max_length=MAX_TOOLS)] | None = None
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: Annotated[bool, _null_is(True, bool)] = True
    # vLLM's extensions for chat templates.
    chat_template_kwargs: dict[str, Any] | None = None

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


class CompletionRequest(SamplingFields):
    prompt: (
        str
        | Annotated[list[str], Field(max_length=MAX_PROMPTS)]
        | list[int]
        | Annotated[list[list[int]], Field(max_length=MAX_PROMPTS)]
    )
    # OpenAI's legacy completions stop at 16 tokens unless told otherwise.
    max_tokens: int | None = Field(16, ge=1)
    echo: Annotated[bool, _null_is(False, bool)] = False
    logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)
    suffix: str | None = None
    best_of: int | None = None

    def requested_max_tokens(self) -> int | None:
        return self.max_tokens

    def num_logprobs(self) -> int | None:
        return self.logprobs

    def unsupported_fields(self) -> list[str]:
        found = super().unsupported_fields()
        if self.suffix:
            found.append("suffix")
        if self.best_of is not None and self.best_of != self.n:
            found.append("best_of")
        return found


class _Response(BaseModel):
    pass


def _is_none(value: object) -> bool:
    return value is None


# A field OpenAI leaves out of a response (rather than sending null) when it has no value.
Absent: Any = Field(None, exclude_if=_is_none)


class PromptTokensDetails(_Response):
    cached_tokens: int = 0  # prompt tokens whose KV came from the prefix cache


class CompletionTokensDetails(_Response):
    reasoning_tokens: int = 0


class Usage(_Response):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails | None = Absent
    completion_tokens_details: CompletionTokensDetails | None = Absent


class TopLogprob(_Response):
    token: str
    logprob: float
    bytes: list[int] | None


class TokenLogprob(_Response):
    """One token of a chat choice's ``logprobs.content``, in OpenAI's shape."""

    token: str
    logprob: float
    bytes: list[int] | None
    top_logprobs: list[TopLogprob]


class ChatLogprobs(_Response):
    content: list[TokenLogprob] | None
    refusal: None = None


class CompletionLogprobs(_Response):
    """A text choice's ``logprobs``: parallel lists, one entry per token (OpenAI's legacy shape).

    ``token_logprobs`` and ``top_logprobs`` hold null for the first prompt token when the prompt
    is echoed; ``text_offset`` is each token's character offset in the choice's text.
    """

    text_offset: list[int]
    token_logprobs: list[float | None]
    tokens: list[str]
    top_logprobs: list[dict[str, float] | None] | None


class FunctionCallOut(_Response):
    name: str
    arguments: str  # JSON text


class ToolCallOut(_Response):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCallOut


class ResponseMessage(_Response):
    role: Literal["assistant"] = "assistant"
    content: str | None
    refusal: None = None
    # vLLM's field for a reasoning model's thinking, kept out of ``content``.
    reasoning_content: str | None = Absent
    tool_calls: list[ToolCallOut] | None = Absent


class ChatChoice(_Response):
    index: int
    message: ResponseMessage
    logprobs: ChatLogprobs | None = None
    finish_reason: FinishReason


class _Envelope(_Response):
    """The fields every completion response and chunk shares, in OpenAI's order.

    Subclasses narrow ``object`` and ``choices``; pydantic keeps overridden fields in place.
    """

    id: str
    object: str
    created: int
    model: str
    choices: list[Any]
    usage: Usage | None = None
    system_fingerprint: str | None = None


class PromptLogprob(_Response):
    """vLLM's entry for one token at one prompt position; ``rank`` 1 is the most likely (None: not in the top)."""

    logprob: float
    rank: int | None
    decoded_token: str


# vLLM's prompt_logprobs: per prompt position, token id (as a string) -> its entry; None for the first.
PromptLogprobs = list[dict[str, PromptLogprob] | None]


class ChatCompletion(_Envelope):
    object: Literal["chat.completion"] = "chat.completion"
    choices: list[ChatChoice]
    usage: Usage
    # Only when asked for (vLLM's extension), keeping OpenAI's shape otherwise.
    prompt_logprobs: PromptLogprobs | None = Absent


class FunctionCallDelta(_Response):
    name: str | None = Absent
    arguments: str = ""


class ToolCallDeltaOut(_Response):
    """A streamed fragment of a call: the first carries its id, type and name; later ones argument text."""

    index: int
    id: str | None = Absent
    type: Literal["function"] | None = Absent
    function: FunctionCallDelta


class Delta(_Response):
    """A streamed message fragment; OpenAI leaves out the fields a fragment does not carry."""

    role: Literal["assistant"] | None = Absent
    content: str | None = Absent
    reasoning_content: str | None = Absent
    tool_calls: list[ToolCallDeltaOut] | None = Absent


class ChatChunkChoice(_Response):
    index: int
    delta: Delta
    logprobs: ChatLogprobs | None = None
    finish_reason: FinishReason | None = None


class ChatCompletionChunk(_Envelope):
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    choices: list[ChatChunkChoice]


class CompletionChoice(_Response):
    index: int
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: FinishReason | None = None
    prompt_logprobs: PromptLogprobs | None = Absent


class Completion(_Envelope):
    """Both the whole text completion and each of its streamed chunks: OpenAI uses one shape."""

    object: Literal["text_completion"] = "text_completion"
    choices: list[CompletionChoice]


class ModelPermission(_Response):
    """vLLM's (and OpenAI's former) permission entry of a model card: what clients may do with it."""

    id: str = Field(default_factory=lambda: new_id("modelperm"))
    object: Literal["model_permission"] = "model_permission"
    created: int = Field(default_factory=lambda: now())
    allow_create_engine: bool = False
    allow_sampling: bool = True
    allow_logprobs: bool = True
    allow_search_indices: bool = False
    allow_view: bool = True
    allow_fine_tuning: bool = False
    organization: str = "*"
    group: str | None = None
    is_blocking: bool = False


class ModelCard(_Response):
    """OpenAI's model object with vLLM's fields: clients written for vLLM read ``root`` (``vllm bench
    serve`` takes it as the tokenizer to load) and ``max_model_len``."""

    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "ise"
    root: str | None = None  # where the model was loaded from, as given (a directory or a hub id)
    parent: str | None = None  # the base model of an adapter; ise serves no adapters
    max_model_len: int
    permission: list[ModelPermission] = Field(default_factory=lambda: [ModelPermission()])


class ModelList(_Response):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class Health(_Response):
    """What ``/health`` answers while the engine runs."""

    status: Literal["ok"] = "ok"


class ErrorDetail(_Response):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(_Response):
    error: ErrorDetail


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def now() -> int:
    return int(time.time())
