"""The CPU engine for embedding models: dynamic batching of every client's inputs into shared passes.

Requests hand their inputs (token ids) to one worker thread. The worker waits for the first input,
then, while clients are sending concurrently (the last pass served more than one request), at most
``batch_window_s`` from the moment the oldest waiting input arrived for more to join (not at all
when the waiting inputs already fill the budget), packs what waits by length under
``max_batch_tokens`` (``batching.pack``) and runs the passes through transformers' ``AutoModel``,
pooling and normalizing as the model's sentence-transformers files say. Inputs that arrive while a
pass runs join the next one, so under load passes fill up even without a window; a lone client
never waits for one.

The queue itself is unbounded: the gateway's admission bounds what reaches it, as for completions.
A failure of a forward pass stops the engine (as the generating engines do): every waiting input
fails with ``EngineDeadError`` and /health reports it.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import numpy.typing as npt
import torch
from typing_extensions import TypeIs

from adapters.embedding.batching import pack, padded_tokens
from adapters.embedding.config import EmbeddingSpec
from adapters.engine import EngineBase, EngineDeadError, EngineStats

log = logging.getLogger(__name__)

Vector = npt.NDArray[np.float32]


class Embedder(EngineBase, Protocol):
    """An engine that turns inputs (token ids) into embeddings, as its ``spec`` describes them."""

    @property
    def spec(self) -> EmbeddingSpec: ...

    async def embed(self, inputs: Sequence[list[int]]) -> list[Vector]:
        """One vector per input (float32, ``spec.dimensions`` long, unit length where ``spec.normalize``).

        Inputs must be non-empty and at most ``max_model_len`` tokens (the server checks).
        Raises ``EngineDeadError`` when the engine has stopped. Cancelling drops the inputs not yet run.
        """
        ...


def is_embedder(engine: object) -> TypeIs[Embedder]:
    """Whether ``engine`` embeds rather than generates: its class has ``embed``.

    Looked up on the class, so no property runs (an engine's may need it started).
    """
    return callable(getattr(type(engine), "embed", None))


@dataclass
class _Input:
    ids: list[int]
    future: asyncio.Future[Vector]
    request: int  # which embed() call it came with
    arrived: float = field(default_factory=time.monotonic)


class _Stop:
    pass


class CPUEmbeddingEngine:
    """``Embedder`` on this machine's CPU through transformers, with dynamic batching."""

    def __init__(
        self,
        model_dir: str | Path,
        spec: EmbeddingSpec,
        *,
        dtype: torch.dtype = torch.float32,
        threads: int | None = None,
        max_batch_tokens: int = 2048,
        batch_window_s: float = 0.002,
    ) -> None:
        self.model_dir = str(model_dir)
        self._spec = spec
        self.dtype = dtype
        self.threads = threads
        self.max_batch_tokens = max_batch_tokens
        self.batch_window_s = batch_window_s
        self._inbox: queue.SimpleQueue[list[_Input] | _Stop] = queue.SimpleQueue()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._waiting = 0  # inputs handed over and not yet in a pass (read across threads: a level, not exact)
        self._running = 0
        self._steps = 0
        self._tokens = 0
        self._pad_id = 0
        self._requests = 0  # embed() calls so far, numbering their inputs
        self._concurrent = False  # the last pass served several requests: worth waiting for more
        self._model: torch.nn.Module | None = None
        self._taken: list[_Input] = []  # the inputs of the passes running now

    @property
    def spec(self) -> EmbeddingSpec:
        return self._spec

    @property
    def max_model_len(self) -> int:
        return self._spec.max_seq_length

    @property
    def is_alive(self) -> bool:
        return self._error is None and self._thread is not None and self._thread.is_alive()

    def stats(self) -> EngineStats:
        return EngineStats(
            running=self._running, waiting=self._waiting, steps=self._steps, tokens_computed=self._tokens
        )

    async def start(self) -> None:
        """Load the model (off the event loop) and start the worker."""
        from transformers import AutoModel, AutoTokenizer

        if self.threads is not None:
            torch.set_num_threads(self.threads)
        self._loop = asyncio.get_running_loop()

        def load() -> torch.nn.Module:
            model: torch.nn.Module = AutoModel.from_pretrained(self.model_dir, dtype=self.dtype)
            return model.eval()

        self._model = await asyncio.to_thread(load)
        pad = AutoTokenizer.from_pretrained(self.model_dir).pad_token_id
        self._pad_id = int(pad) if pad is not None else 0
        self._thread = threading.Thread(target=self._run, name="ise-embedding-engine", daemon=True)
        self._thread.start()

    async def shutdown(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            self._inbox.put(_Stop())
            await asyncio.to_thread(self._thread.join)

    async def embed(self, inputs: Sequence[list[int]]) -> list[Vector]:
        if not self.is_alive:
            raise EngineDeadError("The embedding engine is not running.")
        loop = asyncio.get_running_loop()
        self._requests += 1
        items = [_Input(list(ids), loop.create_future(), self._requests) for ids in inputs]
        self._waiting += len(items)
        self._inbox.put(items)
        try:
            return list(await asyncio.gather(*(item.future for item in items)))
        finally:
            for item in items:
                item.future.cancel()  # a no-op once done; else the worker skips the input

    def _run(self) -> None:
        backlog: deque[_Input] = deque()
        try:
            while self._take(backlog):
                self._step(backlog)
        except Exception as exc:  # the model failed: the engine stops, every input taken or waiting fails
            log.exception("The embedding engine failed")
            self._error = exc
            backlog.extend(self._taken)
            backlog.extend(item for msg in self._drain() for item in msg)
            for item in backlog:
                self._resolve(item, None, EngineDeadError(f"The embedding engine failed: {exc}"))

    def _drain(self) -> list[list[_Input]]:
        taken: list[list[_Input]] = []
        while True:
            try:
                msg = self._inbox.get_nowait()
            except queue.Empty:
                return taken
            if isinstance(msg, list):
                taken.append(msg)

    def _take(self, backlog: deque[_Input]) -> bool:
        """Move inputs from the inbox into ``backlog`` until the next pass should start; False: stop."""
        if not backlog:
            msg = self._inbox.get()
            if isinstance(msg, _Stop):
                return False
            backlog.extend(msg)
        deadline = backlog[0].arrived + (self.batch_window_s if self._concurrent else 0.0)
        while sum(len(item.ids) for item in backlog) < self.max_batch_tokens:
            wait = deadline - time.monotonic()
            try:
                msg = self._inbox.get(timeout=wait) if wait > 0 else self._inbox.get_nowait()
            except queue.Empty:
                break
            if isinstance(msg, _Stop):
                return False
            backlog.extend(msg)
        return True

    def _step(self, backlog: deque[_Input]) -> None:
        """Run the passes for what fits the budget (the oldest inputs first), leaving the rest waiting."""
        batch = self._taken = []  # settled as they run; failed with the engine if a pass raises
        tokens = 0
        while backlog and (not batch or tokens + len(backlog[0].ids) <= self.max_batch_tokens):
            item = backlog.popleft()
            self._waiting -= 1
            if not item.future.cancelled():
                batch.append(item)
                tokens += len(item.ids)
        self._concurrent = len({item.request for item in batch}) > 1
        lengths = [len(item.ids) for item in batch]
        for indices in pack(lengths, self.max_batch_tokens):
            members = [batch[i] for i in indices]
            self._running = len(members)
            vectors = self._forward([m.ids for m in members])
            self._steps += 1
            self._tokens += padded_tokens(lengths, [indices])
            self._running = 0
            for member, vector in zip(members, vectors, strict=True):
                self._resolve(member, vector, None)

    @torch.inference_mode()
    def _forward(self, inputs: list[list[int]]) -> list[Vector]:
        assert self._model is not None
        longest = max(len(ids) for ids in inputs)
        ids = torch.full((len(inputs), longest), self._pad_id, dtype=torch.long)
        mask = torch.zeros((len(inputs), longest), dtype=torch.long)
        for row, seq in enumerate(inputs):
            ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
            mask[row, : len(seq)] = 1
        hidden = self._model(input_ids=ids, attention_mask=mask).last_hidden_state.float()
        pooled = pool(hidden, mask, self._spec)
        if self._spec.normalize:
            pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
        return list(pooled.numpy())

    def _resolve(self, item: _Input, vector: Vector | None, error: BaseException | None) -> None:
        assert self._loop is not None

        def settle() -> None:
            if item.future.done():
                return
            if error is not None:
                item.future.set_exception(error)
            else:
                item.future.set_result(vector)  # type: ignore[arg-type]

        self._loop.call_soon_threadsafe(settle)


def pool(hidden: torch.Tensor, mask: torch.Tensor, spec: EmbeddingSpec) -> torch.Tensor:
    """Token states ``[batch, tokens, dim]`` into one vector per row, as sentence-transformers' Pooling does.

    ``mask``: 1 for the row's tokens, 0 for padding (right-padded).
    """
    if spec.pooling == "cls":
        return hidden[:, 0]
    if spec.pooling == "lasttoken":
        last = mask.sum(dim=1) - 1
        return hidden[torch.arange(hidden.shape[0]), last]
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    if spec.pooling == "max":
        return hidden.masked_fill(weights == 0, -1e9).max(dim=1).values
    return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)
