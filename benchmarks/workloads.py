"""Benchmark requests: synthetic prompts of set lengths, a shared-system-prompt chat workload, and
chats whose answers copy their prompts (what speculative decoding from the prompt serves).

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
    temperature: float = 0.0  # greedy unless a sampled run is asked for (no seed: each draw differs)
    # More body fields, sent as they are (a response_format, say); HTTP clients only.
    extra_body: dict[str, Any] | None = None

    def body(self) -> dict[str, Any]:
        if self.api == "chat":
            return {"messages": self.messages}
        return {"prompt": self.prompt}


# Plain English prose written for ise's benchmarks (no data set is reachable offline): the text
# ``ise bench quality`` scores (a few hundred predictions across ordinary grammar, numbers and
# names) and the copy workload's paragraphs.
PROSE = """\
The river that runs through the old town is not wide, but it has shaped everything around it.
Mills were built along its banks in the twelfth century, and for six hundred years they ground
grain, sawed timber and later spun cotton. When the railway arrived in 1847, the mills lost their
advantage, and most of them closed within a generation. Today only two remain standing: one is a
museum, and the other has been turned into apartments with tall windows that look over the water.

Walking along the river on a spring morning, you pass the market square, where farmers sell
cheese, bread and early vegetables from wooden stalls. The church bell rings at eight, and the
cafe owners carry their chairs outside, even when the air is still cold. Children on their way to
school stop at the bridge to throw sticks into the current and race to the other side to see
whose stick comes out first.

In the library, a small exhibition explains how the town kept its records. Births, marriages and
deaths were written by hand in thick books, one for each parish, and the books were stored in a
dry room above the council chamber. A fire in 1903 destroyed almost a third of them. Historians
have since rebuilt part of the lost record from letters, newspapers and the notes of a doctor who
kept a careful diary of every patient he treated for forty years.

The town council now faces a familiar problem. Young people leave for the cities, where there are
more jobs and higher wages, while the houses in the centre grow more expensive because visitors
buy them as holiday homes. Some residents want to limit such purchases; others argue that the
visitors keep the shops and restaurants open through the winter. A public meeting is planned for
next month, and the council has promised to publish every written comment it receives.
"""


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


def copy_workload(*, count: int, output_len: int) -> list[RequestSpec]:
    """Chats asking for one of ``PROSE``'s paragraphs back word for word (about 100 tokens each):
    answers that repeat their prompt, as answers quoting a document or editing code do. The
    prompts are real text, so their length is the paragraph's, not ``--input-len``."""
    paragraphs = [p.replace("\n", " ") for p in PROSE.strip().split("\n\n")]
    return [
        RequestSpec(
            api="chat",
            messages=[{"role": "user", "content": f"Repeat this text exactly:\n\n{paragraphs[i % len(paragraphs)]}"}],
            max_tokens=output_len,
        )
        for i in range(count)
    ]
