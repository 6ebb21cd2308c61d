"""``ise bench soak``: thousands of requests, a fifth of them abandoned, and the server must come back clean.

Closed-loop load (``concurrency`` requests in flight) of short requests on loopback: chat and text
completions, streamed and whole, greedy and sampled, one choice or several. Every request has a
planned behaviour (its *kind*), drawn in exact proportions and shuffled with a seed:

- ``complete``: reads the whole response and checks it is well formed.
- ``slow_reader``: reads a stream in small pieces with a pause before each, to the end.
- ``abort_before_headers``: sends the request (a quarter of these only half its body) and closes
  the connection without reading a byte.
- ``abort_mid_stream``: reads some events of a stream, then closes.
- ``abort_non_stream``: a non-streamed request closed at a random point while it is generated.
- ``stalled_reader``: reads nothing at all; the server must drop it after ``--stream-send-timeout``.
  A server only notices once its socket buffers are full, so this client shrinks them (a small
  receive buffer, and a small MSS, which keeps the server's send buffer from growing to
  megabytes on loopback) and asks for a large output (16 choices of 64 tokens, ~280 KB of events
  against the ~100 KB the two kernels and uvloop hold). It stays silent until the server's
  ``ise_requests_aborted_total{reason="send_timeout"}`` rises (stalled readers take turns in a
  lane of their own, so the rise is this one's), then reads what is left: a stream cut short
  without ``[DONE]`` is what should happen.

Half of the aborts close with a reset (SO_LINGER 0), the others with an orderly FIN. Each request
is its own connection (``Connection: close``) on a raw socket, so the client reads exactly when and
as much as its kind says: an HTTP library would read ahead into its own buffers.

Checks, each in the report: every response read to its end is well formed (status 200, valid
JSON, or SSE chunks of one id ending in ``[DONE]``, a finish_reason for every choice, usage that
adds up and matches the request: fixed-length outputs are exactly max_tokens, the same prompt
always counts the same prompt tokens); no request outlives its bound (none hangs); the server's
``/metrics`` return to idle (no request running, waiting or in flight, and no KV cache block held:
the CPU engine keeps prefix-cached blocks nobody holds on its free list, so idle is 0 blocks used);
its abort counters agree with what the clients did; the KV blocks of aborted requests are freed
promptly; the server's resident memory after the run is within ``--rss-growth`` of what it was
after the warm-up phase; its log has no unhandled exception; and it still answers ``/health``.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import random
import socket
import struct
import termios
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args
from urllib.parse import urlsplit

import httpx
from prometheus_client.parser import text_string_to_metric_families
from tqdm import tqdm

from benchmarks.metrics import Distribution

Kind = Literal[
    "complete", "slow_reader", "abort_before_headers", "abort_mid_stream", "abort_non_stream", "stalled_reader"
]
KINDS: tuple[Kind, ...] = get_args(Kind)
ABORT_KINDS: tuple[Kind, ...] = ("abort_before_headers", "abort_mid_stream", "abort_non_stream")

# What became of a request. The first five are expected; the last three are failures.
Result = Literal["ok", "aborted", "finished_first", "dropped", "not_dropped", "malformed", "error", "hung"]
RESULTS: tuple[Result, ...] = get_args(Result)
FAILURES: tuple[Result, ...] = ("malformed", "error", "hung")

DISCONNECTS = 'ise_requests_aborted_total{reason="client_disconnect"}'
SEND_TIMEOUTS = 'ise_requests_aborted_total{reason="send_timeout"}'
SHUTDOWNS = 'ise_requests_aborted_total{reason="shutdown"}'

WORDS = (
    "the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "while", "seven", "tired", "engineers",
    "watch", "servers", "answer", "questions", "about", "rivers", "mountains", "cities", "music", "history",
    "weather", "gardens", "bridges", "trains", "oceans", "planets", "poetry", "coffee", "bread", "maps", "clocks",
    "lamps", "windows", "stories", "numbers", "colours", "letters", "birds",
)  # fmt: skip


@dataclass(frozen=True)
class SoakOptions:
    requests: int = 2000
    concurrency: int = 32
    warmup: int = 200  # requests of the same mix before the memory baseline, not counted in ``requests``
    disconnect_fraction: float = 0.2  # split evenly between the three abort kinds
    slow_fraction: float = 0.05
    stalled_fraction: float = 0.01  # at least one stalled reader whenever this is above 0
    min_tokens: int = 4
    max_tokens: int = 16
    stall_choices: int = 16  # a stalled reader's n ...
    stall_tokens: int = 64  # ... and max_tokens: enough output to fill every buffer on the way
    send_timeout_s: float = 2.0  # the server's --stream-send-timeout
    stall_max_s: float = 60.0  # a stalled reader reads again after this at the latest
    request_timeout_s: float = 120.0  # a request still running after this (plus a stall) is hung
    max_duration_s: float = 3600.0  # no request starts after this; the rest count as not sent
    settle_timeout_s: float = 60.0  # time the server gets after a phase to return to idle
    rss_growth: float = 0.05  # resident memory growth allowed from after warm-up to the end
    max_abort_release_s: float = 1.0  # mean abort-to-KV-free time allowed
    seed: int = 0


@dataclass(frozen=True)
class SoakTarget:
    """The server under test: where it is, what it serves, and (when known) its process and log."""

    root_url: str
    model: str
    pid: int | None = None
    log_path: Path | None = None


@dataclass(frozen=True)
class Plan:
    """One request, and how its client behaves."""

    index: int
    kind: Kind
    api: Literal["chat", "completions"]
    stream: bool
    include_usage: bool
    n: int
    max_tokens: int
    fixed_length: bool  # ignore_eos: the output is exactly max_tokens per choice
    temperature: float
    seed: int | None
    prompt: int  # index into the prompt pool
    system: bool  # chat with the shared system prompt (a prefix the cache can reuse)
    wait_s: float  # aborts: time before closing; slow reader: pause before each read
    events: int  # abort_mid_stream: events read before closing
    reset: bool  # close with a reset (SO_LINGER 0) rather than a FIN
    partial_body: bool  # abort_before_headers: send only half the body

    def body(self, model: str, prompts: Prompts) -> dict[str, Any]:
        body: dict[str, Any] = {"model": model, "max_tokens": self.max_tokens, "stream": self.stream, "n": self.n}
        text = prompts.user[self.prompt]
        if self.api == "chat":
            system = [{"role": "system", "content": prompts.system}] if self.system else []
            body["messages"] = [*system, {"role": "user", "content": text}]
        else:
            body["prompt"] = (prompts.system + "\n\n" if self.system else "") + text
        body["temperature"] = self.temperature
        if self.seed is not None:
            body["seed"] = self.seed
        if self.fixed_length:
            body["ignore_eos"] = True
        if self.stream and self.include_usage:
            body["stream_options"] = {"include_usage": True}
        return body

    @property
    def prompt_key(self) -> tuple[str, int, bool]:
        """Requests with the same key send the same prompt, so must be counted the same prompt tokens."""
        return (self.api, self.prompt, self.system)


@dataclass(frozen=True)
class Prompts:
    system: str
    user: list[str]

    @classmethod
    def make(cls, rng: random.Random, count: int = 48) -> Prompts:
        def words(k: int) -> str:
            return " ".join(rng.choice(WORDS) for _ in range(k))

        return cls(system=words(120), user=[words(rng.randint(6, 48)) for _ in range(count)])


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


def make_plans(options: SoakOptions, count: int, first_index: int, rng: random.Random) -> list[Plan]:
    """``count`` requests whose kinds come in the exact proportions of ``options``, shuffled."""
    d = options.disconnect_fraction
    shares: dict[Kind, float] = {
        "abort_before_headers": d / 3,
        "abort_mid_stream": d / 3,
        "abort_non_stream": d / 3,
        "slow_reader": options.slow_fraction,
        "stalled_reader": options.stalled_fraction,
    }
    kinds: list[Kind] = []
    for kind, share in shares.items():
        planned = round(share * count)
        if kind == "stalled_reader" and share > 0:
            planned = max(planned, 1)
        kinds += [kind] * planned
    if len(kinds) > count:
        raise ValueError("the fractions of special kinds add up to more than every request")
    kinds += ["complete"] * (count - len(kinds))
    rng.shuffle(kinds)
    return [_plan(first_index + i, kind, options, rng) for i, kind in enumerate(kinds)]


def _plan(index: int, kind: Kind, options: SoakOptions, rng: random.Random) -> Plan:
    if kind == "stalled_reader":
        return Plan(
            index, kind, "chat", stream=True, include_usage=False, n=options.stall_choices,
            max_tokens=options.stall_tokens, fixed_length=True, temperature=0.0, seed=None, prompt=rng.randrange(48),
            system=False, wait_s=0.0, events=0, reset=False, partial_body=False,
        )  # fmt: skip
    streams = {"slow_reader": True, "abort_mid_stream": True, "abort_non_stream": False}
    stream = streams.get(kind, rng.random() < 0.5)
    max_tokens = rng.randint(options.min_tokens, options.max_tokens)
    n = 2 if rng.random() < 0.1 else 1
    sampled = rng.random() < 0.3
    wait_s = {
        "abort_before_headers": rng.choice([0.0, rng.uniform(0.0, 0.05)]),
        "abort_non_stream": rng.uniform(0.02, 1.0),
        "slow_reader": rng.uniform(0.02, 0.2),
    }.get(kind, 0.0)
    return Plan(
        index=index,
        kind=kind,
        api="chat" if rng.random() < 0.5 else "completions",
        stream=stream,
        include_usage=stream and rng.random() < 0.5,
        n=n,
        max_tokens=max_tokens,
        fixed_length=rng.random() < 0.5,
        temperature=rng.choice([0.7, 1.0]) if sampled else 0.0,
        seed=rng.randrange(2**31) if sampled and rng.random() < 0.5 else None,
        prompt=rng.randrange(48),
        system=rng.random() < 0.3,
        wait_s=wait_s,
        events=rng.randint(1, max(1, max_tokens * n)),
        reset=rng.random() < 0.5,
        partial_body=kind == "abort_before_headers" and rng.random() < 0.25,
    )


# --- HTTP/1.1 on a raw socket -------------------------------------------------------------------


class Truncated(Exception):
    """The connection ended before the response did."""


class _Conn:
    """One request's connection, read only when and as much as its client chooses."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.loop = asyncio.get_running_loop()
        self.buf = bytearray()
        self.eof = False

    @classmethod
    async def open(cls, host: str, port: int, *, rcvbuf: int | None = None, mss: int | None = None) -> _Conn:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            if rcvbuf is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            if mss is not None:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, mss)
            await asyncio.get_running_loop().sock_connect(sock, (host, port))
        except BaseException:
            sock.close()
            raise
        return cls(sock)

    async def send(self, data: bytes) -> None:
        await self.loop.sock_sendall(self.sock, data)

    async def _fill(self, size: int) -> None:
        data = await self.loop.sock_recv(self.sock, size)
        if not data:
            self.eof = True
            raise Truncated(f"connection closed after {len(self.buf)} unread bytes")
        self.buf += data

    async def line(self, size: int = 65536) -> bytes:
        while (end := self.buf.find(b"\r\n")) < 0:
            await self._fill(size)
        line = bytes(self.buf[:end])
        del self.buf[: end + 2]
        return line

    async def exactly(self, count: int, size: int = 65536) -> bytes:
        while len(self.buf) < count:
            await self._fill(size)
        data = bytes(self.buf[:count])
        del self.buf[:count]
        return data

    async def rest(self, size: int = 65536) -> bytes:
        with contextlib.suppress(Truncated):
            while True:
                await self._fill(size)
        data = bytes(self.buf)
        self.buf.clear()
        return data

    def queued(self) -> int:
        """Bytes waiting in the kernel's receive queue, unread."""
        out = fcntl.ioctl(self.sock.fileno(), termios.FIONREAD, b"\0\0\0\0")
        value: int = struct.unpack("i", out)[0]
        return value

    def close(self, reset: bool = False) -> None:
        if reset:
            with contextlib.suppress(OSError):
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()


