"""vLLM's ``/tokenize`` and ``/detokenize``: the routes chat UIs' token counters and ops tools call.

A UI counts a conversation's tokens before it sends it, to warn before the context window runs
out; the count is worth something only if it is the ``usage.prompt_tokens`` the completion will
report, so messages and text become tokens through ``server/text/prompts.py``, as in the completions.
"""

from __future__ import annotations

from server.endpoints.state import ServerState
from server.protocol.chat import ChatMessage
from server.protocol.errors import invalid_request
from server.protocol.tokenize import DetokenizeRequest, DetokenizeResponse, TokenizeRequest, TokenizeResponse
from server.text.chat_tools import plan_chat


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
