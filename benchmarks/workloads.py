"""Benchmark requests: synthetic prompts of set lengths, and a shared-system-prompt chat workload.

A fixed seed makes the same list of requests for every target, so servers are compared on
identical work. Prompts are made of random vocabulary tokens, as vLLM's random dataset does,
so their length in tokens is known without trusting any server's count.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Literal

from transformers import PreTrainedTokenizerBase

Api = Literal["completions", "chat"]


@dataclass(frozen=True)
class RequestSpec:
    api: Api
    prompt: str | None = None
    messages: list[dict[str, str]] | None = None
    max_tokens: int = 128
    # Ask for exactly max_tokens (ignore_eos), so every target generates the same amount.
    fixed_length: bool = True
    # More body fields, sent as they are (a response_format, say); HTTP clients only.
    extra_body: dict[str, Any] | None = None

    def body(self) -> dict[str, Any]:
        if self.api == "chat":
            return {"messages": self.messages}
        return {"prompt": self.prompt}


def _random_text(tokenizer: PreTrainedTokenizerBase, rng: random.Random, length: int) -> str:
    special = set(tokenizer.all_special_ids)
    vocab = [i for i in range(len(tokenizer)) if i not in special]
    ids = [rng.choice(vocab) for _ in range(length)]
    return str(tokenizer.decode(ids, skip_special_tokens=True))


def random_workload(
    tokenizer: PreTrainedTokenizerBase, *, count: int, input_len: int, output_len: int, seed: int
) -> list[RequestSpec]:
    """Text completions with ``input_len`` random tokens in and ``output_len`` tokens out."""
    rng = random.Random(seed)
    return [
        RequestSpec(api="completions", prompt=_random_text(tokenizer, rng, input_len), max_tokens=output_len)
        for _ in range(count)
    ]


def shared_prefix_workload(
    tokenizer: PreTrainedTokenizerBase,
    *,
    count: int,
    prefix_len: int,
    input_len: int,
    output_len: int,
    seed: int,
) -> list[RequestSpec]:
    """Chats that share one long system prompt and differ in the user turn: what a prefix cache serves."""
    rng = random.Random(seed)
    system = _random_text(tokenizer, rng, prefix_len)
    return [
        RequestSpec(
            api="chat",
            messages=[
                {"role": "system", "content": system},
                {"role": "user", "content": _random_text(tokenizer, rng, input_len)},
            ],
            max_tokens=output_len,
        )
        for _ in range(count)
    ]
