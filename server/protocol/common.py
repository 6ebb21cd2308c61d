"""Response parts every endpoint shares: usage, finish reasons, prompt logprobs, model cards, errors."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from server.protocol.base import Absent, ResponseModel, new_id, now

# Why a choice ended, as the API reports it (an engine's own reasons are adapters.engine.FinishReason).
ChoiceFinishReason = Literal["stop", "length", "tool_calls"]


class PromptTokensDetails(ResponseModel):
    cached_tokens: int = 0  # prompt tokens whose KV came from the prefix cache


class CompletionTokensDetails(ResponseModel):
    reasoning_tokens: int = 0


class ServerTiming(ResponseModel):
    """Where a request's time went, in milliseconds, as the server measured it from admission.

    ise's extension: the ``Server-Timing`` header of a whole response, and the ``server_timing`` field
    of a stream's usage chunk (a stream cannot send a header at its end). A phase the engine did not
    report (no first token, no scheduling time) is left out.
    """

    queue: float | None = Absent  # admission to the engine's first scheduling
    prefill: float | None = Absent  # first scheduling to first token
    ttft: float | None = Absent  # admission to first token
    decode: float | None = Absent  # first token to last token
    total: float  # admission to the end

    def header(self) -> str:
        """The W3C ``Server-Timing`` header's value: ``queue;dur=1.2, prefill;dur=40.5, ...``."""
        return ", ".join(f"{name};dur={value}" for name, value in self.model_dump().items())


class Usage(ResponseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails | None = Absent
    completion_tokens_details: CompletionTokensDetails | None = Absent
    server_timing: ServerTiming | None = Absent  # a stream's usage chunk only: see ServerTiming


class Envelope(ResponseModel):
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


class PromptLogprob(ResponseModel):
    """vLLM's entry for one token at one prompt position; ``rank`` 1 is the most likely (None: not in the top)."""

    logprob: float
    rank: int | None
    decoded_token: str


# vLLM's prompt_logprobs: per prompt position, token id (as a string) -> its entry; None for the first.
PromptLogprobs = list[dict[str, PromptLogprob] | None]


class ModelPermission(ResponseModel):
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


Capability = Literal["chat", "completion", "embedding", "score", "rerank"]


class ModelCard(ResponseModel):
    """OpenAI's model object with vLLM's fields: clients written for vLLM read ``root`` (``vllm bench
    serve`` takes it as the tokenizer to load) and ``max_model_len``."""

    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "ise"
    root: str | None = None  # where the model was loaded from, as given (a directory or a hub id)
    parent: str | None = None  # the base model of an adapter; ise serves no adapters
    max_model_len: int
    # What the model does (ise's, as Ollama's ``capabilities``): chat and completion for a generating
    # model; embedding, score and rerank for an embedding model. A server may serve both kinds.
    capabilities: list[Capability] = Field(default_factory=list)
    permission: list[ModelPermission] = Field(default_factory=lambda: [ModelPermission()])


class ModelList(ResponseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class Health(ResponseModel):
    """What ``/health`` answers while the engine runs (with several models: while one does).

    ``models``, with several models only: each served name's engine, ``ok`` or ``engine_dead``;
    ``status`` is ``degraded`` while any is dead.
    """

    status: Literal["ok", "degraded"] = "ok"
    models: dict[str, Literal["ok", "engine_dead"]] | None = Absent


class ErrorDetail(ResponseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(ResponseModel):
    error: ErrorDetail


class ServerLoad(ResponseModel):
    """What ``/load`` answers: vLLM's ``server_load``, and the engine's load beside it."""

    server_load: int  # requests admitted and not yet ended (vLLM: requests in flight)
    num_requests_running: int  # in the engine's running batch
    num_requests_waiting: int  # waiting for the engine to schedule them
    kv_cache_usage_perc: float  # the fraction of the KV cache held, 1 is full


class Version(ResponseModel):
    """What ``/version`` answers, as vLLM's does: ops tools check which server build they talk to."""

    version: str
