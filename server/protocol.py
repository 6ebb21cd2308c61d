"""The OpenAI wire format: request and response models for chat and text completions.

Requests accept (and ignore) OpenAI fields ise has no use for, so SDKs and UIs that send them
keep working; fields whose silent omission would change the answer are refused instead (see
``unsupported_fields``). vLLM's sampling extensions are accepted so vLLM benchmark clients work.

Every number a request carries is bounded here, at the edge, to what the engines can take:
finite floats only (Python's JSON parser turns ``1e400`` into inf and accepts ``NaN``), seeds in
the signed 64-bit range torch and vLLM use, penalties where float32 sampling stays finite.
"""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_serializer

from adapters.engine import SEED_MAX, SEED_MIN

FinishReason = Literal["stop", "length"]

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

Name = Annotated[str, Field(max_length=MAX_NAME_CHARS)]


def _null_is(default: Any, schema: Any) -> BeforeValidator:
    """OpenAI's nullable fields: ``null`` means the default (clients send unset options as null).

    ``schema`` is the field's type with its bounds, published as ``schema | None``.
    """
    return BeforeValidator(lambda value: default if value is None else value, json_schema_input_type=schema | None)


Penalty = Annotated[float, Field(ge=-2.0, le=2.0)]
Choices = Annotated[int, Field(ge=1, le=MAX_CHOICES)]
StopString = Annotated[str, Field(max_length=MAX_STOP_CHARS)]


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore", allow_inf_nan=False, strict=True)


class StreamOptions(_Request):
    include_usage: bool = False


class SamplingFields(_Request):
    """Sampling settings that chat and text completions share."""

    model: Name
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    top_k: int | None = Field(None, ge=-1)
    seed: int | None = Field(None, ge=SEED_MIN, le=SEED_MAX)
    stop: StopString | Annotated[list[StopString], Field(max_length=MAX_STOP_STRINGS)] | None = None
    n: Annotated[Choices, _null_is(1, Choices)] = 1
    presence_penalty: Annotated[Penalty, _null_is(0.0, Penalty)] = 0.0
    frequency_penalty: Annotated[Penalty, _null_is(0.0, Penalty)] = 0.0
    stream: Annotated[bool, _null_is(False, bool)] = False
    stream_options: StreamOptions | None = None
    user: Name | None = None
    logprobs: Any = None
    response_format: dict[str, Any] | None = None
    # vLLM's extensions, so benchmark clients written for vLLM work unchanged.
    ignore_eos: bool = False
    min_tokens: int = Field(0, ge=0)
    # vLLM takes any positive value; dividing logits by less than ~1e-36 overflows float32, and
    # outside [0.01, 100] the penalty is a ban or a forced repeat, not a nudge.
    repetition_penalty: float | None = Field(None, ge=0.01, le=100.0)
    stop_token_ids: list[int] = Field(default_factory=list, max_length=MAX_STOP_TOKEN_IDS)

    def stop_strings(self) -> list[str]:
        if self.stop is None:
            return []
        stops = [self.stop] if isinstance(self.stop, str) else self.stop
        return [s for s in stops if s]

    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage

    def unsupported_fields(self) -> list[str]:
        """Fields set to values ise cannot honour: refused rather than silently ignored."""
        found = []
        if self.logprobs:
            found.append("logprobs")
        if self.response_format and self.response_format.get("type", "text") != "text":
            found.append("response_format")
        return found


class TextPart(_Request):
    type: Literal["text"]
    text: str


class ChatMessage(_Request):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | Annotated[list[TextPart], Field(max_length=MAX_CONTENT_PARTS)] | None = None
    name: Name | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class ChatCompletionRequest(SamplingFields):
    messages: Annotated[list[ChatMessage], Field(min_length=1, max_length=MAX_MESSAGES)]
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    top_logprobs: int | None = None
    tools: list[dict[str, Any]] | None = None

    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    def unsupported_fields(self) -> list[str]:
        found = super().unsupported_fields()
        if self.top_logprobs:
            found.append("top_logprobs")
        if self.tools:
            found.append("tools")
        return found


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
    suffix: str | None = None
    best_of: int | None = None

    def requested_max_tokens(self) -> int | None:
        return self.max_tokens

    def unsupported_fields(self) -> list[str]:
        found = super().unsupported_fields()
        if self.echo:
            found.append("echo")
        if self.suffix:
            found.append("suffix")
        if self.best_of is not None and self.best_of != self.n:
            found.append("best_of")
        return found


class _Response(BaseModel):
    pass


class Usage(_Response):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ResponseMessage(_Response):
    role: Literal["assistant"] = "assistant"
    content: str
    refusal: None = None


class ChatChoice(_Response):
    index: int
    message: ResponseMessage
    logprobs: None = None
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


class ChatCompletion(_Envelope):
    object: Literal["chat.completion"] = "chat.completion"
    choices: list[ChatChoice]
    usage: Usage


class Delta(_Response):
    """A streamed message fragment; OpenAI leaves out the fields a fragment does not carry."""

    role: Literal["assistant"] | None = None
    content: str | None = None

    @model_serializer(mode="plain")
    def _without_absent(self) -> dict[str, str]:
        return {k: v for k, v in (("role", self.role), ("content", self.content)) if v is not None}


class ChatChunkChoice(_Response):
    index: int
    delta: Delta
    logprobs: None = None
    finish_reason: FinishReason | None = None


class ChatCompletionChunk(_Envelope):
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    choices: list[ChatChunkChoice]


class CompletionChoice(_Response):
    index: int
    text: str
    logprobs: None = None
    finish_reason: FinishReason | None = None


class Completion(_Envelope):
    """Both the whole text completion and each of its streamed chunks: OpenAI uses one shape."""

    object: Literal["text_completion"] = "text_completion"
    choices: list[CompletionChoice]


class ModelCard(_Response):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "ise"
    max_model_len: int


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
