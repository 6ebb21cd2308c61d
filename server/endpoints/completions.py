"""The two completion endpoints: request in, OpenAI JSON or server-sent events out.

Chat and text completions share everything but prompt building and the JSON they wear; the
``_Format`` classes hold the difference so one streaming loop and one collecting loop serve both.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable
from contextlib import aclosing
from dataclasses import dataclass, field, replace
from typing import Protocol, TypeVar
from urllib.parse import quote

from fastapi import Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel

from adapters.engine import StructuredOutput, TokenLogprobs
from server.endpoints.event_stream import EventStream
from server.endpoints.generation import ChoiceEvent, Generation, Job, build_job
from server.endpoints.state import ServerState
from server.gateway.admission import Ticket
from server.gateway.checks import admit, charge_request
from server.protocol.errors import APIError, error_body, generation_error, invalid_request
from server.protocol.models import (
    MAX_CHOICES,
    ChatChoice,
    ChatChunkChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatLogprobs,
    Completion,
    CompletionChoice,
    CompletionLogprobs,
    CompletionRequest,
    CompletionTokensDetails,
    Delta,
    FinishReason,
    FunctionCallDelta,
    FunctionCallOut,
    PromptLogprob,
    PromptLogprobs,
    ResponseMessage,
    SamplingFields,
    TokenLogprob,
    ToolCallDeltaOut,
    ToolCallOut,
    TopLogprob,
    Usage,
    new_id,
    now,
)
from server.text.chat_output import ChatOutput, ChatPiece, ChatStream
from server.text.chat_tools import plan_chat
from server.text.prompts import chat_prompt, check_text_length, text_prompt
from server.text.structured_outputs import Constraint, enforceable, requested_constraint
from server.text.tokenization import Tokenization
from server.text.tool_parsers.base import ToolCallDelta

# Names the request fields that took no effect (comma-separated); see SamplingFields.ignored_fields.
IGNORED_PARAMS_HEADER = "x-ignored-params"
log = logging.getLogger(__name__)
T = TypeVar("T")


class _Format(Protocol):
    def opening(self, index: int) -> BaseModel | None: ...
    def chunk(self, event: ChoiceEvent) -> BaseModel | None:
        """The chunk for one event of a streamed choice (None: nothing to send), finish reason included."""
        ...

    def usage_chunk(self, usage: Usage) -> BaseModel: ...
    def whole(self, choices: list[_Collected], usage: Usage) -> BaseModel: ...
    def observe(self, event: ChoiceEvent) -> None:
        """See an event of a whole response (to count its reasoning tokens)."""
        ...

    def reasoning_tokens(self) -> int | None:
        """Tokens spent thinking, where a reasoning parser runs (usage's completion_tokens_details)."""
        ...


@dataclass
class _Collected:
    """One choice of a whole (non-streamed) response, gathered from its events."""

    texts: list[str] = field(default_factory=list)
    logprobs: list[TokenLogprobs] = field(default_factory=list)
    prompt_logprobs: list[TokenLogprobs | None] | None = None
    finish_reason: FinishReason = "stop"

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


# Logprobs of -inf (a token a bias or penalty ruled out) are not JSON; vLLM reports them as this.
_LOGPROB_FLOOR = -9999.0


def _logprob(value: float) -> float:
    return max(value, _LOGPROB_FLOOR)


class _Identity:
    """What every chunk of one response repeats: its id, creation time and model name."""

    id_prefix = ""

    def __init__(self, model: str) -> None:
        self.id, self.created, self.model = new_id(self.id_prefix), now(), model


class _ChatFormat(_Identity):
    id_prefix = "chatcmpl"

    def __init__(self, model: str, tokenization: Tokenization, output: ChatOutput, logprobs: bool) -> None:
        """``logprobs``: the request asked for them, so every choice carries ``logprobs.content``."""
        super().__init__(model)
        self.tokenization = tokenization
        self.output = output
        self.logprobs = logprobs
        self._streams: dict[int, ChatStream] = {}
        self._reasoning_tokens = 0

    def _chunk(self, choices: list[ChatChunkChoice], usage: Usage | None = None) -> ChatCompletionChunk:
        return ChatCompletionChunk(id=self.id, created=self.created, model=self.model, choices=choices, usage=usage)

    def opening(self, index: int) -> BaseModel:
        self._streams[index] = self.output.stream()
        return self._chunk([ChatChunkChoice(index=index, delta=Delta(role="assistant", content=""))])

    def _push(self, event: ChoiceEvent) -> tuple[ChatStream, ChatPiece]:
        stream = self._streams.setdefault(event.index, self.output.stream())
        piece = stream.push(event.text)
        if piece.in_reasoning:
            self._reasoning_tokens += event.num_tokens
        return stream, piece

    def observe(self, event: ChoiceEvent) -> None:
        if self.output.reasoning is not None:
            self._push(event)

    def chunk(self, event: ChoiceEvent) -> BaseModel | None:
        stream, piece = self._push(event)
        reason: FinishReason | None = None
        if event.finish_reason is not None:
            last = stream.finish()
            piece = ChatPiece(
                piece.content + last.content, piece.reasoning + last.reasoning, (*piece.tool_calls, *last.tool_calls)
            )
            reason = "tool_calls" if stream.called and event.finish_reason == "stop" else event.finish_reason
        logprobs = self._logprobs(event.logprobs) if event.logprobs else None
        if not piece and logprobs is None and reason is None:
            return None
        delta = Delta(
            content=piece.content or None,
            reasoning_content=piece.reasoning or None,
            tool_calls=[_tool_call_delta(d) for d in piece.tool_calls] or None,
        )
        return self._chunk([ChatChunkChoice(index=event.index, delta=delta, logprobs=logprobs, finish_reason=reason)])

    def usage_chunk(self, usage: Usage) -> BaseModel:
        return self._chunk([], usage)

    def reasoning_tokens(self) -> int | None:
        return self._reasoning_tokens if self.output.reasoning is not None else None

    def whole(self, choices: list[_Collected], usage: Usage) -> BaseModel:
        return ChatCompletion(
            id=self.id,
            created=self.created,
            model=self.model,
            choices=[self._choice(i, c) for i, c in enumerate(choices)],
            usage=usage,
            prompt_logprobs=_prompt_logprobs(self.tokenization, choices[0].prompt_logprobs) if choices else None,
        )

    def _choice(self, index: int, collected: _Collected) -> ChatChoice:
        parts = self.output.whole(collected.text)
        calls = [
            ToolCallOut(id=c.id, function=FunctionCallOut(name=c.name, arguments=c.arguments)) for c in parts.tool_calls
        ]
        reason = "tool_calls" if calls and collected.finish_reason == "stop" else collected.finish_reason
        message = ResponseMessage(content=parts.content, reasoning_content=parts.reasoning, tool_calls=calls or None)
        logprobs = self._logprobs(collected.logprobs) if self.logprobs else None
        return ChatChoice(index=index, message=message, logprobs=logprobs, finish_reason=reason)

    def _logprobs(self, entries: list[TokenLogprobs]) -> ChatLogprobs:
        return ChatLogprobs(content=[self._token(e) for e in entries])

    def _token(self, entry: TokenLogprobs) -> TokenLogprob:
        tok = self.tokenization
        return TokenLogprob(
            token=tok.token_text(entry.token_id),
            logprob=_logprob(entry.logprob),
            bytes=list(tok.token_bytes(entry.token_id)),
            top_logprobs=[
                TopLogprob(token=tok.token_text(t), logprob=_logprob(lp), bytes=list(tok.token_bytes(t)))
                for t, lp in entry.top
            ],
        )


def _tool_call_delta(delta: ToolCallDelta) -> ToolCallDeltaOut:
    return ToolCallDeltaOut(
        index=delta.index,
        id=delta.id,
        type="function" if delta.id is not None else None,
        function=FunctionCallDelta(name=delta.name, arguments=delta.arguments),
    )


class _TextFormat(_Identity):
    """Text completions; with ``echo`` each choice's text starts with its prompt (and its logprobs)."""

    id_prefix = "cmpl"

    def __init__(
        self,
        model: str,
        tokenization: Tokenization,
        job: Job,
        echo: list[str] | None,
        logprobs: int | None,
        prompt_logprobs: bool = False,
    ) -> None:
        """``echo``: each prompt's text, when echoed; ``logprobs``: the request's alternatives, or None;
        ``prompt_logprobs``: the request asked for vLLM's prompt_logprobs (reported per choice)."""
        super().__init__(model)
        self.tokenization = tokenization
        self.job = job
        self.echo = echo
        self.num_logprobs = logprobs
        self.prompt_logprobs = prompt_logprobs
        self._offsets: dict[int, int] = {}  # each streamed choice's text length so far

    def _completion(self, choices: list[CompletionChoice], usage: Usage | None = None) -> Completion:
        return Completion(id=self.id, created=self.created, model=self.model, choices=choices, usage=usage)

    def opening(self, index: int) -> None:
        return None

    def chunk(self, event: ChoiceEvent) -> BaseModel | None:
        first = event.index not in self._offsets
        offset = self._offsets.setdefault(event.index, 0)
        text, logprobs = event.text, None
        if first and self.echo is not None:
            prompt_text, prompt_lp = self._echoed(event.index, event.prompt_logprobs, offset)
            text, offset = prompt_text + text, offset + len(prompt_text)
            logprobs = prompt_lp
        if self.num_logprobs is not None:
            generated = self._logprobs(event.logprobs, offset)
            logprobs = _joined(logprobs, generated)
        self._offsets[event.index] += len(text)
        if not text and event.finish_reason is None and logprobs is None:
            return None
        choice = CompletionChoice(index=event.index, text=text, logprobs=logprobs, finish_reason=event.finish_reason)
        return self._completion([choice])

    def usage_chunk(self, usage: Usage) -> BaseModel:
        return self._completion([], usage)

    def reasoning_tokens(self) -> int | None:
        return None

    def observe(self, event: ChoiceEvent) -> None:
        pass

    def whole(self, choices: list[_Collected], usage: Usage) -> BaseModel:
        out = []
        for index, collected in enumerate(choices):
            text, logprobs = collected.text, None
            if self.echo is not None:
                prompt_text, logprobs = self._echoed(index, collected.prompt_logprobs, 0)
                text = prompt_text + text
            if self.num_logprobs is not None:
                offset = len(text) - len(collected.text)
                logprobs = _joined(logprobs, self._logprobs(collected.logprobs, offset))
            prompt_logprobs = _prompt_logprobs(self.tokenization, collected.prompt_logprobs)
            out.append(
                CompletionChoice(
                    index=index,
                    text=text,
                    logprobs=logprobs,
                    finish_reason=collected.finish_reason,
                    prompt_logprobs=prompt_logprobs if self.prompt_logprobs else None,
                )
            )
        return self._completion(out, usage)

    def _echoed(
        self, index: int, prompt_logprobs: list[TokenLogprobs | None] | None, offset: int
    ) -> tuple[str, CompletionLogprobs | None]:
        assert self.echo is not None
        prompt_index = index // self.job.n
        text = self.echo[prompt_index]
        if self.num_logprobs is None:
            return text, None
        ids = self.job.prompts[prompt_index]
        entries = prompt_logprobs or [None] * len(ids)
        return text, self._lists(ids, entries, offset)

    def _logprobs(self, entries: list[TokenLogprobs], offset: int) -> CompletionLogprobs:
        return self._lists([e.token_id for e in entries], list(entries), offset)

    def _lists(self, ids: list[int], entries: list[TokenLogprobs | None], offset: int) -> CompletionLogprobs:
        tok = self.tokenization
        tokens = [tok.token_text(t) for t in ids]
        offsets = []
        for token in tokens:
            offsets.append(offset)
            offset += len(token)
        return CompletionLogprobs(
            text_offset=offsets,
            token_logprobs=[_logprob(e.logprob) if e is not None else None for e in entries],
            tokens=tokens,
            top_logprobs=[
                {tok.token_text(t): _logprob(lp) for t, lp in e.top} if e is not None else None for e in entries
            ],
        )


def _prompt_logprobs(tokenization: Tokenization, entries: list[TokenLogprobs | None] | None) -> PromptLogprobs | None:
    """vLLM's ``prompt_logprobs``: each prompt token and its alternatives, by token id, with ranks."""
    if entries is None:
        return None
    out: PromptLogprobs = []
    for entry in entries:
        if entry is None:
            out.append(None)
            continue
        ranked: dict[int, tuple[float, int | None]] = {
            token_id: (logprob, rank) for rank, (token_id, logprob) in enumerate(entry.top, start=1)
        }
        ranked.setdefault(entry.token_id, (entry.logprob, None))
        out.append(
            {
                str(token_id): PromptLogprob(
                    logprob=_logprob(logprob), rank=rank, decoded_token=tokenization.token_text(token_id)
                )
                for token_id, (logprob, rank) in ranked.items()
            }
        )
    return out


def _joined(head: CompletionLogprobs | None, tail: CompletionLogprobs) -> CompletionLogprobs:
    if head is None:
        return tail
    return CompletionLogprobs(
        text_offset=head.text_offset + tail.text_offset,
        token_logprobs=head.token_logprobs + tail.token_logprobs,
        tokens=head.tokens + tail.tokens,
        top_logprobs=(head.top_logprobs or []) + (tail.top_logprobs or []),
    )


async def chat_completion(req: ChatCompletionRequest, raw: Request, state: ServerState) -> Response:
    state.check_model(req.model)
    headers = {**charge_request(raw, state), **_ignored(req, state)}
    plan = plan_chat(
        req.messages, req.tools, req.tool_choice, req.parallel_tool_calls, state.api, state.tokenization.chat_template
    )
    _log_prompt(state, plan.messages)
    prompt = chat_prompt(plan.messages, state, tools=plan.template_tools, template_kwargs=req.chat_template_kwargs)
    constraint = requested_constraint(req)
    if plan.structured is not None:
        if constraint is not None:
            raise invalid_request(
                "A structured-output constraint cannot be combined with tool calls ise enforces by a grammar "
                "(tool_choice 'required', a named function, or 'auto' in the generic tool format).",
                param="tool_choice",
            )
        constraint = Constraint("tools", plan.structured)
    structured = await _compiled(constraint, raw, state)
    output = plan.output
    if structured is not None and output.reasoning is not None:
        # The constraint holds from the first token, so no thinking precedes the answer: it is
        # reasoning only where the constrained text itself opens the tags.
        output = replace(output, reasoning=replace(output.reasoning, starts_in_reasoning=False))
    job = _job(req, [prompt], req.requested_max_tokens(), state, "messages", structured)
    fmt = _ChatFormat(req.model, state.tokenization, output, req.logprobs)
    return await _respond(req, job, fmt, raw, state, headers)


async def text_completion(req: CompletionRequest, raw: Request, state: ServerState) -> Response:
    state.check_model(req.model)
    headers = {**charge_request(raw, state), **_ignored(req, state)}
    _log_prompt(state, req.prompt)
    prompts = _prompts(req, state)
    structured = await _compiled(requested_constraint(req), raw, state)
    logprobs = req.num_logprobs()
    echo_logprobs = logprobs if req.echo and logprobs is not None else None
    job = _job(req, prompts, req.requested_max_tokens(), state, "prompt", structured, echo_logprobs)
    echo = _echo_texts(req, prompts, state) if req.echo else None
    fmt = _TextFormat(req.model, state.tokenization, job, echo, logprobs, req.prompt_logprobs is not None)
    return await _respond(req, job, fmt, raw, state, headers)


async def _compiled(constraint: Constraint | None, raw: Request, state: ServerState) -> StructuredOutput | None:
    """The constraint for the engine once it compiled within the budget (None: the request has none).

    A client that goes away meanwhile stops the compile; its request ends with a 499 nobody reads.
    """
    if constraint is None:
        return None
    compiled = await _unless_disconnected(raw, enforceable(constraint, state.grammars))
    if compiled is None:
        state.metrics.aborted.labels("client_disconnect").inc()
        raise APIError(499, "The client closed the request while its constraint compiled.")
    return compiled


def _ignored(req: SamplingFields, state: ServerState) -> dict[str, str]:
    """The ``x-ignored-params`` header naming fields that take no effect; under --strict, a 400."""
    ignored = req.ignored_fields()
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


def _echo_texts(req: CompletionRequest, prompts: list[list[int]], state: ServerState) -> list[str]:
    """Each prompt as echoed: the client's own string, or its token ids decoded."""
    if isinstance(req.prompt, str):
        return [req.prompt]
    if all(isinstance(p, str) for p in req.prompt):
        return [str(p) for p in req.prompt]
    return [state.tokenization.decode(p) for p in prompts]


def _prompts(req: CompletionRequest, state: ServerState) -> list[list[int]]:
    """OpenAI's four prompt forms: a string, strings, token ids, or lists of token ids."""
    prompt = req.prompt
    if isinstance(prompt, str):
        return [text_prompt(prompt, state)]
    if not prompt:
        raise invalid_request("The prompt is empty.", param="prompt")
    if isinstance(prompt[0], int):  # the list's type is one of the forms: its first item tells which
        return [list(prompt)]
    # A batch of prompts, each n times: every choice is a request in the engine.
    if len(prompt) * req.n > MAX_CHOICES:
        raise invalid_request(
            f"{len(prompt)} prompts with n={req.n} make {len(prompt) * req.n} choices; at most {MAX_CHOICES}.",
            param="n",
        )
    for text in prompt:
        if isinstance(text, str):
            check_text_length(len(text), state, "prompt")
    return [state.tokenization.encode(p) if isinstance(p, str) else list(p) for p in prompt]


def _log_prompt(state: ServerState, prompt: object) -> None:
    if state.gateway.log_prompts:
        log.info("Prompt: %s", repr(prompt)[: state.gateway.max_log_len])


def _job(
    req: CompletionRequest | ChatCompletionRequest,
    prompts: list[list[int]],
    max_tokens: int | None,
    state: ServerState,
    param: str,
    structured: StructuredOutput | None,
    prompt_logprobs: int | None = None,
) -> Job:
    return build_job(
        req,
        prompts,
        max_tokens=max_tokens,
        max_model_len=state.engine.max_model_len,
        vocab_size=state.tokenization.vocab_size(),
        prompt_param=param,
        defaults=state.sampling_defaults,
        structured=structured,
        prompt_logprobs=prompt_logprobs,
    )


async def _respond(
    req: SamplingFields, job: Job, fmt: _Format, raw: Request, state: ServerState, headers: dict[str, str]
) -> Response:
    """Admit the job, then answer: every refusal comes before the response starts."""
    if not state.engine.is_alive:
        raise APIError(
            503, "The engine is not running; the server cannot serve requests.", code="engine_dead", retryable=False
        )
    ticket, token_headers = admit(raw, state, job)
    raw.state.ticket = ticket  # for the request's log line
    raw.state.end_user = req.user
    headers = {**headers, **token_headers}
    events = ticket.track(Generation(state.engine, state.tokenization).run(job, ticket.inbox))
    if req.stream:

        async def client_gone(_: object) -> None:
            ticket.client_gone = True

        return EventStream(
            _sse(events, job, fmt, _usage_report(req, state), ticket, state),
            sep="\n",
            headers=headers,
            send_timeout=state.gateway.stream_send_timeout,
            client_close_handler_callable=client_gone,
        )
    result = await _unless_disconnected(raw, _collect(events, job, fmt))
    if result is None:
        _aborted(ticket, state, "client_disconnect")
        return Response(status_code=499)
    return JSONResponse(result.model_dump(), headers=headers)


def _aborted(ticket: Ticket, state: ServerState, reason: str) -> None:
    ticket.aborted = reason
    state.metrics.aborted.labels(reason).inc()


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

    def usage(self, fmt: _Format) -> Usage:
        usage = self.job.usage(self.tokens, sum(self.cached.values()))
        reasoning = fmt.reasoning_tokens()
        if reasoning is not None:
            usage.completion_tokens_details = CompletionTokensDetails(reasoning_tokens=reasoning)
        return usage


async def _collect(events: AsyncGenerator[ChoiceEvent, None], job: Job, fmt: _Format) -> BaseModel:
    choices = [_Collected() for _ in range(job.num_choices)]
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
    fmt: _Format,
    report: _UsageReport,
    ticket: Ticket,
    state: ServerState,
) -> AsyncIterator[str]:
    """The SSE body: data lines in OpenAI's chunk format, then ``[DONE]``.

    Nothing is sent before the first token (the choices' opening role chunks go with it), so a
    request that fails before any token streams only its error event and ``[DONE]``.

    sse-starlette cancels this generator when the client goes away, and closes it when a send
    waits past ``--stream-send-timeout`` (a client that stopped reading); either way closing
    ``events`` aborts every engine request behind it, and the abort is counted by its reason.
    """
    exclude = None if report.final else {"usage"}
    tally = _Tally(job)
    opened = False
    finished = False
    try:
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
                            yield opening.model_dump_json(exclude=exclude)
                tally.add(event)
                chunk = fmt.chunk(event)
                if chunk is not None:
                    if report.continuous:
                        chunk.usage = tally.usage(fmt)  # type: ignore[attr-defined]
                    yield chunk.model_dump_json(exclude=exclude)
        finished = True
    except Exception as exc:  # whatever failed, the client gets an error event, then [DONE]
        # Headers are gone already; OpenAI reports mid-stream failures as an error event.
        finished = True
        error = generation_error(exc)
        yield error_body(error.status, error.message, param=error.param, code=error.code).model_dump_json()
        yield "[DONE]"
        return
    finally:
        if not finished:
            _aborted(ticket, state, "client_disconnect" if ticket.client_gone else "send_timeout")
    if report.final:
        yield fmt.usage_chunk(tally.usage(fmt)).model_dump_json()
    yield "[DONE]"


async def _unless_disconnected(raw: Request, work: Awaitable[T]) -> T | None:
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
