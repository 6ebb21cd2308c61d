"""Request text into prompt token ids, one way for every route that takes it.

``/tokenize`` exists so clients can count what a completion will be charged; that count is only
right if both routes turn messages and text into tokens through the same code, with the same
size checks, so both live here rather than in either route.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from adapters.engine import EngineBase
from server.protocol.errors import invalid_request
from server.text.tokenization import Tokenization


class Prompts:
    """Messages and text into the model's prompt token ids, refused first where surely too long."""

    def __init__(self, tokenization: Tokenization, engine: EngineBase) -> None:
        """``engine``: whose context window bounds the prompts (read per request: an engine may
        learn it only when it starts)."""
        self.tokenization = tokenization
        self.engine = engine

    def chat(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        tools: list[dict[str, Any]] | None = None,
        template_kwargs: Mapping[str, Any] | None = None,
        param: str = "messages",
    ) -> list[int]:
        """The token ids of messages as ``ChatMessage.template_dict`` gives them; ``tools`` and
        ``template_kwargs`` as ``Tokenization.chat_prompt`` takes them; ``param``: the field a 400
        for their length names, as the client's API calls it.

        The messages' text is measured before the template runs, and the rendered prompt (with the
        tools, tool-call arguments and template variables it took in) before it is tokenized.
        """
        self.check_length(sum(len(m["content"]) for m in messages), param)
        return self.tokenization.chat_prompt(
            messages, tools, template_kwargs, check_length=lambda chars: self.check_length(chars, param)
        )

    def text(self, text: str, *, add_special_tokens: bool = True) -> list[int]:
        """A text prompt's token ids."""
        self.check_length(len(text), "prompt")
        return self.tokenization.encode(text, add_special_tokens=add_special_tokens)

    def check_length(self, chars: int, param: str) -> None:
        """Refuse text that surely exceeds the context window, without tokenizing it.

        Tokenizing runs on the event loop; a multi-megabyte prompt would stall every stream for
        the time it takes, only to be refused afterwards.
        """
        max_len = self.engine.max_model_len
        if chars > max_len * self.tokenization.max_token_chars:
            raise invalid_request(
                f"This model's maximum context length is {max_len} tokens; the {param} holds {chars} characters, "
                "which is surely more. Please reduce the length of the prompt.",
                param=param,
                code="context_length_exceeded",
            )