@dataclass
class _Head:
    status: int
    headers: dict[str, str]


async def _read_head(conn: _Conn) -> _Head:
    status_line = (await conn.line()).decode("latin-1")
    parts = status_line.split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        raise ValueError(f"bad status line {status_line!r}")
    headers: dict[str, str] = {}
    while line := await conn.line():
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    return _Head(int(parts[1]), headers)


async def _body_pieces(conn: _Conn, head: _Head, read_size: int = 65536) -> AsyncIterator[bytes]:
    """The body as it arrives: chunked, of a Content-Length, or up to the connection's end."""
    if head.headers.get("transfer-encoding", "").lower() == "chunked":
        while True:
            size = int((await conn.line(read_size)).split(b";")[0].strip(), 16)
            if size == 0:
                while await conn.line(read_size):  # trailers, then the blank line
                    pass
                return
            yield await conn.exactly(size, read_size)
            if await conn.exactly(2, read_size) != b"\r\n":
                raise ValueError("chunk not followed by CRLF")
    elif "content-length" in head.headers:
        yield await conn.exactly(int(head.headers["content-length"]), read_size)
    else:
        yield await conn.rest(read_size)


async def _sse_data(pieces: AsyncIterator[bytes]) -> AsyncIterator[str]:
    """The ``data`` of each server-sent event; comments (keep-alive pings) are skipped."""
    pending = b""
    async for piece in pieces:
        pending += piece.replace(b"\r\n", b"\n")
        while (end := pending.find(b"\n\n")) >= 0:
            block, pending = pending[:end], pending[end + 2 :]
            data = [line[5:].removeprefix(b" ") for line in block.split(b"\n") if line.startswith(b"data:")]
            if data:
                yield b"\n".join(data).decode()
    if pending.strip():
        raise ValueError(f"stream ended inside an event: {pending[:120]!r}")


