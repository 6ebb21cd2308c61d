"""The server's side of the soak: its ``/metrics``, its resident memory, its log.

The clients see only their own requests; whether the server let go of everything (requests,
KV blocks, memory) and counted the aborts the clients made is read here.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

DISCONNECTS = 'ise_requests_aborted_total{reason="client_disconnect"}'
SEND_TIMEOUTS = 'ise_requests_aborted_total{reason="send_timeout"}'
SHUTDOWNS = 'ise_requests_aborted_total{reason="shutdown"}'


@dataclass(frozen=True)
class SoakTarget:
    """The server under test: where it is, what it serves, and (when known) its process and log."""

    root_url: str
    model: str
    pid: int | None = None
    log_path: Path | None = None


async def scrape(http: httpx.AsyncClient, root_url: str) -> dict[str, float]:
    """Every sample on ``/metrics``, keyed ``name`` or ``name{label="value"}``."""
    text = (await http.get(f"{root_url}/metrics")).text
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            values[sample.name + (f"{{{labels}}}" if labels else "")] = sample.value
    return values


IDLE_GAUGES = (
    "ise_num_requests_running",
    "ise_num_requests_waiting",
    "ise_requests_in_flight",
    "ise_waiting_requests",
    "ise_kv_cache_blocks_used",
)


async def settle(http: httpx.AsyncClient, root_url: str, timeout_s: float) -> tuple[dict[str, float], float, bool]:
    """Wait for the server to return to idle; its metrics then, the seconds it took, and whether it did."""
    start = time.monotonic()
    while True:
        values = await scrape(http, root_url)
        idle = all(values.get(name, 0.0) == 0.0 for name in IDLE_GAUGES)
        waited = time.monotonic() - start
        if idle or waited > timeout_s:
            return values, waited, idle
        await asyncio.sleep(0.25)


def _descendants(pid: int) -> list[int]:
    found = []
    for children in Path(f"/proc/{pid}/task").glob("*/children"):
        with contextlib.suppress(OSError):
            for child in children.read_text().split():
                found += [int(child), *_descendants(int(child))]
    return found


def rss_bytes(pid: int) -> int:
    """Resident memory of a process and every process under it (a vLLM engine's workers), in bytes."""
    total = 0
    for each in [pid, *_descendants(pid)]:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{each}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
    return total


def log_errors(path: Path | None, offset: int = 0) -> list[str]:
    """Lines of the server's log from ``offset`` on that report an unhandled exception."""
    if path is None or not path.exists():
        return []
    with path.open("rb") as log:
        log.seek(offset)
        lines = log.read().decode(errors="replace").splitlines()
    return [line for line in lines if line.startswith("Traceback") or " ERROR " in line or line.startswith("ERROR")]
