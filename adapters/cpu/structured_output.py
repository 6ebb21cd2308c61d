"""Structured outputs on the CPU engine: grammars compiled with xgrammar, vLLM's default backend.

One ``StructuredOutputManager`` per engine holds xgrammar's compiler, built on first use from the
model's tokenizer (a few seconds an engine that never sees a constraint need not spend); it
caches compiled grammars (up to ``COMPILER_CACHE_BYTES``), so a schema sent again compiles once.
Each constrained request gets a ``Grammar``: a matcher that follows its output and, before each
of its tokens is sampled, a bitmask of the tokens that keep the output inside the grammar.

Compiling runs on a thread of the event loop's pool when the request arrives, never on the
engine's thread, and a constraint that does not compile fails its own request. A compile cannot
be interrupted there, so the server compiles each constraint first, the same way
(``adapters/grammars.py``), in a worker process it stops at a time budget: what reaches the
engine has compiled within that budget. Filling the bitmasks runs on the model runner's worker
thread while the forward pass computes.
"""

from __future__ import annotations

import threading

import torch
import xgrammar as xgr
from transformers import AutoTokenizer

from adapters.engine import StructuredOutput
from adapters.grammars import COMPILER_CACHE_BYTES, compile_constraint, tokenizer_info
from adapters.model_info import ModelInfo


class Grammar:
    """One request's constraint, following its output token by token (vLLM's ``StructuredOutputGrammar``)."""

    def __init__(self, compiled: xgr.CompiledGrammar, vocab_size: int) -> None:
        self._matcher = xgr.GrammarMatcher(compiled)
        self._vocab_size = vocab_size
        self._bitmask = xgr.allocate_token_bitmask(1, vocab_size)
        # A failure while filling the bitmask off the engine's thread, raised when the mask is
        # applied: there it fails this request's sampling alone.
        self._fill_error: Exception | None = None

    def fill_bitmask(self) -> None:
        """Work out which tokens may come next; call once per step, before ``apply_bitmask``."""
        try:
            self._fill_error = None
            self._matcher.fill_next_token_bitmask(self._bitmask)
        except Exception as exc:  # this request's sampling fails with it, not the worker
            self._fill_error = exc

    def apply_bitmask(self, row: torch.Tensor) -> None:
        """Set the logits of the tokens the grammar forbids next to -inf, in place."""
        if self._fill_error is not None:
            raise self._fill_error
        xgr.apply_token_bitmask_inplace(row.unsqueeze(0), self._bitmask, vocab_size=self._vocab_size)

    def accept_token(self, token_id: int) -> bool:
        """Advance past a sampled token; False if the grammar does not allow it."""
        return bool(self._matcher.accept_token(token_id))

    @property
    def is_completed(self) -> bool:
        """The output so far is a complete match: an end-of-sequence token may follow."""
        return bool(self._matcher.is_completed())

    @property
    def is_terminated(self) -> bool:
        """The grammar ended and took its end-of-sequence token: the request is done."""
        return bool(self._matcher.is_terminated())


class StructuredOutputManager:
    """The engine's grammar compiler, built once from the model's tokenizer (vLLM's name)."""

    def __init__(self, model: ModelInfo, max_threads: int) -> None:
        self._model = model
        self._max_threads = max_threads
        self._lock = threading.Lock()
        self._compiler: xgr.GrammarCompiler | None = None
        self._vocab_size = 0

    def grammar(self, constraint: StructuredOutput) -> Grammar:
        """A fresh matcher for ``constraint``; blocks while compiling, so call it off the event loop.

        Raises whatever xgrammar raises for a constraint that does not compile.
        """
        compiler = self._get_compiler()
        return Grammar(compile_constraint(compiler, constraint), self._vocab_size)

    def _get_compiler(self) -> xgr.GrammarCompiler:
        with self._lock:
            if self._compiler is None:
                tokenizer = AutoTokenizer.from_pretrained(self._model.path)
                info = tokenizer_info(tokenizer, self._model.vocab_size, self._model.eos_token_ids)
                # The model's rows, not the tokenizer's length: the bitmask must cover every logit.
                self._vocab_size = info.vocab_size
                self._compiler = xgr.GrammarCompiler(
                    info, max_threads=self._max_threads, cache_limit_bytes=COMPILER_CACHE_BYTES
                )
            return self._compiler