def _request_bytes(plan: Plan, host: str, body: dict[str, Any]) -> bytes:
    payload = json.dumps(body).encode()
    path = "/v1/chat/completions" if plan.api == "chat" else "/v1/completions"
    accept = "text/event-stream" if plan.stream else "application/json"
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nAccept: {accept}\r\n"
        f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + payload


# --- Checking responses ----------------------------------------------------------------------------


class PromptLedger:
    """Prompt tokens each prompt was counted: the same prompt must always count the same."""

    def __init__(self) -> None:
        self.seen: dict[tuple[str, int, bool], int] = {}

    def check(self, plan: Plan, prompt_tokens: int) -> str | None:
        known = self.seen.setdefault(plan.prompt_key, prompt_tokens)
        if known != prompt_tokens:
            return f"prompt_tokens {prompt_tokens} for a prompt counted {known} before"
        return None


def _usage_errors(usage: Any, plan: Plan, reasons: dict[int, str], ledger: PromptLedger) -> list[str]:
    if not isinstance(usage, dict):
        return [f"usage is {usage!r}"]
    try:
        prompt, completion, total = (int(usage[k]) for k in ("prompt_tokens", "completion_tokens", "total_tokens"))
    except (KeyError, TypeError, ValueError):
        return [f"usage {usage!r} lacks a count"]
    errors = []
    if total != prompt + completion:
        errors.append(f"total_tokens {total} != {prompt} + {completion}")
    if prompt <= 0:
        errors.append(f"prompt_tokens {prompt}")
    most = plan.n * plan.max_tokens
    if not 0 < completion <= most:
        errors.append(f"completion_tokens {completion} outside 1..{most}")
    if (plan.fixed_length or all(r == "length" for r in reasons.values())) and completion != most:
        errors.append(f"completion_tokens {completion}, expected {most} (every choice ran to max_tokens)")
    if (mismatch := ledger.check(plan, prompt)) is not None:
        errors.append(mismatch)
    return errors


