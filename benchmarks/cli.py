"""``ise bench``: load-test any OpenAI-compatible endpoint, or compare ise with its peers in one run.

Each benchmark is one module that declares its own flags (``add_cli_args``) and runs
(``main``); the flags several share come from ``benchmarks.flags``. Results go to
``bench-results/`` unless ``--out`` says otherwise; figures from past runs are in
``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
from typing import Protocol

from benchmarks import (
    admission,
    compare,
    embeddings,
    interference,
    limits,
    quality,
    run,
    static_batch,
    step,
    structured,
    vllm_profile,
)
from benchmarks.soak import command as soak


class Benchmark(Protocol):
    """What a benchmark module offers the dispatcher."""

    HELP: str
    PARENT: argparse.ArgumentParser

    def add_cli_args(self, parser: argparse.ArgumentParser) -> None: ...

    def main(self, args: argparse.Namespace) -> None: ...


BENCHMARKS: dict[str, Benchmark] = {
    "run": run,
    "interference": interference,
    "static": static_batch,
    "step": step,
    "limits": limits,
    "quality": quality,
    "soak": soak,
    "admission": admission,
    "structured": structured,
    "compare": compare,
    "embeddings": embeddings,
    "vllm-profile": vllm_profile,
}


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="ise bench", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, bench in BENCHMARKS.items():
        bench.add_cli_args(
            sub.add_parser(
                name,
                help=bench.HELP,
                description=bench.__doc__,
                parents=[bench.PARENT],
                formatter_class=argparse.RawDescriptionHelpFormatter,
            )
        )
    return parser.parse_args(argv)


def main(argv: list[str]) -> None:
    args = parse(argv)
    BENCHMARKS[args.command].main(args)
