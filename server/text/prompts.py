"""Request text into prompt token ids, one way for every route that takes it.

``/tokenize`` exists so clients can count what a completion will be charged; that count is only
right if both routes turn messages and text into tokens through the same code, with the same
size checks, so both live here rather than in either route.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from server.endpoints.state import ServerState
from server.protocol.errors import invalid_request


def chat_prompt(
    messages: Sequence[Mapping[str, Any]],
    state: ServerState,
    *,
    tools: list[dict[str, Any]] | None = None,
    template_kwargs: Mapping[str, Any] | None = None,
) -> list[int]:
    """The token ids of messages as ``ChatMessage.template_dict`` gives them, refused first if
    surely over the context window; ``tools`` and ``template_kwargs`` as ``Tokenization.chat_prompt`` takes them.

    The messages' text is measured before the template runs, and the rendered prompt (with the
    tools, tool-call arguments and template variables it took in) before it is tokenized.
    """
    check_text_length(sum(len(m["content"]) for m in messages), state, "messages")
    return state.tokenization.chat_prompt(
        messages, tools, template_kwargs, check_length=lambda chars: check_text_length(chars, state, "messages")
    )


def text_prompt(text: str, state: ServerState, *, add_special_tokens: bool = True) -> list[int]:
    """A text prompt's token ids, refused first if surely over the context window."""
    check_text_length(len(text), state, "prompt")
    return state.tokenization.encode(text, add_special_tokens=add_special_tokens)


def check_text_length(chars: int, state: ServerState, param: str) -> None:
    """Refuse text that surely exceeds the context window, without tokenizing it.

    Tokenizing runs on the event loop; a multi-megabyte prompt would stall every stream for
    the time it takes, only to be refused afterwards.
    """
    max_len = state.engine.max_model_len
    if chars > max_len * state.tokenization.max_token_chars:
        raise invalid_request(
            f"This model's maximum context length is {max_len} tokens; the {param} holds {chars} characters, "
            "which is surely more. Please reduce the length of the prompt.",
            param=param,
            code="context_length_exceeded",
        )