def _reason_errors(plan: Plan, reasons: dict[int, str]) -> list[str]:
    errors = []
    if sorted(reasons) != list(range(plan.n)):
        errors.append(f"finish_reason for choices {sorted(reasons)}, expected 0..{plan.n - 1}")
    for index, reason in reasons.items():
        if reason not in ("stop", "length"):
            errors.append(f"choice {index} finish_reason {reason!r}")
        elif plan.fixed_length and reason != "length":
            errors.append(f"choice {index} finished with {reason!r} though ignore_eos")
    return errors


class StreamCheck:
    """Checks a stream's events one by one, and the whole at its end."""

    def __init__(self, plan: Plan, model: str, ledger: PromptLedger) -> None:
        self.plan, self.model, self.ledger = plan, model, ledger
        self.object = "chat.completion.chunk" if plan.api == "chat" else "text_completion"
        self.ids: set[str] = set()
        self.reasons: dict[int, str] = {}
        self.started: set[int] = set()
        self.usage: Any = None
        self.usage_last = False
        self.done = False
        self.events = 0
        self.errors: list[str] = []

    def take(self, data: str) -> bool:
        """Check one event; whether it carried text."""
        self.events += 1
        if self.done:
            self.errors.append("data after [DONE]")
            return False
        if data == "[DONE]":
            self.done = True
            return False
        try:
            chunk = json.loads(data)
        except json.JSONDecodeError:
            self.errors.append(f"event is not JSON: {data[:120]!r}")
            return False
        if not isinstance(chunk, dict) or "error" in chunk:
            self.errors.append(f"error event: {data[:200]}")
            return False
        if self.usage_last:
            self.errors.append("a chunk after the usage chunk")
        self.ids.add(str(chunk.get("id")))
        if chunk.get("object") != self.object or chunk.get("model") != self.model:
            self.errors.append(f"chunk object/model {chunk.get('object')!r}/{chunk.get('model')!r}")
        if self.plan.include_usage:
            if "usage" not in chunk:
                self.errors.append("chunk without a usage field though include_usage")
            elif chunk["usage"] is not None:
                self.usage, self.usage_last = chunk["usage"], True
                if chunk.get("choices"):
                    self.errors.append("the usage chunk has choices")
        elif "usage" in chunk:
            self.errors.append("usage field without include_usage")
        text = False
        for choice in chunk.get("choices") or []:
            text = self._choice(choice) or text
        return text

    def _choice(self, choice: dict[str, Any]) -> bool:
        index = choice.get("index")
        if not isinstance(index, int) or not 0 <= index < self.plan.n:
            self.errors.append(f"choice index {index!r}")
            return False
        if index in self.reasons:
            self.errors.append(f"choice {index} continued after its finish_reason")
        if self.plan.api == "chat":
            delta = choice.get("delta")
            if not isinstance(delta, dict):
                self.errors.append(f"choice {index} without a delta")
                return False
            if index not in self.started and delta.get("role") != "assistant":
                self.errors.append(f"choice {index}'s first delta has no assistant role")
            content = delta.get("content")
        else:
            content = choice.get("text")
        self.started.add(index)
        if content is not None and not isinstance(content, str):
            self.errors.append(f"choice {index} content {content!r}")
        if (reason := choice.get("finish_reason")) is not None:
            self.reasons[index] = str(reason)
        return bool(content)

    def finish(self) -> list[str]:
        errors = list(self.errors)
        if not self.done:
            errors.append("no [DONE]")
        if len(self.ids) != 1:
            errors.append(f"chunk ids {sorted(self.ids)[:3]}")
        errors += _reason_errors(self.plan, self.reasons)
        if self.plan.include_usage:
            if not self.usage_last:
                errors.append("no usage chunk though include_usage")
            else:
                errors += _usage_errors(self.usage, self.plan, self.reasons, self.ledger)
        return errors


