"""A scripted engine, for what the real engine cannot be made to do on cue.

The fast tests drive the whole server (routes, text streaming, SSE framing, errors) without a
model: this engine answers each request with token ids a test chose, at the pace it chose, and
fails at the token it chose, then records what the server asked of it (requests, aborts). The
real engine is covered by ``tests/real``; nothing here stands in for its numerics or scheduling.

It keeps the engine contract (``adapters.engine.Engine``) where the server can see it: a request
ends with "stop" at an EOS or stop token id (unless ``ignore_eos``, or before ``min_tokens``) and
with "length" at ``max_tokens``; closing a request's stream early aborts it; once the engine dies,
every in-flight request and every new one gets ``EngineDeadError`` and ``is_alive`` is False.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from adapters.engine import (
    ConstraintDeadEndError,
    EngineDeadError,
    EngineOutput,
    EngineRequest,
    EngineStats,
    FinishReason,
    RequestFailedError,
    TokenLogprobs,
)


def fake_logprobs(token_id: int, position: int, k: int) -> TokenLogprobs:
    """The fake's logprobs for ``token_id`` at ``position``: made-up numbers, distinct per position
    so tests can tell entries apart; the alternatives are the ids after it, each less likely."""
    logprob = -0.25 * (position + 1)
    return TokenLogprobs(token_id, logprob, tuple((token_id + j, logprob - j) for j in range(k)))


@dataclass(frozen=True)
class Reply:
    """What the fake generates for one request.

    ``token_ids`` must reach a finish (an EOS id, or ``max_tokens``) like a real engine's output;
    a script that runs out first is a bug in the test, reported as an error. ``delays`` is the
    wait before each token, in seconds: one value for every token, or one per token (tokens past
    the end of the list come at once). With ``fail_at`` set, the fake fails just before that
    token (0-based): ``"request"`` fails this request alone with ``RequestFailedError``;
    ``"engine"`` kills the engine, failing every in-flight request with ``EngineDeadError``;
    ``"constraint"`` fails it as a constraint that reached a dead end there (``ConstraintDeadEndError``,
    which needs a real model's vocabulary and a constraint it cannot spell to happen for real).
    ``gates`` holds a token back until the test opens its gate: ``{0: event}`` keeps the request
    waiting for its first token until ``event`` is set (after that token's delay).
    """

    token_ids: Sequence[int]
    delays: float | Sequence[float] = 0.0
    fail_at: int | None = None
    failure: Literal["request", "engine", "constraint"] = "request"
    gates: Mapping[int, asyncio.Event] = field(default_factory=dict)

    def delay(self, index: int) -> float:
        if isinstance(self.delays, float | int):
            return float(self.delays)
        return self.delays[index] if index < len(self.delays) else 0.0


Script = Callable[[EngineRequest], Reply]


class FakeEngine:
    """An ``Engine`` whose every request is answered by ``script``, which a test may replace."""

    def __init__(
        self, script: Script, *, eos_token_ids: frozenset[int], max_model_len: int, cached_tokens: int = 0
    ) -> None:
        """``cached_tokens``: the prefix-cache hit every request reports."""
        self.script = script
        self.cached_tokens = cached_tokens
        self._eos = eos_token_ids
        self.max_model_len = max_model_len  # a test may widen the context (long tool prompts)
        self._started = False
        # Set when the engine dies or shuts down: wakes every in-flight request to fail it.
        self._stopped = asyncio.Event()
        self._running: set[str] = set()
        self.requests: list[EngineRequest] = []  # every request submitted, in order
        self.emitted: list[tuple[str, int]] = []  # (request id, token id), in the order yielded
        self.aborted: list[str] = []  # requests that ended unfinished: stream closed early, or failed

    @property
    def is_alive(self) -> bool:
        return self._started and not self._stopped.is_set()

    async def start(self) -> None:
        self._started = True

    async def shutdown(self) -> None:
        self._stopped.set()

    def stats(self) -> EngineStats:
        return EngineStats(running=len(self._running))

    def abort(self, request_id: str) -> None:
        """Record the abort; the request itself has already stopped, as the server aborts by closing its stream."""
        self.aborted.append(request_id)

    async def generate(self, request: EngineRequest) -> AsyncGenerator[EngineOutput, None]:
        if not self.is_alive:
            raise EngineDeadError("The engine is not running")
        self.requests.append(request)
        reply = self.script(request)
        self._running.add(request.request_id)
        scheduled_at = time.monotonic()  # scheduled at once: the fake has no queue
        finished = False
        try:
            for index, token in enumerate(reply.token_ids):
                await self._wait(reply.delay(index))
                if index in reply.gates:
                    await self._wait_for(reply.gates[index])
                if index == reply.fail_at:
                    self._fail(reply.failure, index)
                reason = self._finish_reason(request, token, index + 1)
                finished = reason is not None
                self.emitted.append((request.request_id, token))
                yield self._output(request, token, index, reason, scheduled_at)
                if finished:
                    return
            raise AssertionError(f"the script for {request.request_id} ended before the request finished")
        finally:
            self._running.discard(request.request_id)
            if not finished:
                self.abort(request.request_id)

    def _output(
        self, request: EngineRequest, token: int, index: int, reason: FinishReason | None, scheduled_at: float
    ) -> EngineOutput:
        """A token as the real engines report it, with logprobs, the cache hit and when it was scheduled."""
        params, prompt = request.params, request.prompt_token_ids
        first = index == 0
        return EngineOutput(
            [token],
            reason,
            token if reason == "stop" else None,
            scheduled_at,
            logprobs=[fake_logprobs(token, index, params.logprobs)] if params.logprobs is not None else None,
            prompt_logprobs=(
                [None, *(fake_logprobs(t, i, params.prompt_logprobs) for i, t in enumerate(prompt[1:]))]
                if first and params.prompt_logprobs is not None
                else None
            ),
            num_cached_tokens=min(self.cached_tokens, len(prompt)) if first else None,
        )

    async def _wait(self, seconds: float) -> None:
        """Sleep before a token (yielding to other requests even at 0 s), unless the engine stops."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopped.wait(), seconds)
        if self._stopped.is_set():
            raise EngineDeadError("The engine failed: injected failure")

    async def _wait_for(self, gate: asyncio.Event) -> None:
        """Wait until ``gate`` opens, unless the engine stops first."""
        stopped, opened = asyncio.ensure_future(self._stopped.wait()), asyncio.ensure_future(gate.wait())
        try:
            await asyncio.wait({stopped, opened}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()
            opened.cancel()
        if self._stopped.is_set():
            raise EngineDeadError("The engine failed: injected failure")

    def _fail(self, failure: Literal["request", "engine", "constraint"], index: int) -> None:
        if failure == "engine":
            self._stopped.set()
            raise EngineDeadError("The engine failed: injected failure")
        if failure == "constraint":
            raise ConstraintDeadEndError(index)
        raise RequestFailedError("The request failed: injected failure")

    def _finish_reason(self, request: EngineRequest, token: int, count: int) -> FinishReason | None:
        """As the real engine decides it, for the ``count``-th generated token."""
        params = request.params
        # A real sampler cannot pick a stop token before min_tokens; a scripted one passes as text.
        stops = token in params.stop_token_ids or (token in self._eos and not params.ignore_eos)
        if stops and count > params.min_tokens:
            return "stop"
        # The server caps max_tokens to what the context window leaves, so this is the window's limit too.
        return "length" if count >= params.max_tokens else None
