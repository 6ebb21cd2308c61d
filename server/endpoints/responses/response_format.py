"""The Responses API's ``ResponseFormat`` for the serving loop: the response object, whole or as typed events.

A stream opens with ``response.created`` and ``response.in_progress`` (before the first token), sends
the output items' events as the text arrives (``output.py``), and closes with ``response.completed``
(or ``response.incomplete``) carrying the whole response and its usage; a failure after the start is
an ``error`` event, then ``response.failed``. There is no ``[DONE]``. Every event is a named
server-sent event with a ``sequence_number`` counted from 0.
"""

from __future__ import annotations

from collections.abc import Callable

from pydantic import BaseModel
from sse_starlette import ServerSentEvent

from server.endpoints.generation import ChoiceEvent
from server.endpoints.logprobs import token_logprob
from server.endpoints.responses.output import OutputItems
from server.endpoints.responses.translate import ToolOrigins
from server.endpoints.serving import Collected, Frame, typed_event
from server.protocol.base import now
from server.protocol.common import Usage
from server.protocol.errors import APIError
from server.protocol.responses_output import (
    ErrorEvent,
    IncompleteDetails,
    InputTokensDetails,
    LifecycleEvent,
    OutputTokensDetails,
    ResponseErrorOut,
    ResponseObject,
    ResponseUsage,
)
from server.text.chat_output import ChatOutput
from server.text.tokenization import Tokenization


class ResponsesFormat:
    def __init__(
        self,
        template: ResponseObject,
        output: ChatOutput,
        origins: ToolOrigins,
        tokenization: Tokenization,
        logprobs: bool,
        on_done: Callable[[ResponseObject], None],
    ) -> None:
        """``template``: the response in progress, its settings echoed; ``on_done`` gets the finished
        response (completed or incomplete) to store it."""
        self._template = template
        self._seq = -1
        self._reasoning = output.reasoning is not None
        convert = (lambda entry: token_logprob(tokenization, entry)) if logprobs else None
        self._items = OutputItems(output, origins, convert, self._next)
        self._on_done = on_done

    def _next(self) -> int:
        self._seq += 1
        return self._seq

    def stream_start(self) -> list[Frame]:
        return [
            typed_event(LifecycleEvent(type=kind, sequence_number=self._next(), response=self._template))
            for kind in ("response.created", "response.in_progress")
        ]

    def opening(self, index: int) -> BaseModel | None:
        return None

    def chunk(self, event: ChoiceEvent) -> list[BaseModel]:
        return list(self._items.push(event))

    def observe(self, event: ChoiceEvent) -> None:
        self._items.push(event)

    def keepalive(self) -> ServerSentEvent | None:
        return None  # the comment line: OpenAI's Responses streams name no keep-alive event

    def frame(self, event: BaseModel, with_usage: bool) -> Frame:
        return typed_event(event)

    def stream_end(self, usage: Usage, with_usage: bool) -> list[Frame]:
        final = self._finish(usage)
        kind = "response.completed" if final.status == "completed" else "response.incomplete"
        return [typed_event(LifecycleEvent(type=kind, sequence_number=self._next(), response=final))]

    def stream_error(self, error: APIError) -> list[Frame]:
        code = error.code or ("server_error" if error.status >= 500 else "invalid_request")
        failed = self._template.model_copy(
            update={
                "status": "failed",
                "output": list(self._items.items),
                "error": ResponseErrorOut(code=code, message=error.message),
            }
        )
        seq = self._next()
        return [
            typed_event(ErrorEvent(sequence_number=seq, code=code, message=error.message, param=error.param)),
            typed_event(LifecycleEvent(type="response.failed", sequence_number=self._next(), response=failed)),
        ]

    def whole(self, choices: list[Collected], usage: Usage) -> BaseModel:
        return self._finish(usage)

    def reasoning_tokens(self) -> int | None:
        return self._items.reasoning_tokens if self._reasoning else None

    def _finish(self, usage: Usage) -> ResponseObject:
        incomplete = self._items.finish_reason == "length"
        final = self._template.model_copy(
            update={
                "status": "incomplete" if incomplete else "completed",
                "completed_at": None if incomplete else now(),
                "incomplete_details": IncompleteDetails(reason="max_output_tokens") if incomplete else None,
                "output": list(self._items.items),
                "usage": responses_usage(usage),
            }
        )
        self._on_done(final)
        return final


def responses_usage(usage: Usage) -> ResponseUsage:
    """Chat's usage in the Responses API's names."""
    cached = usage.prompt_tokens_details.cached_tokens if usage.prompt_tokens_details is not None else 0
    details = usage.completion_tokens_details
    return ResponseUsage(
        input_tokens=usage.prompt_tokens,
        input_tokens_details=InputTokensDetails(cached_tokens=cached),
        output_tokens=usage.completion_tokens,
        output_tokens_details=OutputTokensDetails(reasoning_tokens=details.reasoning_tokens if details else 0),
        total_tokens=usage.total_tokens,
    )
