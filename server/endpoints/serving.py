"""The serving loop every completion endpoint runs once: request, ignored fields, job, admission, answer.

An endpoint names what differs (how its prompts become a ``Job``, and the JSON its answer wears,
its ``ResponseFormat``) and calls ``serve``; the order of the checks, the refusals before any
response starts, streaming over server-sent events or collecting a whole answer, usage, aborts
on disconnect and their counting are the same for every endpoint, here.
"""

from __future__ import annotations

import asyncio
import logging
from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Protocol, TypeVar
from urllib.parse import quote

from fastapi import Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel
from sse_starlette import ServerSentEvent

from adapters.engine import TokenLogprobs
from server.endpoints.event_stream import EventStream
from server.endpoints.generation import ChoiceEvent, Generation, Job, build_job
from server.endpoints.heartbeat import QUEUE_POSITION_HEADER, Heartbeat, wants_queue_position
from server.endpoints.state import ServerState
from server.gateway.admission import Ticket
from server.gateway.load import LOAD_FORMAT_HEADER, orca_header
from server.protocol.base import new_id, now
from server.protocol.chat import ChatCompletionRequest
from server.protocol.common import ChoiceFinishReason, CompletionTokensDetails, Usage
from server.protocol.completion import CompletionRequest
from server.protocol.errors import APIError, error_body, generation_error, invalid_request
from server.protocol.sampling import Constraint, SamplingFields
from server.text.structured_outputs import enforceable

# Names the request fields that took no effect (comma-separated); see SamplingFields.ignored_fields.
IGNORED_PARAMS_HEADER = "x-ignored-params"
# W3C's header for where a response's time went (queue, prefill, ttft, decode, total, in ms).
SERVER_TIMING_HEADER = "server-timing"
log = logging.getLogger(__name__)
T = TypeVar("T")


# One server-sent event as the loop yields it: a bare JSON string is a data-only event (OpenAI's
# chunks and ``[DONE]``), a ServerSentEvent a named one (the typed events of later APIs).
Frame = str | ServerSentEvent


# How OpenAPI describes a stream of typed events (Anthropic's Messages, OpenAI's Responses): each a
# named event whose data is one JSON object; the events themselves are the API reference's.
TYPED_EVENT_STREAM = {
    "itemSchema": {
        "type": "object",
        "required": ["event", "data"],
        "properties": {
            "event": {"type": "string"},
            "data": {"type": "string", "contentMediaType": "application/json"},
        },
    }
}


def typed_event(event: BaseModel) -> ServerSentEvent:
    """A typed event (Anthropic's Messages, OpenAI's Responses): its ``type`` names the SSE event too,
    and its lines end as the data-only events' do."""
    return ServerSentEvent(
        data=event.model_dump_json(), event=str(event.model_dump(include={"type"})["type"]), sep="\n"
    )


class ResponseFormat(Protocol):
    """What an endpoint's answer looks like, whole and streamed; the serving loop calls it in order:
    ``stream_start``, then per choice ``opening`` with the first token, ``chunk`` per event, and
    ``stream_end`` (or ``stream_error``); a whole answer is ``observe`` per event, then ``whole``."""

    def stream_start(self) -> list[Frame]:
        """Events sent as the stream opens, before the first token (none for OpenAI's chunk APIs)."""
        ...

    def keepalive(self) -> ServerSentEvent | None:
        """The event a stream repeats while it has nothing to send (None: the ``: keep-alive`` comment line)."""
        ...

    def opening(self, index: int) -> BaseModel | None: ...
    def chunk(self, event: ChoiceEvent) -> list[BaseModel]:
        """The events for one event of a streamed choice (none: nothing to send), finish reason included."""
        ...

    def frame(self, event: BaseModel, with_usage: bool) -> Frame:
        """One event on the wire; ``with_usage``: the request asked for usage (else chunks carry none)."""
        ...

    def stream_end(self, usage: Usage, with_usage: bool) -> list[Frame]:
        """The events that close a stream that ran to its end (OpenAI's usage chunk and ``[DONE]``)."""
        ...

    def stream_error(self, error: APIError) -> list[Frame]:
        """The events that close a stream after a failure: the headers are gone, so the error is an event."""
        ...

    def whole(self, choices: list[Collected], usage: Usage) -> BaseModel: ...
    def observe(self, event: ChoiceEvent) -> None:
        """See an event of a whole response (to count its reasoning tokens)."""
        ...

    def reasoning_tokens(self) -> int | None:
        """Tokens spent thinking, where a reasoning parser runs (usage's completion_tokens_details)."""
        ...


