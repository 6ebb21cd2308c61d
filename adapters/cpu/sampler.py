"""Turns a batch of next-token logits into one token per request, each with its own settings.

Greedy rows take the argmax; sampled rows apply penalties, temperature, top-k and top-p and draw
from the request's own seeded generator, so a seeded request gives the same tokens whatever else
shares its batch. A row whose settings make sampling fail (probabilities that are not finite, say)
fails its own request only: the engine and the rest of the batch go on.
"""

from __future__ import annotations

from collections.abc import Sequence as Seq

import torch

from adapters.cpu.sequence import Sequence
from adapters.engine import RequestFailedError


class Sampler:
    def __init__(self, eos_token_ids: frozenset[int]) -> None:
        self.eos_token_ids = eos_token_ids

    def sample(self, logits: torch.Tensor, seqs: Seq[Sequence]) -> list[int | RequestFailedError]:
        """One next token per row of ``logits`` [len(seqs), vocab], or the error that ended that row's request."""
        logits = logits.float()
        if all(self._is_plain_greedy(seq) for seq in seqs):
            return [int(t) for t in torch.argmax(logits, dim=-1)]
        tokens: list[int | RequestFailedError] = []
        for row, seq in zip(logits, seqs, strict=True):
            try:
                tokens.append(self._sample_row(row, seq))
            except Exception as exc:  # one request's settings must never stop the engine
                tokens.append(RequestFailedError(f"Sampling failed for this request: {exc}"))
        return tokens

    @staticmethod
    def _is_plain_greedy(seq: Sequence) -> bool:
        params = seq.request.params
        return (
            params.greedy
            and params.repetition_penalty == 1.0
            and not (params.presence_penalty or params.frequency_penalty)
            and seq.num_output_tokens >= params.min_tokens
        )

    def _sample_row(self, row: torch.Tensor, seq: Sequence) -> int:
        params = seq.request.params
        row = self._apply_penalties(row, seq)
        if seq.num_output_tokens < params.min_tokens:
            banned = list(set(params.stop_token_ids) | (set() if params.ignore_eos else self.eos_token_ids))
            if banned:
                row = row.clone()
                row[banned] = float("-inf")
        if params.greedy:
            return int(torch.argmax(row))
        row = row / params.temperature
        if params.top_k > 0 and params.top_k < row.shape[0]:
            kth = torch.topk(row, params.top_k).values[-1]
            row = row.masked_fill(row < kth, float("-inf"))
        probs = torch.softmax(row, dim=-1)
        if params.top_p < 1.0:
            sorted_probs, order = torch.sort(probs, descending=True)
            cumulative = torch.cumsum(sorted_probs, dim=-1)
            # Keep the smallest prefix whose mass reaches top_p. The top token always stays, also
            # when top_p is below float32's smallest value (5e-324 is 0 there, which drops all).
            drop = (cumulative - sorted_probs) >= params.top_p
            drop[0] = False
            sorted_probs = sorted_probs.masked_fill(drop, 0.0)
            probs = torch.zeros_like(probs).scatter_(0, order, sorted_probs)
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
