"""The soak's run: a warm-up phase, then the soak, each left to settle; then the checks."""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter

import httpx
from tqdm import tqdm

from benchmarks.soak.client import Outcome, SoakClient
from benchmarks.soak.observe import SoakTarget, log_errors, rss_bytes, scrape, settle
from benchmarks.soak.plans import Plan, Prompts, SoakOptions, make_plans
from benchmarks.soak.verdict import Phase, SoakReport, judge


async def _run_phase(
    client: SoakClient,
    http: httpx.AsyncClient,
    name: str,
    plans: list[Plan],
    deadline: float,
    pid: int | None,
) -> Phase:
    options = client.options
    before = await scrape(http, client.target.root_url)
    # Stalled readers go one at a time in a lane of their own beside the workers, so each can tell
    # its own drop on /metrics; the workers keep ``concurrency`` other requests in flight.
    lanes: list[asyncio.Queue[Plan]] = [asyncio.Queue(), asyncio.Queue()]
    for plan in plans:
        lanes[plan.kind == "stalled_reader"].put_nowait(plan)
    outcomes: list[Outcome] = []
    tally: Counter[str] = Counter()
    progress = tqdm(total=len(plans), desc=f"soak {name}", unit="req")

    async def worker(queue: asyncio.Queue[Plan]) -> None:
        while not queue.empty() and time.monotonic() < deadline:
            outcome = await client.run(queue.get_nowait(), name)
            outcomes.append(outcome)
            tally[outcome.result] += 1
            progress.update()
            progress.set_postfix(dict(tally), refresh=False)

    start = time.monotonic()
    await asyncio.gather(worker(lanes[True]), *(worker(lanes[False]) for _ in range(options.concurrency)))
    duration = time.monotonic() - start
    progress.close()
    after, settle_s, idle = await settle(http, client.target.root_url, options.settle_timeout_s)
    rss = rss_bytes(pid) if pid is not None else None
    return Phase(
        name, len(plans), sorted(outcomes, key=lambda o: o.index), duration, before, after, settle_s, idle, rss
    )


async def _sample_rss(pid: int, samples: list[tuple[float, int]], start: float) -> None:
    while True:
        samples.append((round(time.monotonic() - start, 1), rss_bytes(pid)))
        await asyncio.sleep(1.0)


async def run_soak(target: SoakTarget, options: SoakOptions) -> SoakReport:
    """Warm up, then soak, then check; the report says what passed."""
    rng = random.Random(options.seed)
    prompts = Prompts.make(rng)
    warm = make_plans(options, options.warmup, 0, rng)
    main = make_plans(options, options.requests, options.warmup, rng)
    report = SoakReport(options, target, [])
    log_offset = target.log_path.stat().st_size if target.log_path and target.log_path.exists() else 0
    start = time.monotonic()
    deadline = start + options.max_duration_s
    async with httpx.AsyncClient(timeout=30) as http:
        client = SoakClient(target, options, prompts, http)
        sampler = (
            asyncio.create_task(_sample_rss(target.pid, report.rss_samples, start)) if target.pid is not None else None
        )
        try:
            for name, plans in (("warm-up", warm), ("soak", main)):
                if plans:
                    phase = await _run_phase(client, http, name, plans, deadline, target.pid)
                    report.phases.append(phase)
                    print(_phase_line(phase), flush=True)
        finally:
            if sampler is not None:
                sampler.cancel()
                await asyncio.gather(sampler, return_exceptions=True)
        health = (await http.get(f"{target.root_url}/health")).status_code
    report.checks = judge(report, health, log_errors(target.log_path, log_offset))
    return report


def _phase_line(phase: Phase) -> str:
    tally = Counter(o.result for o in phase.outcomes)
    rss = f", RSS {phase.rss_after / 2**20:.0f} MiB" if phase.rss_after is not None else ""
    return (
        f"{phase.name}: {len(phase.outcomes)}/{phase.planned} requests in {phase.duration_s:.0f} s "
        f"({', '.join(f'{k} {v}' for k, v in sorted(tally.items()))}); idle again after {phase.settle_s:.1f} s"
        f"{'' if phase.idle else ' (NOT idle)'}{rss}"
    )