@dataclass
class Collected:
    """One choice of a whole (non-streamed) response, gathered from its events."""

    texts: list[str] = field(default_factory=list)
    logprobs: list[TokenLogprobs] = field(default_factory=list)
    prompt_logprobs: list[TokenLogprobs | None] | None = None
    finish_reason: ChoiceFinishReason = "stop"

    def add(self, event: ChoiceEvent) -> None:
        self.texts.append(event.text)
        self.logprobs += event.logprobs
        if event.prompt_logprobs is not None:
            self.prompt_logprobs = event.prompt_logprobs
        if event.finish_reason is not None:
            self.finish_reason = event.finish_reason

    @property
    def text(self) -> str:
        return "".join(self.texts)


class Identity:
    """What every chunk of one response repeats: its id, creation time and model name."""

    id_prefix = ""

    def __init__(self, model: str) -> None:
        self.id, self.created, self.model = new_id(self.id_prefix), now(), model


class OpenAIChunks(Identity, ABC):
    """The framing of OpenAI's chunk APIs (chat and text completions): data-only events, usage in a
    last chunk when asked for, an error as an event of its own, and ``[DONE]`` at the end."""

    def stream_start(self) -> list[Frame]:
        return []

    def keepalive(self) -> ServerSentEvent | None:
        return None

    def frame(self, event: BaseModel, with_usage: bool) -> Frame:
        return event.model_dump_json(exclude=None if with_usage else {"usage"})

    @abstractmethod
    def usage_chunk(self, usage: Usage) -> BaseModel:
        """The last chunk, with no choices and the request's usage."""

    def stream_end(self, usage: Usage, with_usage: bool) -> list[Frame]:
        return [self.usage_chunk(usage).model_dump_json(), DONE] if with_usage else [DONE]

    def stream_error(self, error: APIError) -> list[Frame]:
        return [error_body(error.status, error.message, param=error.param, code=error.code).model_dump_json(), DONE]


DONE = "[DONE]"


# What an endpoint hands the loop: its job and the format its answer wears, once the request is checked.
Prepare = Callable[[], Awaitable[tuple[Job, ResponseFormat]]]


async def serve(
    req: SamplingFields, raw: Request, state: ServerState, prepare: Prepare, ignored: Sequence[str] | None = None
) -> Response:
    """Answer one completion request, whole or streamed: the model checked, the request charged to its
    key, ignored fields reported, the endpoint's ``prepare`` run, the job admitted, the answer sent.

    ``ignored``: the fields the client sent that take no effect, by the client's names; by default
    those ``req`` finds itself (an API translated into a chat request names them as its own request
    called them, and what the translation dropped). Every refusal (an ``APIError``) comes before the
    response starts.
    """
    state.check_model(req.model, "generate")
    named = req.ignored_fields() if ignored is None else list(ignored)
    headers = {**state.gateway.charge_request(raw), **ignored_headers(named, state)}
    job, fmt = await prepare()
    return await _respond(req, job, fmt, raw, state, headers)


async def compiled(constraint: Constraint | None, raw: Request, state: ServerState) -> Constraint | None:
    """The constraint once it compiled within the budget (None: the request has none).

    A client that goes away meanwhile stops the compile; its request ends with a 499 nobody reads.
    """
    if constraint is None:
        return None
    compiled = await unless_disconnected(raw, enforceable(constraint, state.grammars))
    if compiled is None:
        state.gateway.metrics.aborted.labels("client_disconnect").inc()
        raise APIError(499, "The client closed the request while its constraint compiled.")
    return compiled