def whole_errors(plan: Plan, head: _Head, body: bytes, model: str, ledger: PromptLedger) -> list[str]:
    """What is wrong with a non-streamed response, if anything."""
    if not head.headers.get("content-type", "").startswith("application/json"):
        return [f"content-type {head.headers.get('content-type')!r}"]
    try:
        response = json.loads(body)
    except json.JSONDecodeError:
        return [f"body is not JSON: {body[:120]!r}"]
    expected = "chat.completion" if plan.api == "chat" else "text_completion"
    if not isinstance(response, dict) or response.get("object") != expected or response.get("model") != model:
        return [f"not a {expected} of {model}: {body[:200]!r}"]
    errors = []
    if not response.get("id"):
        errors.append("no id")
    choices = response.get("choices") or []
    reasons: dict[int, str] = {}
    for choice in choices:
        index = choice.get("index")
        if not isinstance(index, int) or index in reasons:
            errors.append(f"choice index {index!r}")
            continue
        reasons[index] = str(choice.get("finish_reason"))
        if plan.api == "chat":
            message = choice.get("message") or {}
            if message.get("role") != "assistant" or not isinstance(message.get("content"), str):
                errors.append(f"choice {index} message {message!r}")
        elif not isinstance(choice.get("text"), str):
            errors.append(f"choice {index} text {choice.get('text')!r}")
    errors += _reason_errors(plan, reasons)
    errors += _usage_errors(response.get("usage"), plan, reasons, ledger)
    return errors


