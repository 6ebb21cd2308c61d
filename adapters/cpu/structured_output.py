"""Structured outputs on the CPU engine: grammars compiled with xgrammar, vLLM's default backend.

One ``StructuredOutputManager`` per engine holds xgrammar's compiler, built on first use from the
model's tokenizer (a few seconds an engine that never sees a constraint need not spend); it
caches compiled grammars, so a schema sent again compiles once. Each constrained request gets a
``Grammar``: a matcher that follows its output and, before each of its tokens is sampled, a
bitmask of the tokens that keep the output inside the grammar.

Compiling runs on a thread of the event loop's pool when the request arrives, never on the
engine's thread, and a constraint that does not compile fails its own request. Filling the
bitmasks runs on the model runner's worker thread while the forward pass computes.
"""

from __future__ import annotations

import json
import threading

import torch
import xgrammar as xgr
from transformers import AutoTokenizer

from adapters.engine import StructuredOutput
from adapters.model_info import ModelInfo

# Compiled grammars kept for reuse, least recently used evicted past this: xgrammar's default
# keeps every schema ever sent, so a server sent ever-new schemas would grow without end.
GRAMMAR_CACHE_BYTES = 256 * 2**20


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


def choice_grammar(choice: tuple[str, ...]) -> str:
    """An EBNF grammar matching exactly one of the strings.

    JSON's string escapes are also the EBNF dialect's, so each string is written as JSON.
    """
    return "root ::= " + " | ".join(json.dumps(text, ensure_ascii=False) for text in choice)


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
        if constraint.json is not None:
            compiled = compiler.compile_json_schema(constraint.json)
        elif constraint.json_object:
            compiled = compiler.compile_json_schema('{"type": "object"}')
        elif constraint.regex is not None:
            compiled = compiler.compile_regex(constraint.regex)
        elif constraint.choice is not None:
            compiled = compiler.compile_grammar(choice_grammar(constraint.choice))
        elif constraint.grammar is not None:
            compiled = compiler.compile_grammar(constraint.grammar)
        else:
            raise ValueError("the structured output constraint sets none of its fields")
        return Grammar(compiled, self._vocab_size)

    def _get_compiler(self) -> xgr.GrammarCompiler:
        with self._lock:
            if self._compiler is None:
                tokenizer = AutoTokenizer.from_pretrained(self._model.path)
                # The model's rows, not the tokenizer's length: the bitmask must cover every logit.
                self._vocab_size = self._model.vocab_size or len(tokenizer)
                info = xgr.TokenizerInfo.from_huggingface(
                    tokenizer, vocab_size=self._vocab_size, stop_token_ids=sorted(self._model.eos_token_ids) or None
                )
                self._compiler = xgr.GrammarCompiler(
                    info, max_threads=self._max_threads, cache_limit_bytes=GRAMMAR_CACHE_BYTES
                )
            return self._compiler