def ignored_headers(ignored: list[str], state: ServerState) -> dict[str, str]:
    """The ``x-ignored-params`` header naming fields that take no effect; under --strict, a 400."""
    if not ignored:
        return {}
    if state.api.strict:
        named = ", ".join(f"'{name}'" for name in ignored[:MAX_IGNORED_NAMED])
        raise invalid_request(
            f"{named} {'is' if len(ignored) == 1 else 'are'} not supported by this server and would be ignored "
            "(the server runs with --strict).",
            param=ignored[0],
            code="unsupported_parameter",
        )
    return {IGNORED_PARAMS_HEADER: ignored_params_header(ignored)}


# A request may send any number of made-up fields, named in any characters: the header names a
# bounded number, each percent-encoded, since header values are Latin-1 and must not break lines.
MAX_IGNORED_NAMED = 32


def ignored_params_header(names: list[str]) -> str:
    """``x-ignored-params``' value: the first ``MAX_IGNORED_NAMED`` names, URL-quoted, then how many more."""
    shown = [quote(name, safe="._-[]") for name in names[:MAX_IGNORED_NAMED]]
    more = len(names) - len(shown)
    return ", ".join(shown) + (f", +{more} more" if more else "")


def log_prompt(state: ServerState, prompt: object) -> None:
    if state.gateway_args.log_prompts:
        log.info("Prompt: %s", repr(prompt)[: state.gateway_args.max_log_len])


def job_for(
    req: CompletionRequest | ChatCompletionRequest,
    prompts: list[list[int]],
    max_tokens: int | None,
    state: ServerState,
    param: str,
    prompt_logprobs: int | None = None,
) -> Job:
    return build_job(
        req,
        prompts,
        max_tokens=max_tokens,
        max_model_len=state.generator.max_model_len,
        vocab_size=state.tokenization.vocab_size(),
        prompt_param=param,
        defaults=state.sampling_defaults,
        prompt_logprobs=prompt_logprobs,
    )


async def _respond(
    req: SamplingFields, job: Job, fmt: ResponseFormat, raw: Request, state: ServerState, headers: dict[str, str]
) -> Response:
    """Admit the job, then answer: every refusal comes before the response starts."""
    if not state.engine.is_alive:
        raise APIError(
            503, "The engine is not running; the server cannot serve requests.", code="engine_dead", retryable=False
        )
    position = req.stream and wants_queue_position(raw.headers.get(QUEUE_POSITION_HEADER))
    ticket, token_headers = state.gateway.admit(raw, job.demand())
    raw.state.ticket = ticket  # for the request's log line
    raw.state.end_user = req.user
    headers = {**headers, **token_headers}
    load_format = raw.headers.get(LOAD_FORMAT_HEADER)
    events = ticket.track(Generation(state.generator, state.tokenization).run(job, ticket.inbox))
    if req.stream:

        async def client_gone(_: object) -> None:
            ticket.client_gone = True

        if load_format is not None:
            headers.update(orca_header(load_format, state.engine.stats()))
        heartbeat = Heartbeat(fmt.keepalive(), state.gateway_args.sse_keep_alive_interval, ticket if position else None)
        return EventStream(
            _sse(events, job, fmt, _usage_report(req, state), ticket, state, heartbeat),
            sep="\n",
            heartbeat=heartbeat,
            tick_s=heartbeat.tick_s,
            headers=headers,
            send_timeout=state.gateway_args.stream_send_timeout,
            client_close_handler_callable=client_gone,
        )
    result = await unless_disconnected(raw, _collect(events, job, fmt))
    if result is None:
        state.gateway.aborted(ticket, "client_disconnect")
        return Response(status_code=499)
    headers[SERVER_TIMING_HEADER] = ticket.server_timing().header()
    if load_format is not None:
        headers.update(orca_header(load_format, state.engine.stats()))
    return JSONResponse(result.model_dump(), headers=headers)


@dataclass(frozen=True)
class _UsageReport:
    """Where a stream reports usage: a last chunk (include_usage), and every chunk (vLLM's continuous_usage_stats)."""

    final: bool
    continuous: bool


def _usage_report(req: SamplingFields, state: ServerState) -> _UsageReport:
    """Where the request asks for usage; ``--enable-force-include-usage`` asks for the last chunk on every stream."""
    return _UsageReport(req.include_usage() or state.api.enable_force_include_usage, req.continuous_usage())


