"""The two completion endpoints: request in, OpenAI JSON or server-sent events out.

Chat and text completions share everything but prompt building and the JSON they wear; the
``_Format`` classes hold the difference so one streaming loop and one collecting loop serve both.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable
from contextlib import aclosing
from typing import Protocol, TypeVar

from fastapi import Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel

from server.admission import Ticket
from server.errors import APIError, error_body, generation_error, invalid_request
from server.event_stream import EventStream
from server.gateway import admit, charge_request
from server.generation import ChoiceEvent, Generation, Job, build_job
from server.protocol import (
    MAX_CHOICES,
    ChatChoice,
    ChatChunkChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    Completion,
    CompletionChoice,
    CompletionRequest,
    Delta,
    FinishReason,
    ResponseMessage,
    Usage,
    new_id,
    now,
)
from server.state import ServerState

log = logging.getLogger(__name__)
T = TypeVar("T")


class _Format(Protocol):
    def opening(self, index: int) -> BaseModel | None: ...
    def chunk(self, index: int, text: str, finish_reason: FinishReason | None) -> BaseModel: ...
    def usage_chunk(self, usage: Usage) -> BaseModel: ...
    def whole(self, texts: list[str], reasons: list[FinishReason], usage: Usage) -> BaseModel: ...


class _Identity:
    """What every chunk of one response repeats: its id, creation time and model name."""

    id_prefix = ""

    def __init__(self, model: str) -> None:
        self.id, self.created, self.model = new_id(self.id_prefix), now(), model


class _ChatFormat(_Identity):
    id_prefix = "chatcmpl"

    def _chunk(self, choices: list[ChatChunkChoice], usage: Usage | None = None) -> ChatCompletionChunk:
        return ChatCompletionChunk(id=self.id, created=self.created, model=self.model, choices=choices, usage=usage)

    def opening(self, index: int) -> BaseModel:
        return self._chunk([ChatChunkChoice(index=index, delta=Delta(role="assistant", content=""))])

    def chunk(self, index: int, text: str, finish_reason: FinishReason | None) -> BaseModel:
        delta = Delta(content=text) if text else Delta()
        return self._chunk([ChatChunkChoice(index=index, delta=delta, finish_reason=finish_reason)])

    def usage_chunk(self, usage: Usage) -> BaseModel:
        return self._chunk([], usage)

    def whole(self, texts: list[str], reasons: list[FinishReason], usage: Usage) -> BaseModel:
        choices = [
            ChatChoice(index=i, message=ResponseMessage(content=t), finish_reason=r)
            for i, (t, r) in enumerate(zip(texts, reasons, strict=True))
        ]
        return ChatCompletion(id=self.id, created=self.created, model=self.model, choices=choices, usage=usage)


class _TextFormat(_Identity):
    id_prefix = "cmpl"

    def _completion(self, choices: list[CompletionChoice], usage: Usage | None = None) -> Completion:
        return Completion(id=self.id, created=self.created, model=self.model, choices=choices, usage=usage)

    def opening(self, index: int) -> None:
        return None

    def chunk(self, index: int, text: str, finish_reason: FinishReason | None) -> BaseModel:
        return self._completion([CompletionChoice(index=index, text=text, finish_reason=finish_reason)])

    def usage_chunk(self, usage: Usage) -> BaseModel:
        return self._completion([], usage)

    def whole(self, texts: list[str], reasons: list[FinishReason], usage: Usage) -> BaseModel:
        choices = [
            CompletionChoice(index=i, text=t, finish_reason=r)
            for i, (t, r) in enumerate(zip(texts, reasons, strict=True))
        ]
        return self._completion(choices, usage)


async def chat_completion(req: ChatCompletionRequest, raw: Request, state: ServerState) -> Response:
    state.check_model(req.model)
    headers = charge_request(raw, state)
    messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in req.messages]
    _check_text_length(sum(len(m["content"]) for m in messages), state, "messages")
    _log_prompt(state, messages)
    prompt = state.tokenization.chat_prompt(messages)
    job = _job(req, [prompt], req.requested_max_tokens(), state, "messages")
    return await _respond(req.stream, req.include_usage(), job, _ChatFormat(req.model), raw, state, headers)


async def text_completion(req: CompletionRequest, raw: Request, state: ServerState) -> Response:
    state.check_model(req.model)
    headers = charge_request(raw, state)
    _log_prompt(state, req.prompt)
    job = _job(req, _prompts(req, state), req.requested_max_tokens(), state, "prompt")
    return await _respond(req.stream, req.include_usage(), job, _TextFormat(req.model), raw, state, headers)


def _prompts(req: CompletionRequest, state: ServerState) -> list[list[int]]:
    """OpenAI's four prompt forms: a string, strings, token ids, or lists of token ids."""
    prompt = req.prompt
    if isinstance(prompt, str):
        _check_text_length(len(prompt), state, "prompt")
        return [state.tokenization.encode(prompt)]
    if not prompt:
        raise invalid_request("The prompt is empty.", param="prompt")
    if all(isinstance(p, int) for p in prompt):
        return [[int(p) for p in prompt]]  # type: ignore[arg-type]
    # A batch of prompts, each n times: every choice is a request in the engine.
    if len(prompt) * req.n > MAX_CHOICES:
        raise invalid_request(
            f"{len(prompt)} prompts with n={req.n} make {len(prompt) * req.n} choices; at most {MAX_CHOICES}.",
            param="n",
        )
    for text in prompt:
        if isinstance(text, str):
            _check_text_length(len(text), state, "prompt")
    return [state.tokenization.encode(p) if isinstance(p, str) else list(p) for p in prompt]  # type: ignore[arg-type]


