"""A structured-output constraint compiled by xgrammar, one way for whoever compiles it.

The CPU engine compiles a request's constraint to decode with it; the server compiles it first,
in a worker process under a time budget (``server/text/grammar_workers.py``), to learn whether it can
be enforced and how long that takes. Both must do the same work for that budget to bound the
engine's, so both build their compiler's tokenizer view and call the compiler here.

This module imports nothing heavier than xgrammar (which itself imports torch): the server's
compile workers load it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import TYPE_CHECKING

import xgrammar as xgr

from adapters.engine import StructuredOutput

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

# vLLM's default bound on xgrammar's cache of compiled grammars (VLLM_XGRAMMAR_CACHE_MB): without
# one the cache keeps every schema ever sent, and grows with each new one a client sends.
COMPILER_CACHE_BYTES = 512 * 1024 * 1024


def tokenizer_info(
    tokenizer: PreTrainedTokenizerBase, model_vocab_size: int | None, eos_token_ids: Iterable[int]
) -> xgr.TokenizerInfo:
    """xgrammar's view of the tokenizer; its bitmasks cover every row of the model's embedding
    (``model_vocab_size``, where known, else the tokenizer's length), and the EOS ids end a grammar."""
    return xgr.TokenizerInfo.from_huggingface(
        tokenizer,
        vocab_size=model_vocab_size or len(tokenizer),
        stop_token_ids=sorted(eos_token_ids) or None,
    )


def choice_grammar(choice: tuple[str, ...]) -> str:
    """An EBNF grammar matching exactly one of the strings.

    JSON's string escapes are also the EBNF dialect's, so each string is written as JSON.
    """
    return "root ::= " + " | ".join(json.dumps(text, ensure_ascii=False) for text in choice)


def compile_constraint(compiler: xgr.GrammarCompiler, constraint: StructuredOutput) -> xgr.CompiledGrammar:
    """The constraint's grammar, compiled against the compiler's tokenizer.

    Raises whatever xgrammar raises for a constraint that does not compile (a RuntimeError whose
    message says why), and ValueError for a constraint that sets none of its fields.
    """
    if constraint.json is not None:
        return compiler.compile_json_schema(constraint.json)
    if constraint.json_object:
        return compiler.compile_json_schema('{"type": "object"}')
    if constraint.regex is not None:
        return compiler.compile_regex(constraint.regex)
    if constraint.choice is not None:
        return compiler.compile_grammar(choice_grammar(constraint.choice))
    if constraint.grammar is not None:
        return compiler.compile_grammar(constraint.grammar)
    raise ValueError("the structured output constraint sets none of its fields")
