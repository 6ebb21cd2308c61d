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
from benchmarks.workloads import PROSE
from server.config.settings import Settings

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
    text = args.text_file.read_text() if args.text_file else PROSE
    scores = measure(flags.model_dir(args), Settings().cache_dir, args.variants, text)
    save(scores, meta(), args.out)
