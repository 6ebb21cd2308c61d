"""What a soak found: its phases, the checks judged on them, and the report that holds both."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

from benchmarks.soak.client import FAILURES, Outcome
from benchmarks.soak.observe import DISCONNECTS, IDLE_GAUGES, SEND_TIMEOUTS, SHUTDOWNS, SoakTarget
from benchmarks.soak.plans import KINDS, SoakOptions


@dataclass
class Phase:
    name: str
    planned: int
    outcomes: list[Outcome]
    duration_s: float
    metrics_before: dict[str, float]
    metrics_after: dict[str, float]
    settle_s: float
    idle: bool
    rss_after: int | None

    def delta(self, name: str) -> float:
        return self.metrics_after.get(name, 0.0) - self.metrics_before.get(name, 0.0)


@dataclass
class Check:
    name: str
    wanted: str
    measured: str
    ok: bool


@dataclass
class SoakReport:
    options: SoakOptions
    target: SoakTarget
    phases: list[Phase]
    checks: list[Check] = field(default_factory=list)
    rss_samples: list[tuple[float, int]] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(c.ok for c in self.checks)

    def check(self, name: str) -> Check:
        return next(c for c in self.checks if c.name == name)

    def to_dict(self) -> dict[str, Any]:
        return {
            "options": asdict(self.options),
            "target": {**asdict(self.target), "log_path": str(self.target.log_path) if self.target.log_path else None},
            "passed": self.passed,
            "checks": [asdict(c) for c in self.checks],
            "phases": [
                {
                    **{k: v for k, v in asdict(p).items() if k != "outcomes"},
                    "counts": counts(p.outcomes),
                    "failures": [asdict(o) for o in p.outcomes if o.result in FAILURES][:100],
                    "outcomes": [asdict(o) for o in p.outcomes],
                }
                for p in self.phases
            ],
            "rss_samples": self.rss_samples,
        }


def counts(outcomes: list[Outcome]) -> dict[str, dict[str, int]]:
    """Outcomes by kind, then result."""
    table: dict[str, dict[str, int]] = {kind: {} for kind in KINDS}
    for o in outcomes:
        table[o.kind][o.result] = table[o.kind].get(o.result, 0) + 1
    return table


def judge(report: SoakReport, health: int, errors: list[str]) -> list[Check]:
    o = report.options
    phases = report.phases
    every = [x for p in phases for x in p.outcomes]
    tally = Counter(x.result for x in every)
    planned = sum(p.planned for p in phases)
    checks = [
        Check("every request sent", f"{planned}", f"{len(every)}", len(every) == planned),
        Check(
            "responses read to the end are well formed",
            "0 malformed, 0 errors",
            f"{tally['malformed']} malformed, {tally['error']} errors, "
            f"{tally['ok'] + tally['finished_first'] + tally['not_dropped']} read whole",
            tally["malformed"] == 0 and tally["error"] == 0,
        ),
        Check("no request hangs", f"0 past {o.request_timeout_s:.0f} s", f"{tally['hung']}", tally["hung"] == 0),
    ]
    for p in phases:
        left = ", ".join(f"{k.removeprefix('ise_')} {p.metrics_after.get(k, 0):g}" for k in IDLE_GAUGES)
        checks.append(
            Check(
                f"idle after {p.name}",
                f"all 0 within {o.settle_timeout_s:.0f} s",
                f"{left} after {p.settle_s:.1f} s",
                p.idle,
            )
        )
    disconnects = sum(p.delta(DISCONNECTS) for p in phases)
    send_timeouts = sum(p.delta(SEND_TIMEOUTS) for p in phases)
    shutdowns = sum(p.delta(SHUTDOWNS) for p in phases)
    closed = tally["aborted"]
    checks.append(
        Check(
            "server counts no more disconnects than clients made",
            f"client_disconnect <= {closed} closes, shutdown 0",
            f"client_disconnect {disconnects:g}, shutdown {shutdowns:g}",
            disconnects <= closed and shutdowns == 0,
        )
    )
    stalled = [x for x in every if x.kind == "stalled_reader"]
    dropped = sum(x.result == "dropped" for x in stalled)
    checks.append(
        Check(
            "stalled readers dropped after the send timeout",
            f"send_timeout aborts == clients cut off, >= 1 of {len(stalled)}",
            f"send_timeout {send_timeouts:g}, {dropped} cut off, {len(stalled) - dropped} served in full",
            send_timeouts == dropped and (dropped >= 1 or not stalled),
        )
    )
    released = sum(p.delta("ise_abort_kv_release_seconds_count") for p in phases)
    release_s = sum(p.delta("ise_abort_kv_release_seconds_sum") for p in phases)
    mean_ms = release_s / released * 1e3 if released else float("nan")
    aborted = disconnects + send_timeouts
    checks.append(
        Check(
            "aborted requests free their KV blocks promptly",
            f">= 1 release when aborts happened, mean <= {o.max_abort_release_s * 1e3:.0f} ms",
            f"{released:g} releases, mean {mean_ms:.1f} ms",
            (released >= 1 or aborted == 0) and (not released or mean_ms <= o.max_abort_release_s * 1e3),
        )
    )
    if len(phases) == 2 and phases[0].rss_after and phases[1].rss_after:
        base, end = phases[0].rss_after, phases[1].rss_after
        growth = end / base - 1
        checks.append(
            Check(
                "resident memory after warm-up vs at the end",
                f"growth < {o.rss_growth:.0%}",
                f"{base / 2**20:.0f} -> {end / 2**20:.0f} MiB ({growth:+.2%}, {(end - base) / 2**20:+.1f} MiB)",
                growth < o.rss_growth,
            )
        )
    if report.target.log_path is not None:
        checks.append(
            Check(
                "no unhandled exception in the server log",
                "0 error lines",
                f"{len(errors)}" + (f": {errors[0][:160]}" if errors else ""),
                not errors,
            )
        )
    checks.append(Check("server healthy at the end", "GET /health 200", f"{health}", health == 200))
    return checks
