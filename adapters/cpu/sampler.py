"""Turns a batch of next-token logits into one token per request, each with its own settings.

Each row is processed in vLLM's sampler's order. First what can change even the greedy token: the
min_tokens ban on stop tokens, ``logit_bias`` (added), then the repetition, frequency and presence
penalties. Then temperature (rows at a temperature of at least ``SAMPLING_EPS``; below it a row is
greedy and keeps its logits). Then the request's grammar, if it has one, sets every token it
forbids to -inf. A greedy row takes the argmax; a sampled row drops the tokens below ``min_p``
times the top token's probability, keeps the ``top_k`` most likely and the smallest set reaching
``top_p`` of the mass, and draws from the request's own seeded generator, so a seeded request
gives the same tokens whatever else shares its batch.

Log-probabilities, where asked, are ``log_softmax`` of the row after the penalties, ``logit_bias``
and temperature: the distribution the request samples from before its truncation (min_p, top-k,
top-p) and before its grammar's mask. Every token keeps a finite logprob, so a user sees how
likely the model found a token the grammar or the truncation ruled out. Prompt logprobs are
``log_softmax`` of the model's logits as they are, like vLLM's (no request setting applies to a
prompt token).

A row whose settings make sampling fail (probabilities that are not finite, a grammar allowing no
token) fails its own request only: the engine and the rest of the batch go on.

A request with drafts (speculative decoding, ``adapters.cpu.spec_decode``) has a row for its last
token and one after each draft. The rows are taken in order, each draw checked against the draft
it follows: a greedy row keeps the draft if it is the argmax; a sampled row keeps it with its
probability, and otherwise draws from the rest of the distribution (rejection sampling against a
draft that is one token for sure, as vLLM does for ngram drafts), so every token a request gets
has the distribution it would have had without drafts. The first token that is not its draft is
the request's last new token of the step; after the last draft it is a token the step adds.
"""

from __future__ import annotations

from collections.abc import Sequence as Seq
from typing import TYPE_CHECKING

import torch

from adapters.cpu.outputs import SampledToken
from adapters.cpu.sequence import Sequence
from adapters.engine import SAMPLING_EPS, ConstraintDeadEndError, RequestFailedError, TokenLogprobs

if TYPE_CHECKING:
    from adapters.cpu.scheduler import ScheduledRequest


def token_logprobs(logprobs: torch.Tensor, token_id: int, num_top: int) -> TokenLogprobs:
    """``token_id``'s entry of a row of logprobs, with the row's ``num_top`` best tokens, best first."""
    top: tuple[tuple[int, float], ...] = ()
    if num_top > 0:
        values, ids = torch.topk(logprobs, min(num_top, logprobs.shape[-1]))
        top = tuple(zip(ids.tolist(), values.tolist(), strict=True))
    return TokenLogprobs(token_id, float(logprobs[token_id]), top)


def prompt_logprobs(logits: torch.Tensor, next_token_ids: list[int], num_top: int) -> list[TokenLogprobs]:
    """Each row's logprob of the prompt token that follows it, with its ``num_top`` best tokens."""
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    return [token_logprobs(row, token, num_top) for row, token in zip(logprobs, next_token_ids, strict=True)]


