"""The soak's report as Markdown, and its files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmarks.metrics import Distribution
from benchmarks.save import save_result
from benchmarks.soak.client import FAILURES, RESULTS
from benchmarks.soak.observe import DISCONNECTS, SEND_TIMEOUTS
from benchmarks.soak.plans import KINDS
from benchmarks.soak.verdict import SoakReport, counts


def markdown(report: SoakReport, meta: dict[str, Any]) -> str:
    o = report.options
    m = meta["machine"]
    every = [x for p in report.phases for x in p.outcomes]
    lines = [
        f"# Soak: {o.requests} requests at concurrency {o.concurrency} (after {o.warmup} warm-up requests)",
        "",
        f"- Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB RAM; ise {m['ise_commit']}",
        f"- Command: `{meta['command']}`",
        f"- Server: {meta.get('server', report.target.root_url)}",
        f"- Mix: {o.disconnect_fraction:.0%} disconnecting, {o.slow_fraction:.0%} slow readers, "
        f"{o.stalled_fraction:.1%} (at least one per phase) stalled readers (n={o.stall_choices}, "
        f"{o.stall_tokens} tokens), "
        f"{o.min_tokens}-{o.max_tokens} output tokens otherwise; send timeout {o.send_timeout_s:g} s",
        f"- Result: **{'PASSED' if report.passed else 'FAILED'}**",
        "",
        "| check | wanted | measured | ok |",
        "|---|---|---|---|",
        *[f"| {c.name} | {c.wanted} | {c.measured} | {'yes' if c.ok else '**NO**'} |" for c in report.checks],
        "",
        "| kind | requests | " + " | ".join(RESULTS) + " |",
        "|---|---|" + "---|" * len(RESULTS),
    ]
    table = counts(every)
    for kind in KINDS:
        row = table[kind]
        lines.append(f"| {kind} | {sum(row.values())} | " + " | ".join(str(row.get(r, 0)) for r in RESULTS) + " |")
    served = [x for x in every if x.result == "ok"]
    ttft = Distribution.of([x.ttft_s for x in served if x.ttft_s is not None])
    e2e = Distribution.of([x.latency_s for x in served])
    lines += [
        "",
        f"Requests served in full: TTFT p50 / p99 {ttft.p50 * 1e3:.0f} / {ttft.p99 * 1e3:.0f} ms (streams), "
        f"latency p50 / p99 {e2e.p50:.2f} / {e2e.p99:.2f} s.",
        "",
        "| phase | requests | seconds | req/s | aborted (server): client_disconnect / send_timeout | "
        "KV releases, mean ms | idle after s | RSS after MiB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for p in report.phases:
        released = p.delta("ise_abort_kv_release_seconds_count")
        mean = p.delta("ise_abort_kv_release_seconds_sum") / released * 1e3 if released else float("nan")
        rss = f"{p.rss_after / 2**20:.0f}" if p.rss_after is not None else "—"
        lines.append(
            f"| {p.name} | {len(p.outcomes)} | {p.duration_s:.0f} | {len(p.outcomes) / p.duration_s:.1f} | "
            f"{p.delta(DISCONNECTS):g} / {p.delta(SEND_TIMEOUTS):g} | {released:g}, {mean:.1f} | "
            f"{p.settle_s:.1f} | {rss} |"
        )
    failures = [x for x in every if x.result in FAILURES]
    if failures:
        lines += ["", "First failures:", ""]
        lines += [f"- #{x.index} {x.kind} ({x.api}, stream={x.stream}): {x.result}: {x.detail}" for x in failures[:20]]
    return "\n".join(lines) + "\n"


def save(report: SoakReport, meta: dict[str, Any], out: Path) -> str:
    """Write the report and every request's outcome as JSON; return the report."""
    text = markdown(report, meta)
    save_result(out, "soak", {**meta, **report.to_dict()}, text)
    return text
