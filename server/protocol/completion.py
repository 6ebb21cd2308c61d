"""OpenAI's (legacy) text completions: the request with its four prompt forms, and the response."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from server.protocol.base import MAX_LOGPROBS, MAX_PROMPTS, Absent, ResponseModel, null_is
from server.protocol.common import ChoiceFinishReason, Envelope, PromptLogprobs
from server.protocol.sampling import SamplingFields


class CompletionRequest(SamplingFields):
    prompt: (
        str
        | Annotated[list[str], Field(max_length=MAX_PROMPTS)]
        | list[int]
        | Annotated[list[list[int]], Field(max_length=MAX_PROMPTS)]
    )
    # OpenAI's legacy completions stop at 16 tokens unless told otherwise.
    max_tokens: int | None = Field(16, ge=1)
    echo: Annotated[bool, null_is(False, bool)] = False
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


class CompletionLogprobs(ResponseModel):
    """A text choice's ``logprobs``: parallel lists, one entry per token (OpenAI's legacy shape).

    ``token_logprobs`` and ``top_logprobs`` hold null for the first prompt token when the prompt
    is echoed; ``text_offset`` is each token's character offset in the choice's text.
    """

    text_offset: list[int]
    token_logprobs: list[float | None]
    tokens: list[str]
    top_logprobs: list[dict[str, float] | None] | None


class CompletionChoice(ResponseModel):
    index: int
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: ChoiceFinishReason | None = None
    prompt_logprobs: PromptLogprobs | None = Absent


class Completion(Envelope):
    """Both the whole text completion and each of its streamed chunks: OpenAI uses one shape."""

    object: Literal["text_completion"] = "text_completion"
    choices: list[CompletionChoice]
