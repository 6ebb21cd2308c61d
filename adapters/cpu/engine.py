"""The CPU engine: continuous batching of a transformers model on a worker thread.

The model runs on its own thread, off the event loop, so the HTTP server keeps accepting and
streaming while a step computes (torch releases the GIL inside its kernels). Requests and aborts
reach the worker through a queue and are taken in between steps; each step's tokens go back to
the event loop in one batch.

Only a failure of the engine itself (the model's forward pass, the scheduler) stops the worker.
What belongs to one request is isolated: its sequence and seeded generator are built on the
event loop before it reaches the worker, and a failure while sampling for it ends that request
alone with a ``RequestFailedError``.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from pathlib import Path

import torch

from adapters.cpu.block_manager import BlockManager
from adapters.cpu.model_runner import ModelImpl, ModelRunner, eos_token_ids
from adapters.cpu.packed_linear import Quantization
from adapters.cpu.sampler import Sampler
from adapters.cpu.scheduler import Scheduler
from adapters.cpu.sequence import Sequence
from adapters.engine import (
    EngineDeadError,
    EngineOutput,
    EngineRequest,
    EngineStats,
    FinishReason,
    RequestFailedError,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CPUEngineConfig:
    model_dir: Path
    dtype: torch.dtype
    max_model_len: int
    max_num_seqs: int
    max_num_batched_tokens: int
    threads: int
    kv_cache_bytes: int
    kernel_dir: Path  # where ise's CPU kernels are built and cached
    block_size: int = 16
    prefill_chunk_tokens: int = 16
    long_prompt_tokens: int = 256
    prefix_caching: bool = True
    model_impl: ModelImpl = "auto"
    quantization: Quantization = "none"


@dataclass(frozen=True)
class _Abort:
    request_id: str


class _Stop:
    pass


_Message = Sequence | _Abort | _Stop
_Delivery = list[tuple[str, EngineOutput | RequestFailedError]]


class CPUEngine:
    def __init__(self, config: CPUEngineConfig) -> None:
        self.config = config
        self._eos = eos_token_ids(config.model_dir)
        self._sampler = Sampler(self._eos)
        self._runner: ModelRunner | None = None
        self._scheduler: Scheduler | None = None
        self._inbox: queue.SimpleQueue[_Message] = queue.SimpleQueue()
        self._streams: dict[str, asyncio.Queue[EngineOutput | BaseException]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self.steps = 0
        self.tokens_computed = 0

    @property
    def max_model_len(self) -> int:
        return self.config.max_model_len

    @property
    def eos_token_ids(self) -> frozenset[int]:
        return self._eos

    @property
    def is_alive(self) -> bool:
        return self._error is None and self._thread is not None and self._thread.is_alive()

    async def start(self) -> None:
        """Load the model on the worker thread and return once it is ready to step."""
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
        scheduler = self._scheduler
        if scheduler is None:
            return EngineStats()
        blocks = scheduler.blocks
        return EngineStats(
            running=len(scheduler.running),
            waiting=len(scheduler.waiting),
            kv_blocks_used=blocks.num_used,
            kv_blocks_total=blocks.num_blocks,
            steps=self.steps,
            tokens_computed=self.tokens_computed,
            prefix_cache_queried_tokens=blocks.stats.queried_tokens,
            prefix_cache_hit_tokens=blocks.stats.hit_tokens,
            preemptions=scheduler.num_preemptions,
        )

    async def generate(self, request: EngineRequest) -> AsyncGenerator[EngineOutput, None]:
        if not self.is_alive:
            raise EngineDeadError("The engine is not running") from self._error
        try:
            seq = Sequence(request)
        except Exception as exc:  # e.g. a seed torch refuses: this request fails, the worker never sees it
            raise RequestFailedError(f"The request could not be set up: {exc}") from exc
        outputs: asyncio.Queue[EngineOutput | BaseException] = asyncio.Queue()
        self._streams[request.request_id] = outputs
        self._inbox.put(seq)
        finished = False
        try:
            while True:
                item = await outputs.get()
                if isinstance(item, BaseException):
                    raise item
                finished = item.finish_reason is not None
                yield item
                if finished:
                    return
        finally:
            self._streams.pop(request.request_id, None)
            if not finished:
                self.abort(request.request_id)

    def abort(self, request_id: str) -> None:
        self._inbox.put(_Abort(request_id))

    def _load(self) -> ModelRunner:
        # Every torch computation happens on this one thread, loading included. With libgomp,
        # once any other thread (say, the event loop's) has run a parallel region, parallel
        # regions started from this thread wake their workers slowly: measured here, a
        # batch-1 decode step went from 31 ms to 52 ms.
        config = self.config
        torch.set_num_threads(config.threads)
        runner = ModelRunner(
            config.model_dir,
            dtype=config.dtype,
            kv_cache_bytes=config.kv_cache_bytes,
            block_size=config.block_size,
            kernel_dir=config.kernel_dir,
            model_impl=config.model_impl,
            quantization=config.quantization,
        )
        capacity = runner.cache.num_blocks * config.block_size
        if capacity < config.max_model_len:
            raise ValueError(
                f"The KV cache holds {capacity} tokens, fewer than one request of --max-model-len "
                f"{config.max_model_len}; give it more memory (--kv-cache-gib) or lower --max-model-len"
            )
        self._scheduler = Scheduler(
            BlockManager(runner.cache.num_blocks, config.block_size, prefix_caching=config.prefix_caching),
            max_num_seqs=config.max_num_seqs,
            max_num_batched_tokens=config.max_num_batched_tokens,
            prefill_chunk_tokens=config.prefill_chunk_tokens,
            long_prompt_tokens=config.long_prompt_tokens,
        )
        return runner

    def _run(self, ready: asyncio.Future[None]) -> None:
        assert self._loop is not None
        try:
            self._runner = self._load()
        except BaseException as exc:
            self._error = exc
            self._loop.call_soon_threadsafe(ready.set_exception, exc)
            return
        self._loop.call_soon_threadsafe(ready.set_result, None)
        assert self._scheduler is not None
        try:
            while True:
                if not self._take_messages(block=not self._scheduler.has_work()):
                    return
                delivery = self._step()
                if delivery:
                    self._send(delivery)
        except BaseException as exc:  # the worker must report any failure, never die silently
            log.exception("CPU engine step failed; the engine is stopping")
            self._error = exc
            self._send_error(EngineDeadError(f"The engine failed: {exc!r}"))

    def _take_messages(self, *, block: bool) -> bool:
        """Apply queued submissions and aborts; False when asked to stop."""
        assert self._scheduler is not None
        while True:
            try:
                message = self._inbox.get(block=block)
            except queue.Empty:
                return True
            block = False
            if isinstance(message, _Stop):
                return False
            if isinstance(message, _Abort):
                seq = self._scheduler.find(message.request_id)
                if seq is not None:
                    self._finish(seq)
            else:
                self._scheduler.add(message)

    def _step(self) -> _Delivery:
        assert self._runner is not None and self._scheduler is not None
        chunks = self._scheduler.schedule()
        if not chunks:
            return []
        self.steps += 1
        self.tokens_computed += sum(c.num_tokens for c in chunks)
        sampled, logits = self._runner.step(chunks)
        for chunk in chunks:
            chunk.seq.num_computed += chunk.num_tokens
            self._scheduler.blocks.register_full_blocks(chunk.seq)
        seqs = [c.seq for c in sampled]
        delivery: _Delivery = []
        for seq, token in zip(seqs, self._sampler.sample(logits, seqs), strict=True):
            if isinstance(token, RequestFailedError):
                log.warning("Request %s failed while sampling: %s", seq.request_id, token)
                self._finish(seq)
                delivery.append((seq.request_id, token))
                continue
            seq.append(token)
            reason = self._finish_reason(seq, token)
            if reason is not None:
                seq.finish_reason = reason
                self._finish(seq)
            delivery.append((seq.request_id, EngineOutput([token], reason)))
        return delivery

    def _finish_reason(self, seq: Sequence, token: int) -> FinishReason | None:
        params = seq.request.params
        if token in params.stop_token_ids or (token in self._eos and not params.ignore_eos):
            return "stop"
        if len(seq.output_ids) >= params.max_tokens or seq.num_tokens >= self.config.max_model_len:
            return "length"
        return None

    def _finish(self, seq: Sequence) -> None:
        assert self._scheduler is not None
        self._scheduler.finish(seq)

    def _send(self, delivery: _Delivery) -> None:
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._deliver, delivery)

    def _deliver(self, delivery: _Delivery) -> None:
        for request_id, output in delivery:
            stream = self._streams.get(request_id)
            if stream is not None:
                stream.put_nowait(output)

    def _send_error(self, error: BaseException) -> None:
        assert self._loop is not None

        def fail_all() -> None:
            for stream in self._streams.values():
                stream.put_nowait(error)

        self._loop.call_soon_threadsafe(fail_all)
