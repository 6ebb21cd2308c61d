"""Log-probabilities in the API's shapes, shared by the chat, text completion and Responses formats."""

from __future__ import annotations

from adapters.engine import TokenLogprobs
from server.protocol.chat import TokenLogprob, TopLogprob
from server.protocol.common import PromptLogprob, PromptLogprobs
from server.text.tokenization import Tokenization

# Logprobs of -inf (a token a bias or penalty ruled out) are not JSON; vLLM reports them as this.
LOGPROB_FLOOR = -9999.0


def clamp_logprob(value: float) -> float:
    return max(value, LOGPROB_FLOOR)


def prompt_logprobs_out(
    tokenization: Tokenization, entries: list[TokenLogprobs | None] | None
) -> PromptLogprobs | None:
    """vLLM's ``prompt_logprobs``: each prompt token and its alternatives, by token id, with ranks."""
    if entries is None:
        return None
    out: PromptLogprobs = []
    for entry in entries:
        if entry is None:
            out.append(None)
            continue
        ranked: dict[int, tuple[float, int | None]] = {
            token_id: (logprob, rank) for rank, (token_id, logprob) in enumerate(entry.top, start=1)
        }
        ranked.setdefault(entry.token_id, (entry.logprob, None))
        out.append(
            {
                str(token_id): PromptLogprob(
                    logprob=clamp_logprob(logprob), rank=rank, decoded_token=tokenization.token_text(token_id)
                )
                for token_id, (logprob, rank) in ranked.items()
            }
        )
    return out


def token_logprob(tok: Tokenization, entry: TokenLogprobs) -> TokenLogprob:
    """One sampled token's logprob and its alternatives, in OpenAI's shape (chat's and the Responses API's)."""
    return TokenLogprob(
        token=tok.token_text(entry.token_id),
        logprob=clamp_logprob(entry.logprob),
        bytes=list(tok.token_bytes(entry.token_id)),
        top_logprobs=[
            TopLogprob(token=tok.token_text(t), logprob=clamp_logprob(lp), bytes=list(tok.token_bytes(t)))
            for t, lp in entry.top
        ],
    )
