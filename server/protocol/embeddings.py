"""OpenAI's embeddings request and response, with vLLM's truncation fields.

``input`` takes OpenAI's four shapes: a string, strings, token ids, or lists of token ids; each
input is embedded on its own. The bounds are OpenAI's (2,048 inputs a request, no empty input);
token ids are checked against the model's vocabulary by the endpoint, which knows it.
"""

from __future__ import annotations

from typing import Annotated, Literal, Self, cast

from pydantic import Field, model_validator

from server.protocol.base import Name, RequestModel, ResponseModel, field_error, null_is

MAX_EMBEDDING_INPUTS = 2048  # OpenAI's limit on inputs per request

TokenId = Annotated[int, Field(ge=0)]
EmbeddingInput = (
    str
    | Annotated[list[str], Field(max_length=MAX_EMBEDDING_INPUTS)]
    | Annotated[list[TokenId], Field(max_length=1_000_000)]
    | Annotated[list[Annotated[list[TokenId], Field(max_length=1_000_000)]], Field(max_length=MAX_EMBEDDING_INPUTS)]
)
EncodingFormat = Literal["float", "base64"]


class TruncationFields(RequestModel):
    """vLLM's truncation of long inputs, shared by the embeddings, score and rerank requests."""

    truncate_prompt_tokens: Annotated[int, Field(ge=-1)] | None = Field(
        None,
        description="Keep this many tokens of each input (-1: as many as the model takes) instead of refusing "
        "a longer input; which end is kept: truncation_side.",
    )
    truncation_side: Literal["left", "right"] | None = Field(
        None,
        description="With truncate_prompt_tokens: right keeps the first tokens, left the last; default the "
        "tokenizer's own (right for BERT-style tokenizers).",
    )


class EmbeddingRequest(TruncationFields):
    model: Name
    input: EmbeddingInput = Field(
        description="Text or token ids to embed: a string, strings, token ids, or lists of token ids "
        f"(at most {MAX_EMBEDDING_INPUTS} inputs, none empty)."
    )
    encoding_format: Annotated[EncodingFormat, null_is("float", EncodingFormat)] = Field(
        "float", description="float: lists of numbers; base64: each vector's little-endian float32 bytes, base64."
    )
    dimensions: Annotated[int, Field(ge=1)] | None = Field(
        None, description="Components per vector, for Matryoshka models (truncated, then renormalized)."
    )
    user: Name | None = None

    @model_validator(mode="after")
    def _not_empty(self) -> Self:
        given = self.input
        if given in ("", []) or (isinstance(given, list) and any(item in ("", []) for item in given)):
            raise field_error("input", "'input' must not be empty, nor hold an empty string or list.")
        return self

    def inputs(self) -> list[str] | list[list[int]]:
        """The inputs one by one: strings, or token id lists."""
        given = self.input
        if isinstance(given, str):
            return [given]
        if given and isinstance(given[0], int):  # one input of token ids
            return [given]
        return cast(list[str] | list[list[int]], given)


class EmbeddingData(ResponseModel):
    object: Literal["embedding"] = "embedding"
    embedding: list[float] | str  # str: base64 of little-endian float32
    index: int


class EmbeddingUsage(ResponseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingResponse(ResponseModel):
    object: Literal["list"] = "list"
    data: list[EmbeddingData]
    model: str
    usage: EmbeddingUsage
