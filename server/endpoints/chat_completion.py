"""``POST /v1/chat/completions``: messages planned with their tools, and OpenAI's chat completion JSON.

Tool calls and reasoning are read out of the model's text as it streams (``ChatStream``); the
serving loop (``server/endpoints/serving.py``) does the rest.
"""

from __future__ import annotations

from dataclasses import replace

from fastapi import Request
from fastapi.responses import Response
from pydantic import BaseModel

from adapters.engine import TokenLogprobs
from server.endpoints.chat_choices import ChatChoices
from server.endpoints.generation import ChoiceEvent, Job
from server.endpoints.logprobs import prompt_logprobs_out, token_logprob
from server.endpoints.serving import Collected, OpenAIChunks, ResponseFormat, compiled, job_for, log_prompt, serve
from server.endpoints.state import ServerState
from server.protocol.chat import (
    ChatChoice,
    ChatChunkChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatLogprobs,
    Delta,
    FunctionCallDelta,
    FunctionCallOut,
    ResponseMessage,
    ToolCallDeltaOut,
    ToolCallOut,
)
from server.protocol.common import Usage
from server.protocol.errors import invalid_request
from server.protocol.sampling import Constraint
from server.text.chat_output import ChatOutput
from server.text.chat_tools import plan_chat
from server.text.tokenization import Tokenization
from server.text.tool_parsers.base import ToolCallDelta


class ChatFormat(OpenAIChunks):
    id_prefix = "chatcmpl"

    def __init__(self, model: str, tokenization: Tokenization, output: ChatOutput, logprobs: bool) -> None:
        """``logprobs``: the request asked for them, so every choice carries ``logprobs.content``."""
        super().__init__(model)
        self.tokenization = tokenization
        self.output = output
        self.logprobs = logprobs
        self.choices = ChatChoices(output)

    def _chunk(self, choices: list[ChatChunkChoice], usage: Usage | None = None) -> ChatCompletionChunk:
        return ChatCompletionChunk(id=self.id, created=self.created, model=self.model, choices=choices, usage=usage)

    def opening(self, index: int) -> BaseModel:
        self.choices.open(index)
        return self._chunk([ChatChunkChoice(index=index, delta=Delta(role="assistant", content=""))])

    def observe(self, event: ChoiceEvent) -> None:
        self.choices.observe(event)

    def chunk(self, event: ChoiceEvent) -> list[BaseModel]:
        piece = self.choices.push(event)
        reason = self.choices.finish_reason(event)
        logprobs = self._logprobs(event.logprobs) if event.logprobs else None
        if not piece and logprobs is None and reason is None:
            return []
        delta = Delta(
            content=piece.content or None,
            reasoning_content=piece.reasoning or None,
            tool_calls=[_tool_call_delta(d) for d in piece.tool_calls] or None,
        )
        return [self._chunk([ChatChunkChoice(index=event.index, delta=delta, logprobs=logprobs, finish_reason=reason)])]

    def usage_chunk(self, usage: Usage) -> BaseModel:
        return self._chunk([], usage)

    def reasoning_tokens(self) -> int | None:
        return self.choices.reasoning_tokens()

    def whole(self, choices: list[Collected], usage: Usage) -> BaseModel:
        return ChatCompletion(
            id=self.id,
            created=self.created,
            model=self.model,
            choices=[self._choice(i, c) for i, c in enumerate(choices)],
            usage=usage,
            prompt_logprobs=prompt_logprobs_out(self.tokenization, choices[0].prompt_logprobs) if choices else None,
        )

    def _choice(self, index: int, collected: Collected) -> ChatChoice:
        parts = self.output.whole(collected.text)
        calls = [
            ToolCallOut(id=c.id, function=FunctionCallOut(name=c.name, arguments=c.arguments)) for c in parts.tool_calls
        ]
        reason = "tool_calls" if calls and collected.finish_reason == "stop" else collected.finish_reason
        message = ResponseMessage(content=parts.content, reasoning_content=parts.reasoning, tool_calls=calls or None)
        logprobs = self._logprobs(collected.logprobs) if self.logprobs else None
        return ChatChoice(index=index, message=message, logprobs=logprobs, finish_reason=reason)

    def _logprobs(self, entries: list[TokenLogprobs]) -> ChatLogprobs:
        return ChatLogprobs(content=[token_logprob(self.tokenization, e) for e in entries])


def _tool_call_delta(delta: ToolCallDelta) -> ToolCallDeltaOut:
    return ToolCallDeltaOut(
        index=delta.index,
        id=delta.id,
        type="function" if delta.id is not None else None,
        function=FunctionCallDelta(name=delta.name, arguments=delta.arguments),
    )


async def chat_job(
    req: ChatCompletionRequest, raw: Request, state: ServerState, prompt_param: str = "messages"
) -> tuple[Job, ChatOutput]:
    """The chat request planned with its tools, its constraint compiled, as an engine job, and how its
    text splits into content, reasoning and calls; every API translated into a chat request runs this.

    ``prompt_param``: the field a prompt over the context is blamed on, as the client's API names it.
    """
    template = state.tokenization.chat_template
    plan = plan_chat(req.messages, req.tools, req.tool_choice, req.parallel_tool_calls, state.api, template)
    log_prompt(state, plan.messages)
    constraint = req.constraint()
    if plan.structured is not None:
        if constraint is not None:
            raise invalid_request(
                "A structured-output constraint cannot be combined with tool calls ise enforces by a grammar "
                "(tool_choice 'required', a named function, or 'auto' in the generic tool format).",
                param="tool_choice",
            )
        constraint = Constraint("tools", plan.structured)
    prompt = state.prompts.chat(
        plan.messages, tools=plan.template_tools, template_kwargs=req.chat_template_kwargs, param=prompt_param
    )
    # Checked against the context before the constraint compiles: a prompt that cannot fit costs no
    # compile, and its client hears about the numbers it can change (Claude Code's max_tokens).
    job = job_for(req, [prompt], req.requested_max_tokens(), state, prompt_param)
    checked = await compiled(constraint, raw, state)
    output = plan.output
    if checked is not None:
        job = job.constrained(checked)
        if output.reasoning is not None:
            # The constraint holds from the first token, so no thinking precedes the answer: it is
            # reasoning only where the constrained text itself opens the tags.
            output = replace(output, reasoning=replace(output.reasoning, starts_in_reasoning=False))
    return job, output


async def create_chat_completion(req: ChatCompletionRequest, raw: Request, state: ServerState) -> Response:
    async def prepare() -> tuple[Job, ResponseFormat]:
        job, output = await chat_job(req, raw, state)
        return job, ChatFormat(req.model, state.tokenization, output, req.logprobs)

    return await serve(req, raw, state, prepare)
