"""vLLM's ``/tokenize`` and ``/detokenize``: the routes chat UIs' token counters and ops tools call.

A UI counts a conversation's tokens before it sends it, to warn before the context window runs
out; the count is worth something only if it is the ``usage.prompt_tokens`` the completion will
report, so messages and text become tokens through ``server/prompts.py``, as in the completions.

The request shapes are vLLM's, folded into one model: ``prompt`` or ``messages``, never both.
(A union of two models would make pydantic name the model, not the field, in its errors.)
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from server.endpoints.state import ServerState
from server.protocol.errors import invalid_request
from server.protocol.models import MAX_MESSAGES, MAX_TOOLS, ChatMessage, Name, Tool, ToolChoice
from server.text.chat_tools import plan_chat


class _Request(BaseModel):
    # As the completions' requests: unknown fields ignored, no silent coercion of "true" or 1.0.
    model_config = ConfigDict(extra="ignore", strict=True)


class TokenizeRequest(_Request):
    """vLLM's two tokenize requests in one: a text ``prompt``, or chat ``messages``."""

    model: Name | None = Field(None, description="Checked when given: a name the model is served under.")
    prompt: str | None = Field(None, description="Text to tokenize as a text completion's prompt is.")
    messages: Annotated[list[ChatMessage], Field(min_length=1, max_length=MAX_MESSAGES)] | None = Field(
        None, description="A conversation to tokenize as a chat completion's prompt is."
    )
    add_generation_prompt: bool = Field(
        True,
        description="With messages: end with the assistant's turn opening, as chat completions do (only true).",
    )
    add_special_tokens: bool | None = Field(
        None,
        description="Add the tokenizer's special tokens (BOS, say). Default: true for a prompt; with messages "
        "the chat template writes them, so only false.",
    )
    chat_template_kwargs: dict[str, Any] | None = Field(
        None, description="With messages: variables for the chat template, as chat completions take them."
    )
    tools: Annotated[list[Tool], Field(max_length=MAX_TOOLS)] | None = Field(
        None, description="With messages: the tools, rendered into the prompt as chat completions render them."
    )
    tool_choice: ToolChoice | None = Field(None, description="With messages and tools: as chat completions take it.")
    parallel_tool_calls: bool = Field(True, description="With messages and tools: as chat completions take it.")
    return_token_strs: bool | None = Field(False, description="Also return each token's vocabulary string.")


class TokenizeResponse(BaseModel):
    count: int
    max_model_len: int
    tokens: list[int]
    token_strs: list[str] | None = None


class DetokenizeRequest(_Request):
    model: Name | None = Field(None, description="Checked when given: a name the model is served under.")
    tokens: list[int] = Field(description="Token ids of the vocabulary; at most the context window's length.")


class DetokenizeResponse(BaseModel):
    prompt: str = Field(description="The tokens' text, special tokens included, as vLLM decodes them.")


def tokenize(req: TokenizeRequest, state: ServerState) -> TokenizeResponse:
    if req.model is not None:
        state.check_model(req.model)
    if req.messages is not None:
        if req.prompt is not None:
            raise invalid_request("Give either 'prompt' or 'messages', not both.", param="prompt")
        tokens = _chat_tokens(req, req.messages, state)
    elif req.prompt is not None:
        add_special_tokens = True if req.add_special_tokens is None else req.add_special_tokens
        tokens = state.prompts.text(req.prompt, add_special_tokens=add_special_tokens)
    else:
        raise invalid_request("Missing required parameter: 'prompt' (or 'messages').", param="prompt")
    token_strs = None
    if req.return_token_strs:
        token_strs = [str(t) for t in state.tokenization.hf.convert_ids_to_tokens(tokens)]
    return TokenizeResponse(
        count=len(tokens), max_model_len=state.engine.max_model_len, tokens=tokens, token_strs=token_strs
    )


def _chat_tokens(req: TokenizeRequest, messages: list[ChatMessage], state: ServerState) -> list[int]:
    """The messages' tokens as a chat completion's prompt, or a 400 for a count none would be charged.

    Chat completions always open the assistant's turn and add no special tokens beyond the
    template's; tools and tool history are planned as they plan them.
    """
    if not req.add_generation_prompt:
        raise invalid_request("ise does not support 'add_generation_prompt': false.", param="add_generation_prompt")
    if req.add_special_tokens:
        raise invalid_request("ise does not support 'add_special_tokens' with messages.", param="add_special_tokens")
    plan = plan_chat(
        messages, req.tools, req.tool_choice, req.parallel_tool_calls, state.api, state.tokenization.chat_template
    )
    return state.prompts.chat(plan.messages, tools=plan.template_tools, template_kwargs=req.chat_template_kwargs)


def detokenize(req: DetokenizeRequest, state: ServerState) -> DetokenizeResponse:
    if req.model is not None:
        state.check_model(req.model)
    max_len = state.engine.max_model_len
    if len(req.tokens) > max_len:
        message = f"'tokens' holds {len(req.tokens)} ids; no sequence of this model is longer than {max_len}."
        raise invalid_request(message, param="tokens")
    vocab_size = state.tokenization.vocab_size()
    bad_ids = [t for t in req.tokens if not 0 <= t < vocab_size][:8]
    if bad_ids:
        raise invalid_request(
            f"'tokens' holds ids outside the vocabulary (0 to {vocab_size - 1}): {bad_ids}", param="tokens"
        )
    # Special tokens stay in, as vLLM shows them: ops tools detokenize to see what the model saw.
    return DetokenizeResponse(prompt=str(state.tokenization.hf.decode(req.tokens, skip_special_tokens=False)))
