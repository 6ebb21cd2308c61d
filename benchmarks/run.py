"""``ise bench run``: load-test one OpenAI-compatible endpoint at each load level.

Closed-loop levels (``--concurrency``: N requests in flight) or open-loop Poisson arrivals
(``--rate``); writes each request's timings as JSON, a Markdown table and plots.
"""

from __future__ import annotations

import argparse
import asyncio

from benchmarks import flags, report
from benchmarks.save import meta, save_result
from benchmarks.sweep import FLAGS, Sweep, add_workload_args

HELP = "benchmark one OpenAI-compatible endpoint"
PARENT = flags.parent("endpoint", *FLAGS)


def add_cli_args(parser: argparse.ArgumentParser) -> None:
    add_workload_args(parser)


def main(args: argparse.Namespace) -> None:
    asyncio.run(_main(args))


async def _main(args: argparse.Namespace) -> None:
    _, tokenizer = flags.tokenizer(args)
    async with flags.endpoint(args) as client:
        runs = await Sweep(args, tokenizer).measure(args.base_url, args.base_url, client)
    table = report.markdown_table(runs)
    payload = report.payload({**meta(args=vars(args)), "notes": []}, runs)
    save_result(args.out, "table", payload, table, report.figures(runs) if runs else None, json_name="results.json")