class Sampler:
    def __init__(self, eos_token_ids: frozenset[int]) -> None:
        self.eos_token_ids = eos_token_ids

    def sample(
        self, logits: torch.Tensor, requests: Seq[ScheduledRequest]
    ) -> list[list[SampledToken] | RequestFailedError]:
        """Each request's new tokens, or the error that ended it.

        ``logits`` [rows, vocab]: each request's rows in order, 1 + its number of drafts. A
        request gets the drafts the sampler kept, then one more token (see the module's docstring).
        """
        logits = logits.float()
        spans = _row_spans(requests)
        if all(self._is_plain_greedy(r.seq) for r in requests):
            best: list[int] = torch.argmax(logits, dim=-1).tolist()
            return [
                [SampledToken(t) for t in _kept_greedy(best[span], r.draft_token_ids)]
                for r, span in zip(requests, spans, strict=True)
            ]
        sampled: list[list[SampledToken] | RequestFailedError] = []
        for r, span in zip(requests, spans, strict=True):
            try:
                sampled.append(self._verify(logits[span], r.seq, r.draft_token_ids))
            except ConstraintDeadEndError as exc:
                sampled.append(exc)
            except Exception as exc:  # one request's settings must never stop the engine
                sampled.append(RequestFailedError(f"Sampling failed for this request: {exc}"))
        return sampled

    def _verify(self, rows: torch.Tensor, seq: Sequence, drafts: tuple[int, ...]) -> list[SampledToken]:
        """The request's rows in order: each draft it keeps, then the first token that is not a draft."""
        tokens: list[SampledToken] = []
        for index, row in enumerate(rows):
            draft = drafts[index] if index < len(drafts) else None
            tokens.append(self._sample_with_logprobs(row, seq, draft, index))
            if tokens[-1].token_id != draft:
                break
        return tokens

    @staticmethod
    def _is_plain_greedy(seq: Sequence) -> bool:
        """The row's token is the argmax of the model's logits, and nothing else is asked of it."""
        params = seq.request.params
        return (
            params.greedy
            and not params.penalized
            and not params.logit_bias
            and params.logprobs is None
            and seq.grammar is None
            and seq.num_output_tokens >= params.min_tokens
        )

    def _sample_with_logprobs(self, row: torch.Tensor, seq: Sequence, draft: int | None, offset: int) -> SampledToken:
        """The token of a row ``offset`` tokens after the sequence's last one (after that many drafts)."""
        num_logprobs = seq.request.params.logprobs
        row = self._process(row, seq, offset)
        if num_logprobs is None:
            return SampledToken(self._sample_row(row, seq, draft))
        logprobs = torch.log_softmax(row, dim=-1)  # before _sample_row masks the row in place
        token = self._sample_row(row, seq, draft)
        return SampledToken(token, token_logprobs(logprobs, token, num_logprobs))

    def _process(self, row: torch.Tensor, seq: Sequence, offset: int) -> torch.Tensor:
        """The row the request samples from, before its grammar and truncation; a copy where changed."""
        params = seq.request.params
        banned = self._min_tokens_ban(seq, seq.num_output_tokens + offset)
        if banned or params.logit_bias:
            row = row.clone()
            if banned:
                row[banned] = float("-inf")
            if params.logit_bias:
                ids, biases = zip(*params.logit_bias, strict=True)
                row[list(ids)] += torch.tensor(biases, dtype=row.dtype)
        row = self._apply_penalties(row, seq)
        if params.temperature >= SAMPLING_EPS:
            row = row / params.temperature
        return row

    def _min_tokens_ban(self, seq: Sequence, num_output_tokens: int) -> list[int]:
        """The stop tokens the request may not sample as its output token number ``num_output_tokens``
        (counted from 0), below its min_tokens.

        A constrained output may end where its grammar is complete even below min_tokens: the
        grammar then often allows nothing but an end-of-sequence token, and banning it would leave
        no token at all.
        """
        params = seq.request.params
        if num_output_tokens >= params.min_tokens:
            return []
        eos = (
            set() if params.ignore_eos or (seq.grammar is not None and seq.grammar.is_completed) else self.eos_token_ids
        )
        return sorted(set(params.stop_token_ids) | eos)

    def _sample_row(self, row: torch.Tensor, seq: Sequence, draft: int | None) -> int:
        """Draw from a processed row: its grammar's mask, then greedy, or min_p, top-k, top-p and a draw.

        A sampled row that follows a draft keeps the draft with its probability, else draws from
        the others.
        """
        params = seq.request.params
        if seq.grammar is not None:
            seq.grammar.apply_bitmask(row)
            if float(row.max()) == float("-inf"):  # else softmax gives NaN and the draw fails obscurely
                raise ConstraintDeadEndError(seq.num_output_tokens)
        if params.greedy:
            token = int(torch.argmax(row))
            if row[token] == float("-inf"):
                raise ValueError("no token is allowed here (the stop tokens min_tokens bans exclude all)")
            return token
        if params.min_p > 0.0:
            probs = torch.softmax(row, dim=-1)
            row = row.masked_fill(probs < params.min_p * probs.max(), float("-inf"))
        if params.top_k > 0 and params.top_k < row.shape[0]:
            kth = torch.topk(row, params.top_k).values[-1]
            row = row.masked_fill(row < kth, float("-inf"))
        probs = torch.softmax(row, dim=-1)
        if params.top_p < 1.0:
            probs = _nucleus(probs, params.top_p)
        if draft is not None:
            keep = float(probs[draft])
            if float(torch.rand((), generator=seq.generator)) < keep:
                return draft
            probs[draft] = 0.0
            if keep > 0.0 and not float(probs.sum()) > 0.0:  # the draft had all the mass, short of 1 by rounding
                return draft
        return int(torch.multinomial(probs, 1, generator=seq.generator))

    @staticmethod
    def _apply_penalties(row: torch.Tensor, seq: Sequence) -> torch.Tensor:
        params = seq.request.params
        if params.repetition_penalty != 1.0:
            seen = torch.tensor(sorted(set(seq.all_token_ids)), dtype=torch.long)
            values = row[seen]
            row = row.clone()
            row[seen] = torch.where(values > 0, values / params.repetition_penalty, values * params.repetition_penalty)
        if (params.presence_penalty or params.frequency_penalty) and seq.output_counts:
            ids = torch.tensor(list(seq.output_counts.keys()), dtype=torch.long)
            counts = torch.tensor(list(seq.output_counts.values()), dtype=row.dtype)
            row = row.clone()
            row[ids] -= params.frequency_penalty * counts + params.presence_penalty
        return row


def _nucleus(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """``probs`` with every token outside the smallest most likely set whose mass reaches ``top_p`` at 0.

    The set is looked for among the k most likely tokens, k growing from 256: it lies within them
    as soon as their mass reaches top_p, which it almost always does at once. Written so because
    sorting a row of a 49,152-token vocabulary (torch.sort) took 31 ms on this project's CPUs, and
    torch.topk of 256 0.13 ms: at 32 sampled requests with SmolLM2's default top_p of 0.9, a
    decode step spent most of its time sorting. The top token always stays, also when top_p is
    below float32's smallest value (5e-324 is 0 there, which would drop all).
    """
    size = probs.shape[0]
    k = min(256, size)
    while True:
        values, order = torch.topk(probs, k)  # most likely first
        cumulative = torch.cumsum(values, dim=-1)
        if float(cumulative[-1]) >= top_p or k == size:
            break
        k = min(k * 8, size)
    drop = (cumulative - values) >= top_p
    drop[0] = False
    return torch.zeros_like(probs).scatter_(0, order, values.masked_fill(drop, 0.0))


def _row_spans(requests: Seq[ScheduledRequest]) -> list[slice]:
    """Each request's rows of the step's logits: its last token's, then one per draft."""
    spans: list[slice] = []
    start = 0
    for r in requests:
        spans.append(slice(start, start + 1 + len(r.draft_token_ids)))
        start = spans[-1].stop
    return spans


def _kept_greedy(best: list[int], drafts: tuple[int, ...]) -> list[int]:
    """The argmax tokens a greedy request gets: up to and including the first that is not its draft."""
    for index, draft in enumerate(drafts):
        if best[index] != draft:
            return best[: index + 1]
    return best
