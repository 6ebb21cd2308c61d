"""The model's tokenizer and chat template: prompts into token ids, and token ids into their text."""

from __future__ import annotations

import inspect
import re
import uuid
from collections.abc import Callable, Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

from tokenizers import AddedToken, Tokenizer
from transformers import AutoTokenizer, PreTrainedTokenizerBase
from transformers.convert_slow_tokenizer import bytes_to_unicode

from server.protocol.errors import invalid_request
from server.text.detokenization import TextStream


@lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte-level alphabet, reversed: printable stand-in character -> the byte it spells."""
    return {char: byte for byte, char in bytes_to_unicode().items()}


# apply_chat_template's own arguments: a client's chat_template_kwargs must not reach them
# (``tokenize`` would make it return token ids, ``chat_template`` swap the template).
_RESERVED_TEMPLATE_ARGS = frozenset(inspect.signature(PreTrainedTokenizerBase.apply_chat_template).parameters) | {
    "messages",
    "conversation",
}

_BYTE_TOKEN = re.compile(r"<0x([0-9A-Fa-f]{2})>")


class Tokenization:
    """The model's tokenizer and chat template, as the API needs them."""

    def __init__(
        self,
        model: str | Path,
        model_vocab_size: int | None = None,
        chat_template: str | None = None,
        eos_token_ids: frozenset[int] | None = None,
    ) -> None:
        """``model_vocab_size``: the model's embedding rows (``ModelInfo.vocab_size``), where known.

        ``chat_template``: a Jinja template, or a file holding one, used instead of the tokenizer's.
        ``eos_token_ids``: the tokens that end the model's turn (``ModelInfo.eos_token_ids``: the
        generation config's can be several); the tokenizer's own EOS where not given.
        """
        self.hf = AutoTokenizer.from_pretrained(model)
        self.model_vocab_size = model_vocab_size
        if eos_token_ids is None:
            eos_token_ids = frozenset() if self.hf.eos_token_id is None else frozenset({int(self.hf.eos_token_id)})
        self.eos_token_ids = eos_token_ids
        if chat_template is not None:
            template = Path(chat_template)
            self.hf.chat_template = template.read_text() if template.is_file() else chat_template
        self.backend: Tokenizer = self.hf.backend_tokenizer
        specials = [(i, t) for i, t in self.hf.added_tokens_decoder.items() if t.special and t.content]
        self._specials: dict[str, AddedToken] = {t.content: t for _, t in specials}
        self._special_ids: dict[str, int] = {t.content: i for i, t in specials}
        # Longest first, so a special token that contains another is matched whole.
        names = sorted(self._specials, key=len, reverse=True)
        self._special_re = re.compile("(" + "|".join(map(re.escape, names)) + ")") if names else None
        # Token ids the model can take: its embedding rows and the tokenizer's vocabulary both.
        self._vocab_size = min(len(self.hf), model_vocab_size) if model_vocab_size else len(self.hf)
        # No token spells more characters than its vocabulary entry has (byte-level entries spell
        # a character per byte or fewer), so text longer than this times a token count surely
        # holds more tokens than that: prompts can be refused before they are tokenized.
        self.max_token_chars = max(map(len, self.hf.get_vocab()), default=1)

    @property
    def chat_template(self) -> str | None:
        """The template in use (the tokenizer's, or --chat-template's), for detecting its tool format."""
        template = self.hf.chat_template
        return template if isinstance(template, str) else None

    def chat_prompt(
        self,
        messages: Sequence[Mapping[str, Any]],
        tools: list[dict[str, Any]] | None = None,
        template_kwargs: Mapping[str, Any] | None = None,
        check_length: Callable[[int], None] = lambda _: None,
    ) -> list[int]:
        """The prompt's token ids: the template's markers as control tokens, message text as text.

        ``tools`` go to templates that render them; ``template_kwargs`` (vLLM's
        chat_template_kwargs, e.g. ``enable_thinking``) become template variables.
        ``check_length`` gets the rendered prompt's length in characters before it is tokenized,
        and raises to refuse it: tools, tool-call arguments and template variables reach the
        prompt there, in any amount a client sends.

        Special-token text inside a message (a user typing ``<|im_end|>``) must not become the
        control token, or a user could forge turns of the conversation. Such text is swapped for
        placeholders before the template runs; the template's own output is then split at its
        special tokens, and each piece between them (where the placeholders go back to the
        text they held) is tokenized with special tokens read as plain text. Tokenizers tokenize
        the text between special tokens independently anyway, so the result equals ordinary
        tokenization everywhere but the forged tokens.
        """
        pattern = self._special_re
        if pattern is None or not any(pattern.search(str(m.get("content") or "")) for m in messages):
            # The template already wrote the special tokens it wants.
            text = self._render(messages, tools, template_kwargs)
            check_length(len(text))
            return self.encode(text, add_special_tokens=False)
        nonce = uuid.uuid4().hex
        held: list[str] = []

        def hold(match: re.Match[str]) -> str:
            held.append(match.group())
            return f"\ue000{nonce}:{len(held) - 1}\ue001"

        masked = [{**m, "content": pattern.sub(hold, str(m.get("content") or ""))} for m in messages]
        placeholder = re.compile(f"\ue000{nonce}:(\\d+)\ue001")
        text = self._render(masked, tools, template_kwargs)
        check_length(len(text))  # an upper bound: each placeholder is longer than the text it holds
        pieces = pattern.split(text)  # odd indices: the template's special tokens
        ids: list[int] = []
        for i, piece in enumerate(pieces):
            if i % 2:
                ids.append(self._special_ids[piece])
                continue
            # Honour the neighbouring special tokens' whitespace stripping, as tokenizers would.
            if i > 0 and self._specials[pieces[i - 1]].rstrip:
                piece = piece.lstrip()
            if i + 1 < len(pieces) and self._specials[pieces[i + 1]].lstrip:
                piece = piece.rstrip()
            text = placeholder.sub(lambda m: held[int(m.group(1))], piece)
            if text:
                ids += self.hf.encode(text, add_special_tokens=False, split_special_tokens=True)
        return ids

    def _render(
        self,
        messages: Sequence[Mapping[str, Any]],
        tools: list[dict[str, Any]] | None,
        template_kwargs: Mapping[str, Any] | None,
    ) -> str:
        variables = dict(template_kwargs or {})
        reserved = sorted(set(variables) & _RESERVED_TEMPLATE_ARGS)
        if reserved:
            raise invalid_request(
                f"chat_template_kwargs may not set {', '.join(reserved)}: the server sets it.",
                param="chat_template_kwargs",
            )
        try:
            text = self.hf.apply_chat_template(
                [dict(m) for m in messages],
                tools=[*tools] if tools else None,
                add_generation_prompt=True,
                tokenize=False,
                **variables,
            )
        except Exception as exc:  # a template may raise on any message layout it does not accept
            raise invalid_request(f"The chat template rejected these messages: {exc}", param="messages") from exc
        return str(text)

    def encode(self, text: str, *, add_special_tokens: bool = True) -> list[int]:
        return list(self.hf.encode(text, add_special_tokens=add_special_tokens))

    def decode(self, token_ids: Sequence[int]) -> str:
        return str(self.hf.decode(list(token_ids), skip_special_tokens=True))

    def vocab_size(self) -> int:
        """Token ids below this are valid in prompts and ``stop_token_ids``."""
        return self._vocab_size

    def text_stream(self, stop: Sequence[str], min_tokens: int = 0, include_stop: bool = False) -> TextStream:
        return TextStream(self.backend, stop, min_tokens, include_stop)

    def token_bytes(self, token_id: int) -> bytes:
        """The bytes one token stands for, as logprobs report them (OpenAI's ``bytes``).

        A token may hold part of a UTF-8 character, so this works on the vocabulary entry, not
        on decoded text: byte-level vocabularies (GPT-2's, Llama 3's, SmolLM2's) spell each byte
        as one printable character; SentencePiece ones spell bytes as ``<0xNN>`` and spaces as ``▁``.
        """
        piece = self.backend.id_to_token(token_id)
        if piece is None:
            return b""
        if piece in self._specials:
            return piece.encode()
        decoder = _byte_decoder()
        if all(ch in decoder for ch in piece):
            return bytes(decoder[ch] for ch in piece)
        byte = _BYTE_TOKEN.fullmatch(piece)
        if byte:
            return bytes([int(byte.group(1), 16)])
        return piece.replace("\u2581", " ").encode()

    def token_text(self, token_id: int) -> str:
        """The token's text for logprobs' ``token``; a partial UTF-8 character shows as U+FFFD."""
        return self.token_bytes(token_id).decode("utf-8", errors="replace")
