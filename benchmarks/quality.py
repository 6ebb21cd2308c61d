"""What a lower precision costs in output quality: the same text scored in float32 and in each variant.

A variant is a dtype (bfloat16) or a quantization (int8 weights). Every runner reads the same text,
every position at once (teacher forcing), so each prediction is compared on the same context: the
perplexity of each, and how often the variant's most likely next token is float32's. Greedy
decoding follows that top-1 token, so the agreement is the share of steps at which the variant's
greedy run would still be on float32's path. Ties are the share of positions whose two best logits
are exactly equal: where that comes from rounding, the argmax falls to the lower token id and a
greedy answer changes for no reason in the model (issue 20).
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from transformers import AutoTokenizer

from adapters.config import Quantization
from adapters.cpu.model_runner import ModelRunner
from adapters.cpu.numerics import default_threads
from benchmarks import flags
from benchmarks.save import meta, save_result
from server.config.settings import Settings

# Plain English prose written for this check (no data set is reachable offline), long enough for
# a few hundred predictions across ordinary grammar, numbers and names.
REFERENCE_TEXT = """\
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


# Each variant's dtype and quantization; float32 unquantized is the reference every variant is scored against.
REFERENCE = "float32"
VARIANTS: dict[str, tuple[torch.dtype, Quantization]] = {
    REFERENCE: (torch.float32, "none"),
    "bfloat16": (torch.bfloat16, "none"),
    "int8": (torch.float32, "int8"),
}


@dataclass(frozen=True)
class VariantScores:
    variant: str
    tokens: int  # positions scored
    perplexity: float
    perplexity_ratio: float  # over float32's
    top1_agreement: float  # share of positions whose most likely next token is float32's
    top2_ties: float  # share of positions whose two best logits are exactly equal


def _perplexity(logits: torch.Tensor, token_ids: list[int]) -> float:
    targets = torch.tensor(token_ids[1:])
    nll = torch.nn.functional.cross_entropy(logits[:-1].float(), targets)
    return math.exp(float(nll))


def _top2_ties(logits: torch.Tensor) -> float:
    best = logits.topk(2, dim=-1).values
    return float((best[:, 0] == best[:, 1]).float().mean())


def _logits(model_dir: Path, kernel_dir: Path, variant: str, token_ids: list[int]) -> torch.Tensor:
    dtype, quantization = VARIANTS[variant]
    runner = ModelRunner(
        model_dir, dtype=dtype, kv_cache_bytes=2**28, block_size=16, kernel_dir=kernel_dir, quantization=quantization
    )
    return runner.prompt_logits(token_ids).float()


def measure(model_dir: Path, kernel_dir: Path, variants: list[str], text: str) -> list[VariantScores]:
    """Scores of float32 (first) and of each of ``variants`` on ``text``, scored as the engine runs them."""
    torch.set_num_threads(default_threads())
    token_ids = AutoTokenizer.from_pretrained(model_dir)(text)["input_ids"]
    reference = _logits(model_dir, kernel_dir, REFERENCE, token_ids)
    reference_perplexity = _perplexity(reference, token_ids)
    scores = []
    for variant in [REFERENCE, *(v for v in variants if v != REFERENCE)]:
        logits = reference if variant == REFERENCE else _logits(model_dir, kernel_dir, variant, token_ids)
        perplexity = _perplexity(logits, token_ids)
        scores.append(
            VariantScores(
                variant=variant,
                tokens=len(token_ids),
                perplexity=perplexity,
                perplexity_ratio=perplexity / reference_perplexity,
                top1_agreement=float((logits.argmax(dim=-1) == reference.argmax(dim=-1)).float().mean()),
                top2_ties=_top2_ties(logits),
            )
        )
    return scores


def save(scores: list[VariantScores], meta: Mapping[str, object], out: Path) -> str:
    """Write quality.json and quality.md; return the table."""
    payload = {**meta, "variants": [asdict(score) for score in scores]}
    rows = [
        "| variant | tokens scored | perplexity | ratio to float32 | top-1 agreement with float32 | exact top-2 ties |",
        "|---|---|---|---|---|---|",
    ]
    rows += [
        f"| {s.variant} | {s.tokens} | {s.perplexity:.3f} | {s.perplexity_ratio:.4f} "
        f"| {s.top1_agreement:.1%} | {s.top2_ties:.1%} |"
        for s in scores
    ]
    table = "\n".join(rows)
    save_result(out, "quality", payload, table)
    return table


HELP = "perplexity, top-1 agreement and ties of bfloat16 and int8 with float32"
PARENT = flags.parent("model-dir", "out")


def add_cli_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--variants",
        nargs="+",
        default=list(VARIANTS)[1:],
        choices=list(VARIANTS)[1:],
        help="dtypes and quantizations to score against float32",
    )
    parser.add_argument("--text-file", type=Path, help="text to score (default: a built-in English passage)")


def main(args: argparse.Namespace) -> None:
    text = args.text_file.read_text() if args.text_file else REFERENCE_TEXT
    scores = measure(flags.model_dir(args), Settings().cache_dir, args.variants, text)
    save(scores, meta(), args.out)
