"""``POST /v1/embeddings``, and the path every embedding request takes: inputs checked, admitted, embedded.

The gateway sees an embedding request as it sees a completion: its key is charged a request, its
inputs' tokens are its ``Demand`` (no output tokens), admission queues or refuses it (429 with a
full queue, 503 while draining), and a drain ends it. The engine packs its inputs with every
other request's into shared forward passes (``adapters/embedding``).
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Awaitable, Sequence

import numpy as np
from fastapi import Request
from fastapi.responses import Response

from adapters.embedding.engine import Vector
from server.endpoints.serving import SERVER_TIMING_HEADER, ignored_headers, unless_disconnected
from server.endpoints.state import ServerState
from server.gateway.gateway import Demand
from server.protocol.embeddings import (
    EmbeddingData,
    EmbeddingRequest,
    EmbeddingResponse,
    EmbeddingUsage,
    EncodingFormat,
    TruncationFields,
)
from server.protocol.errors import APIError, generation_error, invalid_request


async def create_embeddings(req: EmbeddingRequest, raw: Request, state: ServerState) -> Response:
    state.check_model(req.model, "embed")
    spec = state.embedder.spec
    dimensions = spec.dimensions if req.dimensions is None else req.dimensions
    problem = spec.check_dimensions(dimensions)
    if problem is not None:
        raise invalid_request(f"'dimensions' cannot be {dimensions}: {problem}.", param="dimensions")
    headers = {**state.gateway.charge_request(raw), **ignored_headers(req.ignored_fields(), state)}
    raw.state.end_user = req.user  # for the request's log line
    inputs = token_inputs(req.inputs(), state, req, "input")
    vectors, more = await embed_inputs(inputs, raw, state)
    tokens = sum(len(ids) for ids in inputs)
    body = EmbeddingResponse(
        data=[
            EmbeddingData(index=i, embedding=encode(v, dimensions, spec.normalize, req.encoding_format))
            for i, v in enumerate(vectors)
        ],
        model=req.model,
        usage=EmbeddingUsage(prompt_tokens=tokens, total_tokens=tokens),
    )
    return Response(body.model_dump_json(), media_type="application/json", headers={**headers, **more})


def encode(vector: Vector, dimensions: int, normalize: bool, fmt: EncodingFormat) -> list[float] | str:
    """One vector as the response carries it: cut to ``dimensions`` (renormalized if the model normalizes),
    as numbers or as base64 of its little-endian float32 bytes."""
    if dimensions < len(vector):
        vector = vector[:dimensions]
        if normalize:
            vector = vector / max(float(np.linalg.norm(vector)), 1e-12)
    if fmt == "base64":
        return base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii")
    values: list[float] = vector.tolist()
    return values


def token_inputs(
    inputs: Sequence[str] | Sequence[list[int]], state: ServerState, trunc: TruncationFields, param: str
) -> list[list[int]]:
    """Each input's token ids, truncated as the request asks; 400s naming ``param`` (or the truncation field).

    Too long without ``truncate_prompt_tokens``: a 400 naming the model's limit. Token ids outside
    the vocabulary: a 400.
    """
    max_len = state.embedder.max_model_len
    keep = trunc.truncate_prompt_tokens
    if keep == -1:
        keep = max_len
    if keep is not None and not 0 < keep <= max_len:
        raise invalid_request(
            f"'truncate_prompt_tokens' must be -1 or between 1 and the model's limit, {max_len} tokens per input.",
            param="truncate_prompt_tokens",
        )
    tokenization = state.tokenization
    texts = [text for text in inputs if isinstance(text, str)]
    if texts:
        if keep is None:
            for text in texts:
                state.prompts.check_length(len(text), param)
        encoded: list[list[int]] = tokenization.hf(texts, add_special_tokens=True)["input_ids"]
    else:
        encoded = [list(ids) for ids in inputs if not isinstance(ids, str)]
        vocab = tokenization.vocab_size()
        for index, ids in enumerate(encoded):
            if max(ids) >= vocab:
                raise invalid_request(
                    f"Input {index} holds token id {max(ids)}, outside this model's vocabulary (ids below {vocab}).",
                    param=param,
                )
    if keep is not None:
        left = (trunc.truncation_side or tokenization.hf.truncation_side) == "left"
        encoded = [ids[-keep:] if left else ids[:keep] for ids in encoded]
    for index, ids in enumerate(encoded):
        if len(ids) > max_len:
            raise invalid_request(
                f"Input {index} holds {len(ids)} tokens; this model takes at most {max_len} tokens per input. "
                "Shorten it, or set truncate_prompt_tokens to embed its first tokens.",
                param=param,
                code="context_length_exceeded",
            )
    return encoded


async def embed_inputs(
    inputs: list[list[int]], raw: Request, state: ServerState
) -> tuple[list[Vector], dict[str, str]]:
    """The inputs' vectors once admitted and computed, and the headers to send (token limits, Server-Timing).

    Raises the gateway's refusals, 503 when the engine has stopped or a drain ends the request,
    and a 499 (which nobody reads) when the client goes away meanwhile.
    """
    embedder = state.embedder
    if not embedder.is_alive:
        raise APIError(
            503, "The engine is not running; the server cannot serve requests.", code="engine_dead", retryable=False
        )
    tokens = sum(len(ids) for ids in inputs)
    ticket, headers = state.gateway.admit(raw, Demand(tokens, tokens, 0, len(inputs)))
    raw.state.ticket = ticket  # for the request's log line
    try:
        vectors = await unless_disconnected(raw, _unless_ended(embedder.embed(inputs), ticket.inbox))
    except Exception as exc:
        ticket.failed = True
        raise generation_error(exc) from exc
    else:
        if vectors is None:
            state.gateway.aborted(ticket, "client_disconnect")
        else:
            ticket.first_token()  # the whole answer is its "first token": admission's queue and TTFT model see it
            ticket.finish_reason = "stop"
    finally:
        ticket.end()
    if vectors is None:
        raise APIError(499, "The client closed the request.")
    return vectors, {**headers, SERVER_TIMING_HEADER: ticket.server_timing().header()}


async def _unless_ended(work: Awaitable[list[Vector]], inbox: asyncio.Queue[object]) -> list[Vector]:
    """``work``'s result, unless the gateway ends the request first (a drain puts its error in ``inbox``)."""
    task = asyncio.ensure_future(work)
    ended = asyncio.ensure_future(inbox.get())
    try:
        done, _ = await asyncio.wait({task, ended}, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            return task.result()
        error = ended.result()
        raise error if isinstance(error, BaseException) else APIError(503, str(error))
    finally:
        for pending in (task, ended):
            pending.cancel()
        await asyncio.gather(task, ended, return_exceptions=True)
