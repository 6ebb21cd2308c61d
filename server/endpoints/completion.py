"""``POST /v1/completions``: OpenAI's four prompt forms, ``echo``, and the text completion JSON.

The serving loop (``server/endpoints/serving.py``) does the rest.
"""

from __future__ import annotations

from fastapi import Request
from fastapi.responses import Response
from pydantic import BaseModel

from adapters.engine import TokenLogprobs
from server.endpoints.generation import ChoiceEvent, Job
from server.endpoints.logprobs import clamp_logprob, prompt_logprobs_out
from server.endpoints.serving import Collected, OpenAIChunks, ResponseFormat, compiled, job_for, log_prompt, serve
from server.endpoints.state import ServerState
from server.protocol.base import MAX_CHOICES
from server.protocol.common import Usage
from server.protocol.completion import Completion, CompletionChoice, CompletionLogprobs, CompletionRequest
from server.protocol.errors import invalid_request
from server.text.tokenization import Tokenization


class TextFormat(OpenAIChunks):
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

    def chunk(self, event: ChoiceEvent) -> list[BaseModel]:
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
            return []
        choice = CompletionChoice(index=event.index, text=text, logprobs=logprobs, finish_reason=event.finish_reason)
        return [self._completion([choice])]

    def usage_chunk(self, usage: Usage) -> BaseModel:
        return self._completion([], usage)

    def reasoning_tokens(self) -> int | None:
        return None

    def observe(self, event: ChoiceEvent) -> None:
        pass

    def whole(self, choices: list[Collected], usage: Usage) -> BaseModel:
        out = []
        for index, collected in enumerate(choices):
            text, logprobs = collected.text, None
            if self.echo is not None:
                prompt_text, logprobs = self._echoed(index, collected.prompt_logprobs, 0)
                text = prompt_text + text
            if self.num_logprobs is not None:
                offset = len(text) - len(collected.text)
                logprobs = _joined(logprobs, self._logprobs(collected.logprobs, offset))
            prompt_logprobs = prompt_logprobs_out(self.tokenization, collected.prompt_logprobs)
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
            token_logprobs=[clamp_logprob(e.logprob) if e is not None else None for e in entries],
            tokens=tokens,
            top_logprobs=[
                {tok.token_text(t): clamp_logprob(lp) for t, lp in e.top} if e is not None else None for e in entries
            ],
        )


def _joined(head: CompletionLogprobs | None, tail: CompletionLogprobs) -> CompletionLogprobs:
    if head is None:
        return tail
    return CompletionLogprobs(
        text_offset=head.text_offset + tail.text_offset,
        token_logprobs=head.token_logprobs + tail.token_logprobs,
        tokens=head.tokens + tail.tokens,
        top_logprobs=(head.top_logprobs or []) + (tail.top_logprobs or []),
    )


async def create_completion(req: CompletionRequest, raw: Request, state: ServerState) -> Response:
    async def prepare() -> tuple[Job, ResponseFormat]:
        log_prompt(state, req.prompt)
        prompts = _prompts(req, state)
        constraint = await compiled(req.constraint(), raw, state)
        logprobs = req.num_logprobs()
        echo_logprobs = logprobs if req.echo and logprobs is not None else None
        job = job_for(req, prompts, req.requested_max_tokens(), state, "prompt", echo_logprobs)
        if constraint is not None:
            job = job.constrained(constraint)
        echo = _echo_texts(req, prompts, state) if req.echo else None
        return job, TextFormat(req.model, state.tokenization, job, echo, logprobs, req.prompt_logprobs is not None)

    return await serve(req, raw, state, prepare)


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
        return [state.prompts.text(prompt)]
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
            state.prompts.check_length(len(text), "prompt")
    return [state.tokenization.encode(p) if isinstance(p, str) else list(p) for p in prompt]