def _check_text_length(chars: int, state: ServerState, param: str) -> None:
    """Refuse text that surely exceeds the context window, without tokenizing it.

    Tokenizing runs on the event loop; a multi-megabyte prompt would stall every stream for
    the time it takes, only to be refused afterwards.
    """
    max_len = state.engine.max_model_len
    if chars > max_len * state.tokenization.max_token_chars:
        raise invalid_request(
            f"This model's maximum context length is {max_len} tokens; the {param} holds {chars} characters, "
            "which is surely more. Please reduce the length of the prompt.",
            param=param,
            code="context_length_exceeded",
        )


def _log_prompt(state: ServerState, prompt: object) -> None:
    if state.gateway.log_prompts:
        log.info("Prompt: %r", prompt)


def _job(
    req: CompletionRequest | ChatCompletionRequest,
    prompts: list[list[int]],
    max_tokens: int | None,
    state: ServerState,
    param: str,
) -> Job:
    return build_job(
        req,
        prompts,
        max_tokens=max_tokens,
        max_model_len=state.engine.max_model_len,
        vocab_size=state.tokenization.vocab_size(),
        prompt_param=param,
        defaults=state.sampling_defaults,
    )


async def _respond(
    stream: bool,
    include_usage: bool,
    job: Job,
    fmt: _Format,
    raw: Request,
    state: ServerState,
    headers: dict[str, str],
) -> Response:
    """Admit the job, then answer: every refusal comes before the response starts."""
    if not state.engine.is_alive:
        raise APIError(
            503, "The engine is not running; the server cannot serve requests.", code="engine_dead", retryable=False
        )
    ticket, token_headers = admit(raw, state, job)
    raw.state.ticket = ticket  # for the request's log line
    headers = {**headers, **token_headers}
    events = ticket.track(Generation(state.engine, state.tokenization).run(job, ticket.inbox))
    if stream:

        async def client_gone(_: object) -> None:
            ticket.client_gone = True

        return EventStream(
            _sse(events, job, fmt, include_usage, ticket, state),
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


async def _collect(events: AsyncGenerator[ChoiceEvent, None], job: Job, fmt: _Format) -> BaseModel:
    count = len(job.prompts) * job.n
    texts: list[list[str]] = [[] for _ in range(count)]
    reasons: list[FinishReason] = ["stop"] * count
    tokens = 0
    async with aclosing(events):
        async for event in events:
            texts[event.index].append(event.text)
            tokens += event.num_tokens
            if event.finish_reason is not None:
                reasons[event.index] = event.finish_reason
    return fmt.whole(["".join(t) for t in texts], reasons, job.usage(tokens))


async def _sse(
    events: AsyncGenerator[ChoiceEvent, None],
    job: Job,
    fmt: _Format,
    include_usage: bool,
    ticket: Ticket,
    state: ServerState,
) -> AsyncIterator[str]:
    """The SSE body: data lines in OpenAI's chunk format, then ``[DONE]``.

    sse-starlette cancels this generator when the client goes away, and closes it when a send
    waits past ``--stream-send-timeout`` (a client that stopped reading); either way closing
    ``events`` aborts every engine request behind it, and the abort is counted by its reason.
    """
    exclude = None if include_usage else {"usage"}
    for index in range(len(job.prompts) * job.n):
        opening = fmt.opening(index)
        if opening is not None:
            yield opening.model_dump_json(exclude=exclude)
    tokens = 0
    finished = False
    try:
        async with aclosing(events):
            async for event in events:
                tokens += event.num_tokens
                if event.text:
                    yield fmt.chunk(event.index, event.text, None).model_dump_json(exclude=exclude)
                if event.finish_reason is not None:
                    yield fmt.chunk(event.index, "", event.finish_reason).model_dump_json(exclude=exclude)
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
    if include_usage:
        yield fmt.usage_chunk(job.usage(tokens)).model_dump_json()
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
