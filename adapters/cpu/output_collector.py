"""One slot per request where the engine's outputs wait for their consumer, merged.

When a consumer falls behind (a slow client, a busy event loop at 32 streams on 2 cores), new
tokens join the output already waiting instead of queueing one item per step, so the consumer
wakes once and takes them all, as vLLM's ``RequestOutputCollector`` does.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace

from adapters.engine import EngineOutput


class RequestOutputCollector:
    def __init__(self) -> None:
        self._output: EngineOutput | None = None
        self._error: BaseException | None = None
        self._ready = asyncio.Event()

    def put(self, item: EngineOutput | BaseException) -> None:
        """Add an output (or the error that ends the request); called on the event loop."""
        if isinstance(item, BaseException):
            self._error = item
        elif self._output is None:
            self._output = item
        else:
            first = self._output
            logprobs = None
            if first.logprobs is not None or item.logprobs is not None:
                logprobs = (first.logprobs or []) + (item.logprobs or [])
            # What only a request's first output carries stays with the merged one.
            self._output = replace(
                first,
                new_token_ids=first.new_token_ids + item.new_token_ids,
                finish_reason=item.finish_reason,
                stop_reason=item.stop_reason,
                logprobs=logprobs,
            )
        self._ready.set()

    async def get(self) -> EngineOutput:
        """Everything that arrived since the last call; raises the request's error once its tokens are taken."""
        await self._ready.wait()
        output, self._output = self._output, None
        if output is not None:
            if self._error is None:
                self._ready.clear()
            return output
        assert self._error is not None
        raise self._error
