"""Prefix caching as a user of the real server sees it: the same answer, and the shared prompt not recomputed."""

from __future__ import annotations

import openai
from openai.types.chat import ChatCompletionMessageParam

from tests.real.helpers import ServerHandle

SYSTEM = "You answer questions about the solar system in one short sentence. " * 12


def _conversation(question: str) -> list[ChatCompletionMessageParam]:
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]


def test_shared_system_prompt_is_served_from_the_cache(client: openai.OpenAI, server: ServerHandle) -> None:
    hits_before = server.metric("ise_prefix_cache_hit_tokens_total")
    first = client.chat.completions.create(
        model=server.model, messages=_conversation("Which planet is largest?"), temperature=0, max_tokens=12
    )
    hits_between = server.metric("ise_prefix_cache_hit_tokens_total")
    again = client.chat.completions.create(
        model=server.model, messages=_conversation("Which planet is largest?"), temperature=0, max_tokens=12
    )
    other = client.chat.completions.create(
        model=server.model, messages=_conversation("Which planet is hottest?"), temperature=0, max_tokens=12
    )
    hits_after = server.metric("ise_prefix_cache_hit_tokens_total")
    assert again.choices[0].message.content == first.choices[0].message.content
    assert other.choices[0].message.content
    assert first.usage is not None and other.usage is not None
    # Both later requests found the system prompt's blocks (all but a partial last block).
    shared_tokens = first.usage.prompt_tokens - 16
    assert hits_after - hits_between >= 2 * (shared_tokens - 16)
    assert hits_between == hits_before, "the first request had nothing to reuse"
    assert server.metric("ise_kv_cache_blocks_used") == 0
