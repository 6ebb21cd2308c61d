"""One soak request, run as its plan says, and what became of it.

Each request is its own connection on a raw socket (``http1``), so the client reads exactly when
and as much as its kind says; what it reads to the end is judged by ``checks``.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Literal, get_args
from urllib.parse import urlsplit

import httpx

from benchmarks.soak.checks import PromptLedger, StreamCheck, whole_errors
from benchmarks.soak.http1 import Conn, Head, Truncated, body_pieces, read_head, request_bytes, sse_data
from benchmarks.soak.observe import SEND_TIMEOUTS, SoakTarget, scrape
from benchmarks.soak.plans import ABORT_KINDS, Plan, Prompts, SoakOptions

# What became of a request. The first five are expected; the last three are failures.
Result = Literal["ok", "aborted", "finished_first", "dropped", "not_dropped", "malformed", "error", "hung"]
RESULTS: tuple[Result, ...] = get_args(Result)
FAILURES: tuple[Result, ...] = ("malformed", "error", "hung")


@dataclass
class Outcome:
    index: int
    phase: str
    kind: str
    api: str
    stream: bool
    result: Result
    latency_s: float
    ttft_s: float | None = None
    events: int = 0
    detail: str | None = None


class SoakClient:
    """Runs plans against one server; one ledger of prompt token counts across all of them."""

    def __init__(self, target: SoakTarget, options: SoakOptions, prompts: Prompts, http: httpx.AsyncClient) -> None:
        url = urlsplit(target.root_url)
        self.host, self.port = url.hostname or "127.0.0.1", url.port or 80
        self.target, self.options, self.prompts = target, options, prompts
        self.http = http  # for /metrics
        self.ledger = PromptLedger()

    async def run(self, plan: Plan, phase: str) -> Outcome:
        started = time.perf_counter()
        outcome = Outcome(plan.index, phase, plan.kind, plan.api, plan.stream, "error", 0.0)
        bound = self.options.request_timeout_s + (self.options.stall_max_s if plan.kind == "stalled_reader" else 0)
        try:
            await asyncio.wait_for(self._exchange(plan, outcome, started), bound)
        except TimeoutError:
            outcome.result, outcome.detail = "hung", f"still running after {bound:.0f} s"
        except (OSError, Truncated, ValueError) as exc:
            if plan.kind == "stalled_reader" and isinstance(exc, Truncated | ConnectionResetError):
                outcome.result, outcome.detail = "dropped", f"{type(exc).__name__} before the stream's headers"
            else:
                outcome.result, outcome.detail = "error", f"{type(exc).__name__}: {exc}"
        outcome.latency_s = time.perf_counter() - started
        return outcome

    async def _exchange(self, plan: Plan, outcome: Outcome, started: float) -> None:
        stalled = plan.kind == "stalled_reader"
        slow = plan.kind == "slow_reader"
        conn = await Conn.open(
            self.host, self.port, rcvbuf=1024 if stalled else 4096 if slow else None, mss=536 if stalled else None
        )
        payload = plan.body(self.target.model, self.prompts)
        request = request_bytes(f"{self.host}:{self.port}", plan.path, payload, plan.stream)
        try:
            if plan.kind == "abort_before_headers":
                await conn.send(request[: len(request) // 2] if plan.partial_body else request)
                await asyncio.sleep(plan.wait_s)
                outcome.result = "aborted"
                return
            await conn.send(request)
            if stalled:
                await self._stall()
            if plan.kind == "abort_non_stream":
                try:
                    head, body = await asyncio.wait_for(self._whole(conn), plan.wait_s)
                except TimeoutError:
                    outcome.result = "aborted"
                    return
                self._judge(outcome, self._errors(plan, head, body), "finished_first")
                return
            head = await read_head(conn)
            if head.status != 200:
                body = await conn.rest()
                outcome.result, outcome.detail = "error", f"HTTP {head.status}: {body[:300]!r}"
                return
            if not plan.stream:
                body = b"".join([piece async for piece in body_pieces(conn, head)])
                self._judge(outcome, self._errors(plan, head, body), "ok")
                return
            await self._stream(plan, conn, head, outcome, started)
        finally:
            conn.close(reset=plan.reset)

    async def _whole(self, conn: Conn) -> tuple[Head, bytes]:
        head = await read_head(conn)
        return head, b"".join([piece async for piece in body_pieces(conn, head)])

    async def _stream(self, plan: Plan, conn: Conn, head: Head, outcome: Outcome, started: float) -> None:
        if not head.headers.get("content-type", "").startswith("text/event-stream"):
            outcome.result, outcome.detail = "malformed", f"content-type {head.headers.get('content-type')!r}"
            return
        check = StreamCheck(plan, self.target.model, self.ledger)
        slow = plan.kind == "slow_reader"
        try:
            async for data in sse_data(body_pieces(conn, head, read_size=256 if slow else 65536)):
                if check.take(data) and outcome.ttft_s is None:
                    outcome.ttft_s = time.perf_counter() - started
                outcome.events = check.events
                if plan.kind == "abort_mid_stream" and check.events >= plan.events and not check.done:
                    outcome.result = "aborted"
                    return
                if slow:
                    await asyncio.sleep(plan.wait_s)
        except (Truncated, ConnectionResetError) as exc:
            if plan.kind == "stalled_reader" and not check.done:
                outcome.result, outcome.detail = "dropped", f"after {check.events} events ({type(exc).__name__})"
                return
            raise
        expected: Result = "not_dropped" if plan.kind == "stalled_reader" else "ok"
        self._judge(outcome, check.finish(), "finished_first" if plan.kind in ABORT_KINDS else expected)

    async def _stall(self) -> None:
        """Read nothing until the server counts a send timeout, or the stall's limit passes.

        Nothing the client can see tells it the server has given up: its own receive queue is
        full after the first step's events, while the server's buffers go on filling for tens of
        steps more. The server's counter does tell, and stalled readers run one at a time (see
        ``run._run_phase``), so the first drop counted is this one.
        """
        start = time.monotonic()
        before = await self._send_timeouts()
        while time.monotonic() - start < self.options.stall_max_s:
            await asyncio.sleep(0.5)
            if await self._send_timeouts() > before:
                return

    async def _send_timeouts(self) -> float:
        return (await scrape(self.http, self.target.root_url)).get(SEND_TIMEOUTS, 0.0)

    def _errors(self, plan: Plan, head: Head, body: bytes) -> list[str]:
        return whole_errors(plan, head.headers.get("content-type"), body, self.target.model, self.ledger)

    @staticmethod
    def _judge(outcome: Outcome, errors: list[str], result: Result) -> None:
        if errors:
            outcome.result, outcome.detail = "malformed", "; ".join(errors)[:500]
        else:
            outcome.result = result
