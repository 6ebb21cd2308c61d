"""What a load run (``ise bench run`` and ``compare``) reports: its runs as JSON, a Markdown table, and plots."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from matplotlib.figure import Figure

from benchmarks.metrics import RequestRecord, Summary
from benchmarks.save import COLORS, subplots


@dataclass
class Run:
    target: str
    label: str
    concurrency: int | None
    rate: float | None
    summary: Summary
    records: list[RequestRecord]
    repeat: int = 0  # which pass over the targets measured it, when a comparison repeats


def median_runs(runs: list[Run]) -> list[Run]:
    """One run per target and load level: the one of median output throughput among its repeats.

    Repeats alternate between targets, so a slow spell of a shared machine hits them alike; the
    median then drops the spell instead of crediting it to one target.
    """
    groups: dict[tuple[str, str], list[Run]] = {}
    for r in runs:
        groups.setdefault((r.target, _load_level(r)), []).append(r)
    chosen = []
    for group in groups.values():
        ordered = sorted(group, key=lambda r: r.summary.output_throughput)
        chosen.append(ordered[(len(ordered) - 1) // 2])
    return chosen


def payload(meta: dict[str, Any], runs: list[Run]) -> dict[str, Any]:
    """``meta`` and every run: its summary and each request's raw timings."""
    return {
        **meta,
        "runs": [
            {
                "target": r.target,
                "label": r.label,
                "concurrency": r.concurrency,
                "rate": r.rate,
                "repeat": r.repeat,
                "summary": r.summary.to_dict(),
                "records": [asdict(rec) for rec in r.records],
            }
            for r in runs
        ],
    }


def _load_level(run: Run) -> str:
    return f"rate {run.rate:g}/s" if run.rate is not None else f"{run.concurrency}"


def markdown_table(all_runs: list[Run]) -> str:
    """One row per target and load level, with output throughput as a ratio to the first target.

    Where the targets were measured several times, each row is the median run and a last column
    lists every repeat's throughput.
    """
    runs = median_runs(all_runs)
    repeats: dict[tuple[str, str], list[float]] = {}
    for r in all_runs:
        repeats.setdefault((r.target, _load_level(r)), []).append(r.summary.output_throughput)
    repeated = any(len(v) > 1 for v in repeats.values())
    baseline: dict[str, float] = {}
    first_target = runs[0].target if runs else ""
    for r in runs:
        if r.target == first_target:
            baseline[_load_level(r)] = r.summary.output_throughput
    header = (
        "| load | target | ok/failed | output tok/s | vs first | req/s | goodput req/s | TTFT p50 / p99 ms "
        "| TPOT p50 ms | ITL p50 / p99 ms | E2EL p50 s |" + (" each repeat tok/s |" if repeated else "")
    )
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for r in sorted(runs, key=lambda r: (r.rate or 0, r.concurrency or 0)):
        s = r.summary
        base = baseline.get(_load_level(r))
        ratio = f"{s.output_throughput / base:.2f}" if base else "—"
        lines.append(
            f"| {_load_level(r)} | {r.label} | {s.completed}/{s.failed} | {s.output_throughput:.1f} | {ratio} "
            f"| {s.request_throughput:.2f} | {s.goodput:.2f} | {s.ttft.p50 * 1e3:.0f} / {s.ttft.p99 * 1e3:.0f} "
            f"| {s.tpot.p50 * 1e3:.1f} | {s.itl.p50 * 1e3:.1f} / {s.itl.p99 * 1e3:.1f} | {s.e2el.p50:.2f} |"
            + (f" {', '.join(f'{v:.1f}' for v in repeats[(r.target, _load_level(r))])} |" if repeated else "")
        )
    return "\n".join(lines) + "\n"


def figures(all_runs: list[Run]) -> dict[str, Figure]:
    """Throughput, TTFT and ITL against load, one line per target (its median runs)."""
    runs = median_runs(all_runs)
    by_target: dict[str, list[Run]] = {}
    for r in runs:
        by_target.setdefault(r.label, []).append(r)
    use_rate = all(r.rate is not None for r in runs)
    xlabel = "request rate (req/s)" if use_rate else "concurrent streams"

    def x_of(r: Run) -> float:
        return float(r.rate if use_rate and r.rate is not None else r.concurrency or 0)

    charts: list[tuple[str, str, str, list[tuple[str, Callable[[Summary], float]]]]] = [
        ("throughput", "Output throughput", "tokens/s", [("", lambda s: s.output_throughput)]),
        ("ttft", "Time to first token", "ms", [("p50", lambda s: s.ttft.p50 * 1e3),
                                                   ("p99", lambda s: s.ttft.p99 * 1e3)]),
        ("itl", "Inter-token latency", "ms", [("p50", lambda s: s.itl.p50 * 1e3),
                                                  ("p99", lambda s: s.itl.p99 * 1e3)]),
    ]  # fmt: skip
    levels = sorted({x_of(r) for r in runs})
    drawn = {}
    for name, title, unit, series in charts:
        fig, ax = subplots(figsize=(7, 4.5))
        for color, (label, target_runs) in zip(COLORS, by_target.items(), strict=False):
            ordered = sorted(target_runs, key=x_of)
            for percentile, value in series:
                ax.plot(
                    [x_of(r) for r in ordered],
                    [value(r.summary) for r in ordered],
                    "--" if percentile == "p99" else "-",
                    color=color,
                    marker="o",
                    label=None if percentile == "p99" else label,
                )
        ax.set_xscale("log", base=2)
        ax.set_xticks(levels, [f"{x:g}" for x in levels])
        if unit == "ms":
            # Latencies of a one-at-a-time server and a batching one differ by orders of magnitude.
            ax.set_yscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(unit)
        ax.set_title(title + (" (dashed: p99)" if len(series) > 1 else ""))
        ax.grid(True, alpha=0.3, which="both")
        ax.legend(fontsize=7)
        drawn[name] = fig
    return drawn
