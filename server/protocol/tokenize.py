"""vLLM's ``/tokenize`` and ``/detokenize`` requests and responses.

The request shapes are vLLM's, folded into one model: ``prompt`` or ``messages``, never both.
(A union of two models would make pydantic name the model, not the field, in its errors.)
"""

from __future__ import annotations

from typing import Annotated, Any, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from server.protocol.base import MAX_MESSAGES, MAX_TOOLS, Name
from server.protocol.chat import ChatMessage, Tool, ToolChoice, check_tool_choice


class _Request(BaseModel):
    # As the completions' requests: unknown fields ignored, no silent coercion of "true" or 1.0.
    model_config = ConfigDict(extra="ignore", strict=True)


class TokenizeRequest(_Request):
    """vLLM's two tokenize requests in one: a text ``prompt``, or chat ``messages``."""

    model: Name | None = Field(None, description="Checked when given: a name the model is served under.")
    prompt: str | None = Field(None, description="Text to tokenize as a text completion's prompt is.")
    messages: Annotated[list[ChatMessage], Field(min_length=1, max_length=MAX_MESSAGES)] | None = Field(
        None, description="A conversation to tokenize as a chat completion's prompt is."
    )
    add_generation_prompt: bool = Field(
        True,
        description="With messages: end with the assistant's turn opening, as chat completions do (only true).",
    )
    add_special_tokens: bool | None = Field(
        None,
        description="Add the tokenizer's special tokens (BOS, say). Default: true for a prompt; with messages "
        "the chat template writes them, so only false.",
    )
    chat_template_kwargs: dict[str, Any] | None = Field(
        None, description="With messages: variables for the chat template, as chat completions take them."
    )
    tools: Annotated[list[Tool], Field(max_length=MAX_TOOLS)] | None = Field(
        None, description="With messages: the tools, rendered into the prompt as chat completions render them."
    )
    tool_choice: ToolChoice | None = Field(None, description="With messages and tools: as chat completions take it.")
    parallel_tool_calls: bool = Field(True, description="With messages and tools: as chat completions take it.")
    return_token_strs: bool | None = Field(False, description="Also return each token's vocabulary string.")

    @model_validator(mode="after")
    def _tools_to_choose(self) -> Self:
        check_tool_choice(self.tools, self.tool_choice)
        return self


class TokenizeResponse(BaseModel):
    count: int
    max_model_len: int
    tokens: list[int]
    token_strs: list[str] | None = None


class DetokenizeRequest(_Request):
    model: Name | None = Field(None, description="Checked when given: a name the model is served under.")
    tokens: list[int] = Field(description="Token ids of the vocabulary; at most the context window's length.")


class DetokenizeResponse(BaseModel):
    prompt: str = Field(description="The tokens' text, special tokens included, as vLLM decodes them.")
