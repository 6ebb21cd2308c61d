"""The CPU engine's async client: the core on a worker thread, each request's outputs on the event loop.

The model runs on its own thread, off the event loop, so the HTTP server keeps accepting and
streaming while a step computes (torch releases the GIL inside its kernels). Requests and aborts
reach the worker through a queue and are taken in between steps; each step's outputs go back to
the event loop in one call, into one ``RequestOutputCollector`` per request (vLLM's ``AsyncLLM``
over its ``EngineCore``).

Only a failure of the engine itself (the model's forward pass, the scheduler) stops the worker.
What belongs to one request is isolated: its sequence, seeded generator and compiled grammar are
built here, before the request reaches the worker (the grammar on a thread of the event loop's
pool, so a slow compilation delays neither the loop nor any step), and a failure while sampling
for it ends that request alone with a ``RequestFailedError``.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field

from adapters.cpu.engine_core import CPUEngineConfig, EngineCore
from adapters.cpu.output_collector import RequestOutputCollector
from adapters.cpu.scheduler import EngineCoreOutputs
from adapters.cpu.sequence import Sequence
from adapters.cpu.structured_output import StructuredOutputManager
from adapters.engine import EngineDeadError, EngineOutput, EngineRequest, EngineStats, RequestFailedError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Abort:
    request_id: str
    requested_at: float = field(default_factory=time.monotonic)


class _Stop:
    pass


_Message = Sequence | _Abort | _Stop


CoreFactory = Callable[[CPUEngineConfig], EngineCore]


class CPUEngine:
    def __init__(self, config: CPUEngineConfig, core_class: CoreFactory = EngineCore) -> None:
        """``core_class`` builds the core on the worker thread; tests pass one with an injected fault."""
        self.config = config
        self._core_class = core_class
        self.core: EngineCore | None = None  # built by start(), on the worker thread
        self._inbox: queue.SimpleQueue[_Message] = queue.SimpleQueue()
        self._collectors: dict[str, RequestOutputCollector] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._structured_output = StructuredOutputManager(config.model, max_threads=config.threads)

    @property
    def max_model_len(self) -> int:
        return self.config.max_model_len

    @property
    def is_alive(self) -> bool:
        return self._error is None and self._thread is not None and self._thread.is_alive()

    async def start(self) -> None:
        """Build the core on the worker thread and return once it is ready to step."""
        self._loop = asyncio.get_running_loop()
        ready: asyncio.Future[None] = self._loop.create_future()
        self._thread = threading.Thread(target=self._run, args=(ready,), name="ise-cpu-engine", daemon=True)
        self._thread.start()
        await ready

    async def shutdown(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            self._inbox.put(_Stop())
            await asyncio.to_thread(self._thread.join)

    def stats(self) -> EngineStats:
        return self.core.stats() if self.core is not None else EngineStats()

    async def generate(self, request: EngineRequest) -> AsyncGenerator[EngineOutput, None]:
        if not self.is_alive:
            raise EngineDeadError("The engine is not running") from self._error
        try:
            seq = Sequence(request)
            constraint = request.params.structured_output
            if constraint is not None:
                seq.grammar = await asyncio.to_thread(self._structured_output.grammar, constraint)
        except Exception as exc:  # a seed torch refuses, a grammar that does not compile: this request fails
            raise RequestFailedError(f"The request could not be set up: {exc}") from exc
        collector = RequestOutputCollector()
        self._collectors[request.request_id] = collector
        self._inbox.put(seq)
        finished = False
        try:
            while not finished:
                output = await collector.get()
                finished = output.finish_reason is not None
                yield output
        finally:
            self._collectors.pop(request.request_id, None)
            if not finished:
                self.abort(request.request_id)

    def abort(self, request_id: str) -> None:
        self._inbox.put(_Abort(request_id))

    def _run(self, ready: asyncio.Future[None]) -> None:
        assert self._loop is not None
        try:
            core = self.core = self._core_class(self.config)
        except BaseException as exc:
            self._error = exc
            self._loop.call_soon_threadsafe(ready.set_exception, exc)
            return
        self._loop.call_soon_threadsafe(ready.set_result, None)
        try:
            while self._take_messages(core, block=not core.has_unfinished_requests()):
                outputs = core.step()
                if outputs:
                    self._loop.call_soon_threadsafe(self._deliver, outputs)
        except BaseException as exc:  # the worker must report any failure, never die silently
            log.exception("CPU engine step failed; the engine is stopping")
            self._error = exc
            self._loop.call_soon_threadsafe(self._fail_all, EngineDeadError(f"The engine failed: {exc!r}"))

    def _take_messages(self, core: EngineCore, *, block: bool) -> bool:
        """Apply queued submissions and aborts; False when asked to stop."""
        while True:
            try:
                message = self._inbox.get(block=block)
            except queue.Empty:
                return True
            block = False
            if isinstance(message, _Stop):
                return False
            if isinstance(message, _Abort):
                core.abort_request(message.request_id, message.requested_at)
            else:
                core.add_request(message)

    def _deliver(self, outputs: EngineCoreOutputs) -> None:
        for request_id, output in outputs:
            collector = self._collectors.get(request_id)
            if collector is not None:
                collector.put(output)

    def _fail_all(self, error: EngineDeadError) -> None:
        for collector in self._collectors.values():
            collector.put(error)
