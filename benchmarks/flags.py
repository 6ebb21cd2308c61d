"""The flags several benchmarks take, each declared once here and handed to them as an argparse parent.

A benchmark names the flags it takes and, where its default differs from the one here, its own
default. Every benchmark gets a parent of its own: argparse shares a parent's actions with its
children, so one parent's defaults changed for one benchmark would change them for all.
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Literal

from transformers import AutoTokenizer, PreTrainedTokenizerBase

from adapters.builtin_model import ensure_builtin_model
from adapters.config import DTYPES
from benchmarks.clients import HttpClient
from server.config.settings import Settings

# Results are data, kept outside the Python package (see bench-results/README.md).
DEFAULT_OUT = Path("bench-results")

Flag = Literal[
    "endpoint", "model-dir", "dtype", "max-num-seqs", "kv-cache-gib", "input-len", "output-len", "prompt-len",
    "batch", "prompts-per-stream", "min-prompts", "max-tokens", "warmup", "repeats", "max-duration", "slo-ttft",
    "slo-tpot", "seed", "out",
]  # fmt: skip


def _endpoint(parser: argparse.ArgumentParser, required: bool) -> None:
    parser.add_argument("--base-url", required=required, help="the server to measure, e.g. http://127.0.0.1:8000/v1")
    parser.add_argument("--model", required=required, help="model name the --base-url server serves")


_FLAGS: dict[Flag, Callable[[argparse.ArgumentParser], object]] = {
    "endpoint": lambda p: _endpoint(p, required=True),
    "model-dir": lambda p: p.add_argument("--model-dir", type=Path, help="model directory (default: built-in)"),
    "dtype": lambda p: p.add_argument("--dtype", default="auto", choices=DTYPES),
    "max-num-seqs": lambda p: p.add_argument(
        "--max-num-seqs", type=int, default=32, help="of the ise server(s) the benchmark starts"
    ),
    "kv-cache-gib": lambda p: p.add_argument(
        "--kv-cache-gib",
        type=float,
        help="of the ise server(s) the benchmark starts (default: %(default)s; None: ise's own)",
    ),
    "input-len": lambda p: p.add_argument("--input-len", type=int, default=128, help="prompt tokens"),
    "output-len": lambda p: p.add_argument("--output-len", type=int, default=128, help="output tokens per request"),
    "prompt-len": lambda p: p.add_argument("--prompt-len", type=int, default=128, help="tokens in each prompt"),
    "batch": lambda p: p.add_argument("--batch", type=int, nargs="+", default=[32], help="batch sizes"),
    "prompts-per-stream": lambda p: p.add_argument(
        "--prompts-per-stream", type=int, default=2, help="requests per load level = this x streams"
    ),
    "min-prompts": lambda p: p.add_argument("--min-prompts", type=int, default=8, help="requests per level, at least"),
    "max-tokens": lambda p: p.add_argument("--max-tokens", type=int, default=128, help="output tokens, at most"),
    "warmup": lambda p: p.add_argument("--warmup", type=int, default=4, help="warm-up requests, not measured"),
    "repeats": lambda p: p.add_argument(
        "--repeats", type=int, default=1, help="passes over what is compared, alternating"
    ),
    "max-duration": lambda p: p.add_argument(
        "--max-duration", type=float, default=600, help="no request starts after it, seconds"
    ),
    "slo-ttft": lambda p: p.add_argument("--slo-ttft", type=float, default=1.0, help="TTFT target of goodput, seconds"),
    "slo-tpot": lambda p: p.add_argument("--slo-tpot", type=float, default=0.1, help="TPOT bound of goodput, seconds"),
    "seed": lambda p: p.add_argument("--seed", type=int, default=0),
    "out": lambda p: p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="directory for the results"),
}


def parent(*flags: Flag, optional_endpoint: bool = False, **defaults: object) -> argparse.ArgumentParser:
    """A parent parser holding ``flags``, with ``defaults`` where the benchmark's differ from these.

    ``optional_endpoint``: ``--base-url`` and ``--model`` may be left out (the benchmark then
    starts its own server).
    """
    parser = argparse.ArgumentParser(add_help=False)
    for flag in flags:
        if flag == "endpoint" and optional_endpoint:
            _endpoint(parser, required=False)
        else:
            _FLAGS[flag](parser)
    parser.set_defaults(**defaults)
    return parser


def model_dir(args: argparse.Namespace) -> Path:
    """``--model-dir``, or the built-in model (downloaded to ise's cache on first use)."""
    found: Path = args.model_dir or ensure_builtin_model(Settings().cache_dir)
    return found


def tokenizer(args: argparse.Namespace) -> tuple[Path, PreTrainedTokenizerBase]:
    """The model directory and its tokenizer, for benchmarks that make prompts of a token count."""
    found = model_dir(args)
    return found, AutoTokenizer.from_pretrained(found)


@contextlib.asynccontextmanager
async def endpoint(args: argparse.Namespace) -> AsyncIterator[HttpClient]:
    """A client of ``--base-url`` for ``--model``, closed on the way out."""
    client = HttpClient(args.base_url, args.model)
    try:
        yield client
    finally:
        await client.aclose()
