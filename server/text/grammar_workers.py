"""Structured-output constraints checked in worker processes, each compile under a time budget.

xgrammar compiles in C++: a thread cannot interrupt it, and its time grows with a constraint's
shape far faster than with its size (a regex of nested alternations a few thousand characters long
takes minutes; the README's limits section has measured cases). So each new constraint is
compiled in a worker process (``server/text/grammar_check.py``) before its request is accepted,
and a compile that outlasts the budget has its worker killed, which is the only way to stop it,
and replaced. The same happens when its client goes away
(the caller's task is cancelled). What passes is what the engines compile: the CPU engine the
same way, vLLM with the same library and tokenizer, so their compile is bounded by the budget too.

Workers are forked from multiprocessing's fork server, which imports this module (and with it
xgrammar, jsonschema, and the torch that xgrammar imports) once: a replacement is ready in
tens of milliseconds, shares those pages, and never inherits the server's threads. The fork
server starts with the server (``warm``), importing while the model loads; the workers start
with the first constraint, so a server that never sees one never starts them. Outcomes are
cached by the constraint's digest, as clients send the same schemas and tools again and again;
a timeout is not cached, since it may reflect a busy machine rather than the constraint.
Requests with the same constraint share one compile; new constraints wait for a free worker in
turn, a bounded number of them, and the budget starts when a worker takes one.
"""

from __future__ import annotations

import asyncio
import hashlib
import multiprocessing
import multiprocessing.forkserver
import sys
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from types import ModuleType

import xgrammar as xgr
from cachetools import LRUCache

from adapters.engine import StructuredOutput
from server.text.grammar_check import problem

_CONTEXT = multiprocessing.get_context("forkserver")
_READY = "ready"
_CACHED_OUTCOMES = 1024
# What a crashed compile is reported as (a segfault in xgrammar, or the worker killed for memory).
WORKER_DIED = "the grammar compiler failed on it"


class CompileTimeout(Exception):
    """A compile ran past the budget; its worker was killed."""


class CompileQueueFull(Exception):
    """As many constraints as allowed already wait for a free worker."""


def _serve(conn: Connection, tokenizer_info_json: str) -> None:
    """A worker's life: build a compiler, then answer each constraint with its problem or None."""
    info = xgr.TokenizerInfo.deserialize_json(tokenizer_info_json)
    # One thread, so a compile takes one core at most; no cache: the server caches outcomes.
    compiler = xgr.GrammarCompiler(info, max_threads=1, cache_enabled=False)
    conn.send(_READY)
    while True:
        try:
            constraint = conn.recv()
        except EOFError:  # the server closed its end
            return
        try:
            outcome = problem(compiler, constraint)
        except Exception as exc:  # whatever a checker raises is this constraint's problem
            outcome = f"it could not be checked ({type(exc).__name__}: {exc})"
        conn.send(outcome)


@dataclass(eq=False)
class _Flight:
    """One constraint's compile, and how many requests wait for its outcome."""

    task: asyncio.Task[str | None]
    callers: int = 0


@dataclass(eq=False)
class _Worker:
    process: BaseProcess
    conn: Connection

    def kill(self) -> None:
        self.process.kill()
        self.conn.close()


