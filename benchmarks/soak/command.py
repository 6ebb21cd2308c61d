"""``ise bench soak``'s flags, and the command: start ise (or take a running server), soak it, report.

The exit status says whether every check passed, so a CI job can run the soak as a test.
"""

from __future__ import annotations

import argparse
import asyncio

from benchmarks import flags
from benchmarks.save import jsonable, meta
from benchmarks.soak.observe import SoakTarget
from benchmarks.soak.plans import SoakOptions
from benchmarks.soak.report import save
from benchmarks.soak.run import run_soak
from benchmarks.targets import TargetConfig, ise_server

HELP = "many requests, a fifth abandoned: the server must come back clean"
_D = SoakOptions()
# The server started here gets little KV cache: a leak then shows plainly in its memory growth.
PARENT = flags.parent(
    "endpoint", "model-dir", "dtype", "kv-cache-gib", "max-num-seqs", "max-tokens", "warmup", "max-duration", "seed",
    "out",
    optional_endpoint=True, dtype="float32", kv_cache_gib=0.5, max_tokens=_D.max_tokens, warmup=_D.warmup,
    max_duration=_D.max_duration_s, seed=_D.seed, out=flags.DEFAULT_OUT / "soak",
)  # fmt: skip


def add_cli_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--server-pid", type=int, help="process id of the --base-url server, to watch its memory")
    parser.add_argument("--requests", type=int, default=_D.requests, help="requests after the warm-up")
    parser.add_argument("--concurrency", type=int, default=_D.concurrency, help="requests in flight at once")
    parser.add_argument("--disconnect-fraction", type=float, default=_D.disconnect_fraction)
    parser.add_argument("--slow-fraction", type=float, default=_D.slow_fraction)
    parser.add_argument("--stalled-fraction", type=float, default=_D.stalled_fraction)
    parser.add_argument("--min-tokens", type=int, default=_D.min_tokens, help="output tokens per choice, at least")
    parser.add_argument(
        "--stream-send-timeout", type=float, default=_D.send_timeout_s,
        help="the server's --stream-send-timeout (set on the server started here)",
    )  # fmt: skip
    parser.add_argument("--request-timeout", type=float, default=_D.request_timeout_s, help="a request past it hangs")
    parser.add_argument("--rss-growth", type=float, default=_D.rss_growth, help="allowed growth of resident memory")


def main(args: argparse.Namespace) -> None:
    asyncio.run(_main(args))


async def _main(args: argparse.Namespace) -> None:
    options = SoakOptions(
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
    info = meta()
    if args.base_url:
        if not args.model:
            raise SystemExit("--base-url needs --model")
        root = args.base_url.rstrip("/").removesuffix("/v1")
        info["server"] = args.base_url
        report = await run_soak(SoakTarget(root, args.model, args.server_pid), options)
    else:
        config = TargetConfig(
            model_dir=flags.model_dir(args), dtype=args.dtype, log_dir=args.out / "logs", max_num_seqs=args.max_num_seqs
        )
        extra = ["--kv-cache-gib", str(args.kv_cache_gib), "--stream-send-timeout", str(args.stream_send_timeout)]
        info["server"] = "ise serve " + " ".join(
            ["--dtype", args.dtype, "--max-num-seqs", str(args.max_num_seqs), *extra]
        )
        async with ise_server(config, *extra, name="soak-server") as server:
            print(f"ise serve up at {server.root_url} (pid {server.pid})", flush=True)
            target = SoakTarget(server.root_url, server.model, server.pid, server.log_path)
            report = await run_soak(target, options)
    save(report, {**info, "args": jsonable(vars(args))}, args.out)
    if not report.passed:
        raise SystemExit(1)
