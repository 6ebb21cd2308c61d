"""What quantization costs in output quality: the same text scored at full precision and quantized.

Both runners read the same text, every position at once (teacher forcing), so each prediction is
compared on the same context: the perplexity of each, and how often the quantized model's most
likely next token is full precision's. Greedy decoding follows that top-1 token, so the agreement
is the share of steps at which a quantized greedy run would still be on full precision's path.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from transformers import AutoTokenizer

from adapters.config import Quantization
from adapters.cpu.model_runner import ModelRunner
from adapters.cpu.numerics import default_threads

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


@dataclass(frozen=True)
class QualityResult:
    quantization: str
    tokens: int
    perplexity_full: float
    perplexity_quantized: float
    top1_agreement: float  # share of positions whose most likely next token is the same

    @property
    def perplexity_ratio(self) -> float:
        return self.perplexity_quantized / self.perplexity_full


def _perplexity(logits: torch.Tensor, token_ids: list[int]) -> float:
    targets = torch.tensor(token_ids[1:])
    nll = torch.nn.functional.cross_entropy(logits[:-1].float(), targets)
    return math.exp(float(nll))


def measure(model_dir: Path, kernel_dir: Path, quantization: Quantization, text: str) -> QualityResult:
    torch.set_num_threads(default_threads())
    token_ids = AutoTokenizer.from_pretrained(model_dir)(text)["input_ids"]
    logits = {}
    for mode in ("none", quantization):
        runner = ModelRunner(
            model_dir,
            dtype=torch.float32,
            kv_cache_bytes=2**28,
            block_size=16,
            kernel_dir=kernel_dir,
            quantization=mode,
        )
        logits[mode] = runner.prompt_logits(token_ids)
        del runner
    full, quantized = logits["none"], logits[quantization]
    agreement = float((full.argmax(dim=-1) == quantized.argmax(dim=-1)).float().mean())
    return QualityResult(
        quantization=quantization,
        tokens=len(token_ids),
        perplexity_full=_perplexity(full, token_ids),
        perplexity_quantized=_perplexity(quantized, token_ids),
        top1_agreement=agreement,
    )


def save(result: QualityResult, meta: Mapping[str, object], out: Path) -> str:
    """Write quality.json and quality.md; return the table."""
    out.mkdir(parents=True, exist_ok=True)
    payload = {**meta, **asdict(result), "perplexity_ratio": result.perplexity_ratio}
    (out / "quality.json").write_text(json.dumps(payload, indent=1))
    table = "\n".join(
        [
            "| quantization | tokens scored | perplexity float32 | perplexity quantized | ratio | top-1 agreement |",
            "|---|---|---|---|---|---|",
            f"| {result.quantization} | {result.tokens} | {result.perplexity_full:.3f} "
            f"| {result.perplexity_quantized:.3f} | {result.perplexity_ratio:.4f} | {result.top1_agreement:.1%} |",
        ]
    )
    (out / "quality.md").write_text(table + "\n")
    return table