class GrammarWorkers:
    """A few compile workers and the outcomes they found; ``close`` ends them."""

    def __init__(
        self, tokenizer_info: Callable[[], xgr.TokenizerInfo], *, workers: int, timeout_s: float, max_waiting: int
    ) -> None:
        """``tokenizer_info`` builds the tokenizer's view the engine compiles with (when the
        first constraint comes); ``workers`` compile in parallel, each on one core; ``timeout_s``
        is the budget of one compile, from when a worker takes it; ``max_waiting`` callers may
        wait for a free worker, so a flood of slow constraints cannot queue without bound."""
        self._tokenizer_info = tokenizer_info
        self._size = workers
        self.timeout_s = timeout_s
        self.max_waiting = max_waiting
        self._flights: dict[str, _Flight] = {}  # compiles under way or waiting for a worker, by constraint
        self._idle: asyncio.Queue[_Worker] = asyncio.Queue()
        self._all: set[_Worker] = set()
        self._info_json = ""
        self._closed = False
        self._starting: asyncio.Task[None] | None = None
        self._respawns: set[asyncio.Task[None]] = set()
        self._outcomes: LRUCache[str, str | None] = LRUCache(maxsize=_CACHED_OUTCOMES)

    async def problem(self, constraint: StructuredOutput) -> str | None:
        """Why ``constraint`` cannot be enforced, or None when it compiles.

        Requests with the same constraint share one compile. A new one waits for a free worker,
        behind at most ``max_waiting`` others (else raises ``CompileQueueFull``). Raises
        ``CompileTimeout`` when the compile outlasts ``timeout_s``; when every caller waiting
        for a compile is cancelled (their clients left), the compile stops.
        """
        key = hashlib.sha256(repr(constraint).encode()).hexdigest()
        if key in self._outcomes:
            return self._outcomes[key]
        flight = self._flights.get(key)
        if flight is None:
            if len(self._flights) >= self._size + self.max_waiting:
                raise CompileQueueFull
            if self._starting is None:
                self._starting = asyncio.create_task(self._start())
            compiling = self._compile(key, constraint, self._starting)
            flight = self._flights[key] = _Flight(asyncio.create_task(compiling))
            flight.task.add_done_callback(lambda _: self._flights.pop(key, None))
        flight.callers += 1
        try:
            return await asyncio.shield(flight.task)
        finally:
            flight.callers -= 1
            if flight.callers == 0 and not flight.task.done():  # every caller left: stop the compile
                flight.task.cancel()

    async def _compile(self, key: str, constraint: StructuredOutput, starting: asyncio.Task[None]) -> str | None:
        """The outcome from the next free worker (once the workers have started), within the budget."""
        await asyncio.shield(starting)
        worker = await self._idle.get()
        try:
            worker.conn.send(constraint)
            async with asyncio.timeout(self.timeout_s):
                await _readable(worker.conn)
            outcome: str | None = worker.conn.recv()
        except TimeoutError:
            self._replace(worker)
            raise CompileTimeout from None
        except (EOFError, OSError):  # the worker died on it (or just before: not cached)
            self._replace(worker)
            return WORKER_DIED
        except BaseException:  # cancelled: the client went away
            self._replace(worker)
            raise
        else:
            self._idle.put_nowait(worker)
        self._outcomes[key] = outcome
        return outcome

    def warm(self) -> None:
        """Start the fork server now, so its imports (seconds) are done before the first constraint."""
        _CONTEXT.set_forkserver_preload(_preload())
        multiprocessing.forkserver.ensure_running()

    async def close(self) -> None:
        """Kill every worker, busy or idle, for good; a server that never compiled has none."""
        self._closed = True
        flights = [flight.task for flight in self._flights.values()]
        tasks = [t for t in (self._starting, *self._respawns, *flights) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for worker in self._all:
            worker.process.kill()  # a busy one's caller sees it die and closes its end
        while not self._idle.empty():
            self._idle.get_nowait().conn.close()
        self._all.clear()

    async def _start(self) -> None:
        self.warm()
        self._info_json = await asyncio.to_thread(lambda: self._tokenizer_info().serialize_json())
        for _ in range(self._size):
            await self._add_worker()

    async def _add_worker(self) -> None:
        worker = await asyncio.to_thread(self._spawn)
        self._all.add(worker)
        self._idle.put_nowait(worker)

    def _spawn(self) -> _Worker:
        """A new worker, once it is ready for its first constraint (blocks: run it off the loop)."""
        conn, child = _CONTEXT.Pipe()
        process = _CONTEXT.Process(target=_serve, args=(child, self._info_json), name="ise-grammar-worker", daemon=True)
        process.start()
        child.close()
        worker = _Worker(process, conn)
        try:
            if conn.recv() != _READY:
                raise RuntimeError("a grammar worker started wrongly")
        except BaseException:
            worker.kill()
            raise
        return worker

    def _replace(self, worker: _Worker) -> None:
        """Kill ``worker`` (all that stops a compile) and start another in its place."""
        worker.kill()
        self._all.discard(worker)
        if self._closed:
            return
        task = asyncio.get_running_loop().create_task(self._respawn(worker))
        self._respawns.add(task)
        task.add_done_callback(self._respawns.discard)

    async def _respawn(self, dead: _Worker) -> None:
        await asyncio.to_thread(dead.process.join)
        await self._add_worker()


def _preload() -> list[str]:
    """What the fork server imports once, before its first fork: this module (seconds: torch), and
    what the program's main module imports, since multiprocessing runs the main module again in
    every child it starts (as ``__mp_main__``): for ``ise serve`` that is the whole server, a
    second of CPU per worker unless those imports are already done."""
    main = sys.modules["__main__"]
    spec = getattr(main, "__spec__", None)
    if spec is not None:  # python -m NAME: NAME itself (a package's __main__ is not run again)
        return [__name__] if spec.name.endswith(".__main__") else [__name__, spec.name]
    # A script, such as the ``ise`` console script: the modules its names come from. (The fork
    # server cannot run the script itself: Python 3.11 drops its path on the way.)
    sources = {
        value.__name__ if isinstance(value, ModuleType) else getattr(value, "__module__", None)
        for value in vars(main).values()
    }
    return [
        __name__,
        *sorted(name for name in sources if isinstance(name, str) and name in sys.modules and name != "__main__"),
    ]


async def _readable(conn: Connection) -> None:
    """Wait, without a thread, until ``conn`` has a message (or its worker died)."""
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    fd = conn.fileno()
    loop.add_reader(fd, wake)
    try:
        await ready
    finally:
        loop.remove_reader(fd)