class _Tally:
    """A response's token counts as its events arrive."""

    def __init__(self, job: Job) -> None:
        self.job = job
        self.tokens = 0
        self.cached: dict[int, int] = {}  # prompt index -> prompt tokens the prefix cache served

    def add(self, event: ChoiceEvent) -> None:
        self.tokens += event.num_tokens
        if event.num_cached_tokens is not None and event.index % self.job.n == 0:
            self.cached[event.index // self.job.n] = event.num_cached_tokens

    def usage(self, fmt: ResponseFormat) -> Usage:
        usage = self.job.usage(self.tokens, sum(self.cached.values()))
        reasoning = fmt.reasoning_tokens()
        if reasoning is not None:
            usage.completion_tokens_details = CompletionTokensDetails(reasoning_tokens=reasoning)
        return usage


async def _collect(events: AsyncGenerator[ChoiceEvent, None], job: Job, fmt: ResponseFormat) -> BaseModel:
    choices = [Collected() for _ in range(job.num_choices)]
    tally = _Tally(job)
    async with aclosing(events):
        async for event in events:
            choices[event.index].add(event)
            tally.add(event)
            fmt.observe(event)
    return fmt.whole(choices, tally.usage(fmt))


async def _sse(
    events: AsyncGenerator[ChoiceEvent, None],
    job: Job,
    fmt: ResponseFormat,
    report: _UsageReport,
    ticket: Ticket,
    state: ServerState,
    heartbeat: Heartbeat,
) -> AsyncIterator[Frame]:
    """The SSE body: the format's opening events, then its events as tokens arrive, then its closing ones.

    No event is sent between the opening events and the first token (the choices' opening chunks go
    with it), so in OpenAI's chunk APIs a request that fails before any token streams only its error
    event and ``[DONE]``; only comments may come before it (keep-alives, the queue position: see
    ``heartbeat.py``), which every SSE client skips.

    sse-starlette cancels this generator when the client goes away, and closes it when a send
    waits past ``--stream-send-timeout`` (a client that stopped reading); either way closing
    ``events`` aborts every engine request behind it, and the abort is counted by its reason.
    """
    tally = _Tally(job)
    opened = False
    finished = False
    try:
        for frame in fmt.stream_start():
            yield frame
        position = heartbeat.position()  # where it waits, at once, when the request asked
        if position is not None:
            yield position
        async with aclosing(events):
            async for event in events:
                if not opened:
                    # The choices open with the first token, all of them in index order, as in
                    # vLLM: clients time the first token at the first chunk with choices, and the
                    # openai SDK's stream helper takes choices in the order they first appear.
                    opened = True
                    for index in range(job.num_choices):
                        opening = fmt.opening(index)
                        if opening is not None:
                            if report.continuous:
                                opening.usage = job.usage(0)  # type: ignore[attr-defined]
                            yield fmt.frame(opening, report.final)
                tally.add(event)
                for chunk in fmt.chunk(event):
                    if report.continuous:
                        chunk.usage = tally.usage(fmt)  # type: ignore[attr-defined]
                    yield fmt.frame(chunk, report.final)
        finished = True
    except Exception as exc:  # whatever failed, the client gets an error event and the stream's end
        # Headers are gone already; OpenAI reports mid-stream failures as an error event.
        finished = True
        for frame in fmt.stream_error(generation_error(exc)):
            yield frame
        return
    finally:
        if not finished:
            state.gateway.aborted(ticket, "client_disconnect" if ticket.client_gone else "send_timeout")
    usage = tally.usage(fmt)
    usage.server_timing = ticket.server_timing()  # a stream's headers are gone: its timings ride in its usage
    for frame in fmt.stream_end(usage, report.final):
        yield frame


async def unless_disconnected(raw: Request, work: Awaitable[T]) -> T | None:
    """Await ``work`` unless the client disconnects first; then cancel it (aborting the request)."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnected(raw))
    try:
        done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            return task.result()
        log.info("Client disconnected; request aborted")
        return None
    finally:
        for pending in (task, watcher):
            pending.cancel()
        await asyncio.gather(task, watcher, return_exceptions=True)


async def _disconnected(raw: Request) -> None:
    while (await raw.receive())["type"] != "http.disconnect":
        pass
