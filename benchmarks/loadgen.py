"""Load shapes: a fixed number of requests in flight, or open-loop Poisson arrivals.

Both are bounded by a request count and a duration and stop on their own: once the duration
is up no new request starts, and requests still running get a grace period before they are
cancelled and counted as failed.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass

from tqdm import tqdm

from benchmarks.clients import Client
from benchmarks.metrics import RequestRecord
from benchmarks.workloads import RequestSpec


@dataclass(frozen=True)
class LoadShape:
    concurrency: int | None = None  # at most this many in flight (None: unlimited)
    rate: float | None = None  # Poisson arrivals per second (None: all at once)
    max_duration_s: float = 600.0
    grace_s: float = 600.0
    seed: int = 0

    def label(self) -> str:
        parts = []
        if self.rate is not None:
            parts.append(f"rate={self.rate:g}/s")
        if self.concurrency is not None:
            parts.append(f"concurrency={self.concurrency}")
        return " ".join(parts) or "unbounded"


@dataclass
class LoadResult:
    records: list[RequestRecord]
    duration_s: float


async def warm_up(client: Client, specs: list[RequestSpec], concurrency: int) -> None:
    """Requests whose timings are thrown away: first-call costs are not what we measure."""
    gate = asyncio.Semaphore(max(concurrency, 1))

    async def one(spec: RequestSpec) -> None:
        async with gate:
            await client.send(spec)

    await asyncio.gather(*(one(s) for s in specs))


async def run_load(client: Client, specs: list[RequestSpec], shape: LoadShape, desc: str = "") -> LoadResult:
    gate = asyncio.Semaphore(shape.concurrency) if shape.concurrency else None
    rng = random.Random(shape.seed)
    progress = tqdm(total=len(specs), desc=desc or shape.label(), unit="req", leave=False)
    clock_start = time.perf_counter()
    deadline = clock_start + shape.max_duration_s

    async def one(spec: RequestSpec) -> RequestRecord | None:
        if gate is not None:
            await gate.acquire()
        try:
            if time.perf_counter() > deadline:
                return None
            sent = time.perf_counter()
            record = await client.send(spec)
            record.start = sent - clock_start
            return record
        finally:
            if gate is not None:
                gate.release()
            progress.update()

    tasks: list[asyncio.Task[RequestRecord | None]] = []
    for spec in specs:
        if time.perf_counter() > deadline:
            break
        tasks.append(asyncio.create_task(one(spec)))
        if shape.rate is not None:
            await asyncio.sleep(rng.expovariate(shape.rate))
    done, pending = await asyncio.wait(tasks, timeout=max(deadline - time.perf_counter(), 0) + shape.grace_s)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    progress.close()
    records: list[RequestRecord] = []
    for task in tasks:
        if task in done and task.exception() is None:
            result = task.result()
            if result is not None:
                records.append(result)
        else:
            error = "cancelled after the grace period" if task in pending else repr(task.exception())
            records.append(RequestRecord(error=error))
    ends = [r.start + r.latency for r in records if r.ok]
    duration = (max(ends) - min(r.start for r in records if r.ok)) if ends else 0.0
    return LoadResult(records=records, duration_s=duration)
