"""``ise bench admission``: goodput under overload, with SLO admission (``--slo-ttft-ms``) and without.

Two ``ise serve`` processes with the same engine settings, one of them with a TTFT target, each
driven by the same open-loop overload: Poisson arrivals at ``--overload`` times the rate the server
sustains (measured first, closed-loop at ``--max-num-seqs`` streams, unless ``--rate`` is given),
a fixed number of requests (rate x duration), the same seeded prompts in the same order. A client
never retries: a 429 is counted as refused, by its code.

Goodput is what counts under overload: requests per second that completed with TTFT within the
target and TPOT within a loose bound (a server whose queue grows without end answers everything,
late). Without admission the queue grows for as long as the overload lasts, so almost every
request waits past the target; with it, the server refuses at once what it cannot start in time,
and those it admits start on time. Both runs are timed from the first request sent to the last
answered, so a server still working off its queue after the arrivals stop is charged for it.
Warm-up requests carry ``x-slo-ttft-ms: 600000``: none is refused, and the server's TTFT model
learns from all of them before the overload starts.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from adapters.cpu.numerics import resolve_dtype
from benchmarks import flags
from benchmarks.clients import HttpClient
from benchmarks.loadgen import LoadShape, run_load, warm_up
from benchmarks.metrics import Distribution, RequestRecord
from benchmarks.save import COLORS, meta, save_result, subplots
from benchmarks.targets import TargetConfig, ise_server
from benchmarks.workloads import RequestSpec, random_workload
from server.gateway.admission import SLO_HEADER


@dataclass(frozen=True)
class AdmissionOptions:
    slo_ttft_s: float = 1.0
    slo_tpot_s: float = 0.5  # loose: the admission control is about TTFT
    rate: float | None = None  # arrivals per second; None: overload x the measured capacity
    overload: float = 2.5
    duration_s: float = 60.0  # of arrivals: rate x duration requests
    grace_s: float = 600.0  # after the last arrival, for the requests still running
    calibration_requests: int = 128  # four waves of the closed loop below
    calibration_concurrency: int = 32
    warmup: int = 16
    repeats: int = 1
    seed: int = 0


@dataclass
class OverloadRun:
    label: str
    slo_ttft_ms: float | None  # the server's --slo-ttft-ms; None: no admission control
    repeat: int
    rate: float
    records: list[RequestRecord]
    wall_s: float

    def refused(self) -> dict[str, int]:
        codes: dict[str, int] = {}
        for r in self.records:
            if r.status == 429:
                codes[r.code or "?"] = codes.get(r.code or "?", 0) + 1
        return codes

    def completed(self) -> list[RequestRecord]:
        return [r for r in self.records if r.ok]

    def good(self, options: AdmissionOptions) -> list[RequestRecord]:
        def met(r: RequestRecord) -> bool:
            tpot = r.tpot
            return r.ttft is not None and r.ttft <= options.slo_ttft_s and (tpot is None or tpot <= options.slo_tpot_s)

        return [r for r in self.completed() if met(r)]

    def summary(self, options: AdmissionOptions) -> dict[str, Any]:
        done = self.completed()
        refused = self.refused()
        good = self.good(options)
        ttft = Distribution.of([r.ttft for r in done if r.ttft is not None])
        tpot = Distribution.of([t for r in done if (t := r.tpot) is not None])
        return {
            "label": self.label,
            "slo_ttft_ms": self.slo_ttft_ms,
            "repeat": self.repeat,
            "offered_rate": self.rate,
            "sent": len(self.records),
            "completed": len(done),
            "refused": sum(refused.values()),
            "refused_by_code": refused,
            "failed": len(self.records) - len(done) - sum(refused.values()),
            "good": len(good),
            "wall_s": self.wall_s,
            "goodput": len(good) / self.wall_s if self.wall_s > 0 else 0.0,
            "completed_per_s": len(done) / self.wall_s if self.wall_s > 0 else 0.0,
            "admitted_within_slo": len(good) / len(done) if done else float("nan"),
            "ttft": asdict(ttft),
            "ttft_max": max((r.ttft for r in done if r.ttft is not None), default=float("nan")),
            "tpot": asdict(tpot),
        }


async def calibrate(client: HttpClient, specs: list[RequestSpec], concurrency: int) -> float:
    """Requests per second the server sustains: closed-loop at ``concurrency`` streams."""
    result = await run_load(client, specs, LoadShape(concurrency=concurrency), desc="capacity")
    done = [r for r in result.records if r.ok]
    if not done or result.duration_s <= 0:
        raise RuntimeError(f"capacity run failed: {[r.error for r in result.records][:3]}")
    return len(done) / result.duration_s


async def overload(
    client: HttpClient, specs: list[RequestSpec], rate: float, options: AdmissionOptions, label: str
) -> tuple[list[RequestRecord], float]:
    """Poisson arrivals of every spec at ``rate``; the records and the wall time, first send to last answer."""
    shape = LoadShape(rate=rate, max_duration_s=2 * options.duration_s, grace_s=options.grace_s, seed=options.seed)
    started = time.perf_counter()
    result = await run_load(client, specs, shape, desc=label)
    records = result.records
    ends = [r.start + r.latency for r in records if r.status is not None]
    wall = max(ends) if ends else time.perf_counter() - started
    if any(r.status is None for r in records):  # cut off or failed without an answer: charge the whole wait
        wall = max(wall, time.perf_counter() - started)
    return records, wall


async def settle(client: HttpClient, timeout_s: float = 600) -> None:
    """Wait until the server has no request left (a refused client's request may still be aborting)."""
    root = client.base_url.removesuffix("/v1")
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        text = (await client.http.get(f"{root}/metrics")).text
        busy = re.search(r"^ise_num_requests_(running|waiting) [1-9]", text, re.MULTILINE)
        if not busy:
            return
        await asyncio.sleep(0.5)


def markdown(runs: list[OverloadRun], options: AdmissionOptions, meta: dict[str, Any]) -> str:
    m = meta["machine"]
    rate = runs[0].rate if runs else float("nan")
    capacity = meta.get("capacity_rps")
    streams = options.calibration_concurrency
    how = f"{options.overload:g}x the {capacity:.2f} req/s sustained at {streams} streams" if capacity else "--rate"
    lines = [
        "# Goodput under overload: SLO admission against none",
        "",
        f"- Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB RAM; ise {m['ise_commit']}",
        f"- Servers: `{meta['server']}`, and the same with `--slo-ttft-ms {options.slo_ttft_s * 1e3:g}`",
        f"- Load: Poisson arrivals at {rate:.2f} req/s ({how}), {len(runs[0].records) if runs else 0} requests "
        f"per run ({options.duration_s:g} s of arrivals), {meta['workload']}; no retries",
        f"- Goodput: requests completed with TTFT <= {options.slo_ttft_s * 1e3:g} ms and TPOT <= "
        f"{options.slo_tpot_s * 1e3:g} ms, per second of the run (first request sent to last answered)",
        f"- Command: `{meta['command']}`",
        "",
        "| server | pass | sent | completed | refused (429) | failed | goodput req/s | completed req/s | "
        "admitted within SLO | TTFT p50 / p90 / p99 / max ms (completed) | TPOT p50 ms | run s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for run in runs:
        s = run.summary(options)
        codes = ", ".join(f"{k} {v}" for k, v in sorted(s["refused_by_code"].items()))
        t = s["ttft"]
        ttft = " / ".join(_ms(v) for v in (t["p50"], t["p90"], t["p99"], s["ttft_max"]))
        within = "—" if math.isnan(s["admitted_within_slo"]) else f"{s['admitted_within_slo']:.0%}"
        lines.append(
            f"| {run.label} | {run.repeat + 1} | {s['sent']} | {s['completed']} | {s['refused']}"
            f"{f' ({codes})' if codes else ''} | {s['failed']} | **{s['goodput']:.2f}** | {s['completed_per_s']:.2f} "
            f"| {within} | {ttft} | {_ms(s['tpot']['p50'])} | {s['wall_s']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def _ms(seconds: float) -> str:
    return "—" if math.isnan(seconds) else f"{seconds * 1e3:.0f}"


def _median_run(runs: list[OverloadRun], label: str, options: AdmissionOptions) -> OverloadRun | None:
    mine = sorted((r for r in runs if r.label == label), key=lambda r: len(r.good(options)))
    return mine[(len(mine) - 1) // 2] if mine else None


def plot(runs: list[OverloadRun], options: AdmissionOptions) -> Figure:
    """TTFT of each request against when it was sent, per server; and the rates side by side."""
    labels = list(dict.fromkeys(r.label for r in runs))
    chosen = [run for label in labels if (run := _median_run(runs, label, options)) is not None]
    fig, (left, right) = subplots(1, 2, figsize=(12, 4.8), gridspec_kw={"width_ratios": [3, 2]})
    for color, run in zip(COLORS, chosen, strict=False):
        done = [r for r in run.completed() if r.ttft is not None]
        refused = [r for r in run.records if r.status == 429]
        left.scatter([r.start for r in done], [r.ttft or 0 for r in done], s=6, color=color, label=f"{run.label}: TTFT")
        if refused:
            left.scatter(
                [r.start for r in refused], [r.latency for r in refused], s=10, marker="x", color=color, alpha=0.5,
                label=f"{run.label}: refused (time to the 429)",
            )  # fmt: skip
    left.axhline(options.slo_ttft_s, color="black", linestyle="--", linewidth=1, label="TTFT target")
    left.set_yscale("log")
    left.set_xlabel("request sent at (s)")
    left.set_ylabel("seconds")
    left.set_title("Time to first token under overload")
    left.grid(True, alpha=0.3, which="both")
    left.legend(fontsize=7)
    metrics: list[tuple[str, Callable[[OverloadRun], float]]] = [
        ("offered", lambda r: r.rate),
        ("completed", lambda r: len(r.completed()) / r.wall_s),
        ("goodput", lambda r: len(r.good(options)) / r.wall_s),
        ("refused", lambda r: sum(r.refused().values()) / r.wall_s),
    ]
    width = 0.8 / max(len(chosen), 1)
    for i, (color, run) in enumerate(zip(COLORS, chosen, strict=False)):
        xs = [j + i * width for j in range(len(metrics))]
        right.bar(xs, [value(run) for _, value in metrics], width=width, color=color, label=run.label)
    right.set_xticks([j + width * (len(chosen) - 1) / 2 for j in range(len(metrics))], [n for n, _ in metrics])
    right.set_ylabel("requests per second")
    right.set_title("Rates (goodput: TTFT and TPOT within target)")
    right.grid(True, axis="y", alpha=0.3)
    right.legend(fontsize=7)
    return fig


def save(runs: list[OverloadRun], options: AdmissionOptions, info: dict[str, Any], out: Path) -> str:
    """Write the table, every request's record as JSON and the plot; return the table."""
    text = markdown(runs, options, info)
    payload = {
        **info,
        "options": asdict(options),
        "runs": [
            {**run.summary(options), "records": [asdict(r) for r in run.records]}
            for run in runs
        ],
    }  # fmt: skip
    save_result(out, "admission", payload, text, {"admission": plot(runs, options)})
    return text


def request_count(rate: float, options: AdmissionOptions) -> int:
    return max(1, math.ceil(rate * options.duration_s))


HELP = "goodput under overload with SLO admission and without"
_D = AdmissionOptions()
PARENT = flags.parent(
    "model-dir", "dtype", "max-num-seqs", "kv-cache-gib", "slo-ttft", "slo-tpot", "input-len", "output-len",
    "warmup", "repeats", "seed", "out",
    slo_ttft=_D.slo_ttft_s, slo_tpot=_D.slo_tpot_s, output_len=32, warmup=_D.warmup, repeats=_D.repeats,
    seed=_D.seed, out=flags.DEFAULT_OUT / "admission",
)  # fmt: skip


def add_cli_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rate", type=float, help="arrivals per second (default: --overload x measured capacity)")
    parser.add_argument("--overload", type=float, default=_D.overload, help="arrival rate over the capacity")
    parser.add_argument("--duration", type=float, default=_D.duration_s, help="seconds of arrivals per run")
    parser.add_argument("--grace", type=float, default=_D.grace_s, help="seconds after the arrivals for the rest")
    parser.add_argument("--calibration-requests", type=int, default=_D.calibration_requests)
    parser.add_argument("--calibration-concurrency", type=int, default=_D.calibration_concurrency)


def main(args: argparse.Namespace) -> None:
    asyncio.run(_main(args))


async def _main(args: argparse.Namespace) -> None:
    model_dir, tokenizer = flags.tokenizer(args)
    dtype = str(resolve_dtype(args.dtype)).removeprefix("torch.")
    options = AdmissionOptions(
        slo_ttft_s=args.slo_ttft,
        slo_tpot_s=args.slo_tpot,
        rate=args.rate,
        overload=args.overload,
        duration_s=args.duration,
        grace_s=args.grace,
        calibration_requests=args.calibration_requests,
        calibration_concurrency=args.calibration_concurrency,
        warmup=args.warmup,
        repeats=args.repeats,
        seed=args.seed,
    )
    config = TargetConfig(model_dir=model_dir, dtype=dtype, log_dir=args.out / "logs", max_num_seqs=args.max_num_seqs)
    engine = ["--kv-cache-gib", str(args.kv_cache_gib)] if args.kv_cache_gib else []
    slo_ms = f"{args.slo_ttft * 1e3:g}"
    variants = [("no admission control", None, engine), (f"--slo-ttft-ms {slo_ms}", args.slo_ttft * 1e3,
                [*engine, "--slo-ttft-ms", slo_ms])]  # fmt: skip
    info = {
        **meta(args=vars(args)),
        "server": " ".join(["ise serve --dtype", dtype, "--max-num-seqs", str(args.max_num_seqs), *engine]),
        "workload": f"random prompts of {args.input_len} tokens, {args.output_len} output tokens each "
        "(ignore_eos), greedy",
    }

    def specs(count: int, seed: int, output_len: int | None = None) -> list[RequestSpec]:
        out = output_len or args.output_len
        return random_workload(tokenizer, count=count, input_len=args.input_len, output_len=out, seed=seed)

    runs: list[OverloadRun] = []
    async with contextlib.AsyncExitStack() as stack:
        clients: list[tuple[str, float | None, HttpClient]] = []
        for index, (label, slo, extra) in enumerate(variants):
            started = time.monotonic()
            server = await stack.enter_async_context(ise_server(config, *extra, name=f"admission-{index}"))
            client = HttpClient(server.base_url, server.model)
            stack.push_async_callback(client.aclose)
            if args.warmup:
                # A target no warm-up request can miss: a cold start's slow first tokens must not
                # get the warm-up refused (the TTFT model still learns from every one of them).
                client.http.headers[SLO_HEADER] = "600000"
                await warm_up(client, specs(args.warmup, args.seed + 10_000, output_len=16), 4)
                del client.http.headers[SLO_HEADER]
            print(f"{label}: ready in {time.monotonic() - started:.0f} s (pid {server.pid})", flush=True)
            clients.append((label, slo, client))
        rate = args.rate
        if rate is None:
            calibration = specs(args.calibration_requests, args.seed + 20_000)
            capacity = await calibrate(clients[0][2], calibration, args.calibration_concurrency)
            info["capacity_rps"] = capacity
            rate = args.overload * capacity
            print(f"capacity {capacity:.2f} req/s; overload at {rate:.2f} req/s", flush=True)
        for repeat in range(args.repeats):
            workload = specs(request_count(rate, options), args.seed + 1000 * repeat)
            # Alternate which server goes first, so a drift of a shared machine hits both alike.
            for label, slo, client in clients if repeat % 2 == 0 else clients[::-1]:
                records, wall = await overload(client, workload, rate, options, label)
                run = OverloadRun(label, slo, repeat, rate, records, wall)
                runs.append(run)
                s = run.summary(options)
                print(
                    f"{label:28s} pass {repeat + 1}: sent {s['sent']}, completed {s['completed']}, refused "
                    f"{s['refused']}, failed {s['failed']}, goodput {s['goodput']:.2f} req/s, TTFT p50 "
                    f"{s['ttft']['p50'] * 1e3:.0f} ms p99 {s['ttft']['p99'] * 1e3:.0f} ms, {wall:.0f} s",
                    flush=True,
                )
                await settle(client)
    save(runs, options, info, args.out)