# --- Running one request ---------------------------------------------------------------------------


class _Client:
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
        conn = await _Conn.open(
            self.host, self.port, rcvbuf=1024 if stalled else 4096 if slow else None, mss=536 if stalled else None
        )
        request = _request_bytes(plan, f"{self.host}:{self.port}", plan.body(self.target.model, self.prompts))
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
                self._judge(outcome, whole_errors(plan, head, body, self.target.model, self.ledger), "finished_first")
                return
            head = await _read_head(conn)
            if head.status != 200:
                body = await conn.rest()
                outcome.result, outcome.detail = "error", f"HTTP {head.status}: {body[:300]!r}"
                return
            if not plan.stream:
                body = b"".join([piece async for piece in _body_pieces(conn, head)])
                self._judge(outcome, whole_errors(plan, head, body, self.target.model, self.ledger), "ok")
                return
            await self._stream(plan, conn, head, outcome, started)
        finally:
            conn.close(reset=plan.reset)

    async def _whole(self, conn: _Conn) -> tuple[_Head, bytes]:
        head = await _read_head(conn)
        return head, b"".join([piece async for piece in _body_pieces(conn, head)])

    async def _stream(self, plan: Plan, conn: _Conn, head: _Head, outcome: Outcome, started: float) -> None:
        if not head.headers.get("content-type", "").startswith("text/event-stream"):
            outcome.result, outcome.detail = "malformed", f"content-type {head.headers.get('content-type')!r}"
            return
        check = StreamCheck(plan, self.target.model, self.ledger)
        slow = plan.kind == "slow_reader"
        try:
            async for data in _sse_data(_body_pieces(conn, head, read_size=256 if slow else 65536)):
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
        ``_run_phase``), so the first drop counted is this one.
        """
        start = time.monotonic()
        before = await self._send_timeouts()
        while time.monotonic() - start < self.options.stall_max_s:
            await asyncio.sleep(0.5)
            if await self._send_timeouts() > before:
                return

    async def _send_timeouts(self) -> float:
        return (await scrape(self.http, self.target.root_url)).get(SEND_TIMEOUTS, 0.0)

    @staticmethod
    def _judge(outcome: Outcome, errors: list[str], result: Result) -> None:
        if errors:
            outcome.result, outcome.detail = "malformed", "; ".join(errors)[:500]
        else:
            outcome.result = result


# --- The server's side: metrics, memory, log ----------------------------------------------------


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


# --- The run ---------------------------------------------------------------------------------------------


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


async def _run_phase(
    client: _Client,
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
        client = _Client(target, options, prompts, http)
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
    report.checks = _checks(report, health, log_errors(target.log_path, log_offset))
    return report


def _phase_line(phase: Phase) -> str:
    tally = Counter(o.result for o in phase.outcomes)
    rss = f", RSS {phase.rss_after / 2**20:.0f} MiB" if phase.rss_after is not None else ""
    return (
        f"{phase.name}: {len(phase.outcomes)}/{phase.planned} requests in {phase.duration_s:.0f} s "
        f"({', '.join(f'{k} {v}' for k, v in sorted(tally.items()))}); idle again after {phase.settle_s:.1f} s"
        f"{'' if phase.idle else ' (NOT idle)'}{rss}"
    )


def _checks(report: SoakReport, health: int, errors: list[str]) -> list[Check]:
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


# --- Reporting ---------------------------------------------------------------------------------------------


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
    out.mkdir(parents=True, exist_ok=True)
    (out / "soak.json").write_text(json.dumps({**meta, **report.to_dict()}, indent=1, allow_nan=True))
    text = markdown(report, meta)
    (out / "soak.md").write_text(text)
    return text
