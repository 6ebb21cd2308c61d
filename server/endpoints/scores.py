"""vLLM's ``/score`` and ``/rerank`` for embedding models: the cosine of two texts' embeddings.

RAG stacks rerank retrieved passages through a rerank endpoint (Jina's and Cohere's shape, which
vLLM serves as ``/rerank``, ``/v1/rerank`` and ``/v2/rerank``); with an embedding model the score
of a pair is the cosine similarity of its two embeddings, as vLLM computes it. All texts of a
request are embedded in one go, so they share forward passes.
"""

from __future__ import annotations

import numpy as np
from fastapi import Request
from fastapi.responses import JSONResponse

from adapters.embedding.engine import Vector
from server.endpoints.embeddings import embed_inputs, token_inputs
from server.endpoints.serving import ignored_headers
from server.endpoints.state import ServerState
from server.protocol.common import Usage
from server.protocol.embeddings import EmbeddingUsage
from server.protocol.scores import (
    RerankDocument,
    RerankRequest,
    RerankResponse,
    RerankResult,
    ScoreData,
    ScoreRequest,
    ScoreResponse,
)


async def create_score(req: ScoreRequest, raw: Request, state: ServerState) -> JSONResponse:
    lefts, rights = req.pairs()
    first = "text_1" if req.text_1 is not None else "queries"
    second = "text_2" if req.text_2 is not None else "documents"
    scores, tokens, headers = await _scores(req, raw, state, (lefts, first), (rights, second))
    body = ScoreResponse(
        model=req.model or state.model_name,
        data=[ScoreData(index=i, score=s) for i, s in enumerate(scores)],
        usage=Usage(prompt_tokens=tokens, completion_tokens=0, total_tokens=tokens),
    )
    return JSONResponse(body.model_dump(), headers=headers)


async def create_rerank(req: RerankRequest, raw: Request, state: ServerState) -> JSONResponse:
    scores, tokens, headers = await _scores(req, raw, state, ([req.query], "query"), (req.documents, "documents"))
    ranked = sorted(range(len(scores)), key=lambda i: -scores[i])
    top = ranked[: req.top_n] if req.top_n else ranked
    body = RerankResponse(
        model=req.model or state.model_name,
        usage=EmbeddingUsage(prompt_tokens=tokens, total_tokens=tokens),
        results=[
            RerankResult(index=i, document=RerankDocument(text=req.documents[i]), relevance_score=scores[i])
            for i in top
        ],
    )
    return JSONResponse(body.model_dump(), headers=headers)


async def _scores(
    req: ScoreRequest | RerankRequest,
    raw: Request,
    state: ServerState,
    lefts: tuple[list[str], str],
    rights: tuple[list[str], str],
) -> tuple[list[float], int, dict[str, str]]:
    """Cosines of the pairs (one left with every right, or left i with right i), prompt tokens, headers."""
    if req.model is not None:
        state.check_model(req.model, "embed")
    state.embedder  # noqa: B018 -- refuses a generating model before any work
    headers = {**state.gateway.charge_request(raw), **ignored_headers(req.ignored_fields(), state)}
    left_ids = token_inputs(lefts[0], state, req, lefts[1])
    right_ids = token_inputs(rights[0], state, req, rights[1])
    vectors, more = await embed_inputs(left_ids + right_ids, raw, state)
    left, right = vectors[: len(left_ids)], vectors[len(left_ids) :]
    scores = [_cosine(left[0 if len(left) == 1 else i], r) for i, r in enumerate(right)]
    tokens = sum(len(ids) for ids in left_ids + right_ids)
    return scores, tokens, {**headers, **more}


def _cosine(a: Vector, b: Vector) -> float:
    return float(np.dot(a, b) / max(float(np.linalg.norm(a) * np.linalg.norm(b)), 1e-12))
