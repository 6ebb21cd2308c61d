"""vLLM's score and rerank requests and responses, for embedding models (cosine similarity).

``/score`` pairs ``text_1`` with ``text_2`` (also spelled ``queries`` / ``documents``) 1:1, 1:N or
N:N; ``/rerank`` (Jina's and Cohere's shape) scores each document against one query and sorts
them best first. Texts only: vLLM's multimodal score inputs need models ise does not serve.
"""

from __future__ import annotations

from typing import Annotated, Literal, Self

from pydantic import Field, model_validator

from server.protocol.base import Name, ResponseModel, field_error, new_id, now
from server.protocol.common import Usage
from server.protocol.embeddings import MAX_EMBEDDING_INPUTS, EmbeddingUsage, TruncationFields

Texts = str | Annotated[list[str], Field(min_length=1, max_length=MAX_EMBEDDING_INPUTS)]


class ScoreRequest(TruncationFields):
    model: Name | None = Field(None, description="Checked when given: a name the model is served under.")
    text_1: Texts | None = Field(None, description="The first texts of the pairs (also: queries).")
    text_2: Texts | None = Field(None, description="The second texts of the pairs (also: documents).")
    queries: Texts | None = None
    documents: Texts | None = None

    @model_validator(mode="after")
    def _one_spelling(self) -> Self:
        for first, second in (("text_1", "queries"), ("text_2", "documents")):
            if (getattr(self, first) is None) == (getattr(self, second) is None):
                raise field_error(first, f"Give either '{first}' or '{second}' (exactly one).")
        lefts, rights = self.pairs()
        if len(lefts) != 1 and len(lefts) != len(rights):
            raise field_error("text_2", f"Input lengths must be 1:1, 1:N or N:N; got {len(lefts)}:{len(rights)}.")
        return self

    def pairs(self) -> tuple[list[str], list[str]]:
        """The two sides, as lists of texts."""
        left, right = self.text_1 or self.queries, self.text_2 or self.documents
        lefts = [left] if isinstance(left, str) else list(left or [])
        rights = [right] if isinstance(right, str) else list(right or [])
        return lefts, rights


class ScoreData(ResponseModel):
    index: int
    object: Literal["score"] = "score"
    score: float


class ScoreResponse(ResponseModel):
    id: str = Field(default_factory=lambda: new_id("score"))
    object: Literal["list"] = "list"
    created: int = Field(default_factory=now)
    model: str
    data: list[ScoreData]
    usage: Usage  # vLLM's: completion_tokens 0


class RerankRequest(TruncationFields):
    model: Name | None = Field(None, description="Checked when given: a name the model is served under.")
    query: str
    documents: Annotated[list[str], Field(min_length=1, max_length=MAX_EMBEDDING_INPUTS)]
    top_n: Annotated[int, Field(ge=0)] = Field(0, description="Return the best this many (0: all).")


class RerankDocument(ResponseModel):
    text: str


class RerankResult(ResponseModel):
    index: int
    document: RerankDocument
    relevance_score: float


class RerankResponse(ResponseModel):
    id: str = Field(default_factory=lambda: new_id("rerank"))
    model: str
    usage: EmbeddingUsage
    results: list[RerankResult]
