"""``ise bench structured``: what structured outputs (``response_format: json_schema``) cost.

One ``ise serve`` answers the same chat requests twice per pass, once as they are ("plain") and
once with a JSON schema ("schema"), at each load level (closed-loop streams), ``--repeats``
passes over, alternating which mode goes first so a slow spell of a shared machine hits both
alike. The schema is a realistic one: a nested object, an array of strings, an enum, a bounded
integer and a string with a pattern.

A schema cannot be held to a fixed output length (the grammar ends the answer), so neither mode
is: both are asked for at most ``max_tokens`` and stop where the model (or the grammar) stops.
Throughput is output tokens (``usage.completion_tokens``) per second of the level's wall time;
TTFT and ITL come from the stream, as in every other ise benchmark. Every schema answer is
parsed and validated against the schema (the plain answers too, to show what the schema buys).

Warm-up sends one plain request, then one schema request alone: the first schema request builds
xgrammar's compiler from the tokenizer and compiles the schema (the cost a server pays once per
schema, then cached), and its TTFT is reported apart; the timed passes are all warm.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import statistics
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from jsonschema.validators import validator_for
from matplotlib.figure import Figure

from adapters.cpu.numerics import resolve_dtype
from benchmarks import flags
from benchmarks.clients import HttpClient
from benchmarks.loadgen import LoadShape, run_load
from benchmarks.metrics import SLO, Distribution, RequestRecord, Summary, summarize
from benchmarks.save import COLORS, meta, save_result, subplots
from benchmarks.targets import TargetConfig, ise_server
from benchmarks.workloads import RequestSpec

Mode = Literal["plain", "schema"]
MODES: tuple[Mode, Mode] = ("plain", "schema")

OCCUPATIONS = ["engineer", "teacher", "artist", "doctor", "farmer", "chef", "other"]

PERSON_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "minLength": 1, "maxLength": 40},
        "age": {"type": "integer", "minimum": 18, "maximum": 99},
        "occupation": {"type": "string", "enum": OCCUPATIONS},
        "email": {"type": "string", "pattern": r"^[a-z]{1,12}\.[a-z]{1,12}@[a-z]{2,10}\.(com|org|net)$"},
        "address": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "minLength": 1, "maxLength": 30},
                "country": {"type": "string", "minLength": 1, "maxLength": 30},
            },
            "required": ["city", "country"],
            "additionalProperties": False,
        },
        "hobbies": {
            "type": "array",
            "items": {"type": "string", "minLength": 1, "maxLength": 30},
            "minItems": 1,
            "maxItems": 3,
        },
    },
    "required": ["name", "age", "occupation", "email", "address", "hobbies"],
    "additionalProperties": False,
}

RESPONSE_FORMAT: dict[str, Any] = {
    "type": "json_schema",
    "json_schema": {"name": "person", "schema": PERSON_SCHEMA},
}

SYSTEM_PROMPT = (
    "You answer with a single JSON object and nothing else. Its keys: name, age (an integer), "
    f"occupation (one of {', '.join(OCCUPATIONS)}), email (like first.last@example.com), "
    "address (an object with city and country) and hobbies (a list of one to three strings)."
)

_AGES = ["young", "middle-aged", "retired", "thirty-year-old", "elderly", "cheerful", "quiet", "ambitious"]
_JOBS = ["baker", "nurse", "pilot", "painter", "farmer", "teacher", "engineer", "chef", "doctor", "musician"]
_PLACES = ["Lisbon", "Osaka", "Nairobi", "Toronto", "Oslo", "Lima", "Hanoi", "Cairo", "Perth", "Munich", "Quito"]
_LIKES = ["chess", "sailing", "birds", "old maps", "jazz", "gardening", "running", "poetry", "puzzles"]

Verdict = Literal["valid", "schema_violation", "not_json", "cut_at_max_tokens", "failed"]
VERDICTS: tuple[Verdict, ...] = ("valid", "schema_violation", "not_json", "cut_at_max_tokens", "failed")


@dataclass(frozen=True)
class StructuredOptions:
    concurrency: tuple[int, ...] = (1, 32)
    prompts_per_stream: int = 2  # requests per level: max(min_prompts, this x streams)
    min_prompts: int = 6
    max_tokens: int = 128
    warmup: int = 8  # after the two lone first requests; half of them with the schema
    repeats: int = 2
    seed: int = 0

    def requests(self, concurrency: int) -> int:
        return max(self.min_prompts, self.prompts_per_stream * concurrency)


def person_prompts(count: int, seed: int) -> list[str]:
    """``count`` varied user turns asking for a fictional person (different ones per seed)."""
    rng = random.Random(seed)
    return [
        f"Describe a fictional person as JSON: a {rng.choice(_AGES)} {rng.choice(_JOBS)} from "
        f"{rng.choice(_PLACES)} who likes {rng.choice(_LIKES)}."
        for _ in range(count)
    ]


def chat_specs(prompts: list[str], mode: Mode, max_tokens: int) -> list[RequestSpec]:
    """The chat requests, with the schema as ``response_format`` or without; never a fixed length."""
    extra = {"response_format": RESPONSE_FORMAT} if mode == "schema" else None
    return [
        RequestSpec(
            api="chat",
            messages=[{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": prompt}],
            max_tokens=max_tokens,
            fixed_length=False,
            extra_body=extra,
        )
        for prompt in prompts
    ]


def verdict(record: RequestRecord, schema: dict[str, Any] = PERSON_SCHEMA) -> Verdict:
    """Whether the answer parses as JSON and validates against ``schema``.

    An answer that does not parse and was cut at max_tokens is counted as cut, not as malformed:
    the grammar cannot end an answer the length limit ends first.
    """
    if not record.ok or record.text is None:
        return "failed"
    try:
        value = json.loads(record.text)
    except ValueError:
        return "cut_at_max_tokens" if record.finish_reason == "length" else "not_json"
    validator = validator_for(schema)(schema)
    return "valid" if validator.is_valid(value) else "schema_violation"


def count_verdicts(records: list[RequestRecord], schema: dict[str, Any] = PERSON_SCHEMA) -> dict[str, int]:
    """Every verdict's count (zeros included, in ``VERDICTS`` order)."""
    found = Counter(verdict(r, schema) for r in records)
    return {v: found.get(v, 0) for v in VERDICTS}


def valid_fraction(counts: dict[str, int]) -> float:
    total = sum(counts.values())
    return counts.get("valid", 0) / total if total else math.nan


@dataclass
class Pass:
    """One mode at one load level in one pass: its requests and the wall time they took."""

    mode: Mode
    concurrency: int
    repeat: int
    records: list[RequestRecord]
    duration_s: float

    def summary(self) -> Summary:
        return summarize(self.records, self.duration_s, SLO())

    def verdicts(self) -> dict[str, int]:
        return count_verdicts(self.records)


@dataclass(frozen=True)
class LevelRow:
    """One load level's figures: each mode's throughput (median pass), pooled latencies and validity."""

    concurrency: int
    tok_s: dict[Mode, float]  # median over passes
    tok_s_passes: dict[Mode, list[float]]
    ratios: list[float]  # schema / plain, per pass (both modes of one pass)
    ttft_p50: dict[Mode, float]  # seconds, over every request of every pass
    itl_p50: dict[Mode, float]
    tpot_p50: dict[Mode, float]
    output_tokens_mean: dict[Mode, float]
    verdicts: dict[Mode, dict[str, int]]

    @property
    def ratio(self) -> float:
        return statistics.median(self.ratios) if self.ratios else math.nan


def _p50(passes: list[Pass], values: Callable[[RequestRecord], list[float]]) -> float:
    """The median over every completed request of ``passes``."""
    return Distribution.of([v for p in passes for r in p.records if r.ok for v in values(r)]).p50


def level_rows(passes: list[Pass]) -> list[LevelRow]:
    rows = []
    for level in sorted({p.concurrency for p in passes}):
        mine = [p for p in passes if p.concurrency == level]
        by_mode = {m: [p for p in mine if p.mode == m] for m in MODES}
        tput = {m: [p.summary().output_throughput for p in ps] for m, ps in by_mode.items()}
        ratios = []
        for repeat in sorted({p.repeat for p in mine}):
            pair = {p.mode: p.summary().output_throughput for p in mine if p.repeat == repeat}
            if pair.get("plain") and "schema" in pair:
                ratios.append(pair["schema"] / pair["plain"])
        rows.append(
            LevelRow(
                concurrency=level,
                tok_s={m: statistics.median(v) if v else math.nan for m, v in tput.items()},
                tok_s_passes=tput,
                ratios=ratios,
                ttft_p50={m: _p50(ps, lambda r: [] if r.ttft is None else [r.ttft]) for m, ps in by_mode.items()},
                itl_p50={m: _p50(ps, lambda r: r.itls) for m, ps in by_mode.items()},
                tpot_p50={m: _p50(ps, lambda r: [] if r.tpot is None else [r.tpot]) for m, ps in by_mode.items()},
                output_tokens_mean={
                    m: Distribution.of([float(r.output_tokens) for p in ps for r in p.records if r.ok]).mean
                    for m, ps in by_mode.items()
                },
                verdicts={m: count_verdicts([r for p in ps for r in p.records]) for m, ps in by_mode.items()},
            )
        )
    return rows


def _ms(seconds: float) -> str:
    return "—" if math.isnan(seconds) else f"{seconds * 1e3:.1f}" if seconds < 0.1 else f"{seconds * 1e3:.0f}"


def _pct(counts: dict[str, int]) -> str:
    fraction = valid_fraction(counts)
    total = sum(counts.values())
    return "—" if math.isnan(fraction) else f"{fraction:.0%} ({counts['valid']}/{total})"


def table(rows: list[LevelRow]) -> str:
    """The Markdown table: tok/s plain vs schema and their ratio, latencies, validity."""
    lines = [
        "| streams | plain tok/s | schema tok/s | schema / plain (each pass) | TTFT p50 ms plain / schema "
        "| ITL p50 ms plain / schema | TPOT p50 ms plain / schema | output tokens mean plain / schema "
        "| valid: schema | valid: plain (no schema sent) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        each = ", ".join(f"{r:.2f}" for r in row.ratios)
        lines.append(
            f"| {row.concurrency} | {row.tok_s['plain']:.1f} | {row.tok_s['schema']:.1f} "
            f"| **{row.ratio:.2f}x** ({each}) | {_ms(row.ttft_p50['plain'])} / {_ms(row.ttft_p50['schema'])} "
            f"| {_ms(row.itl_p50['plain'])} / {_ms(row.itl_p50['schema'])} "
            f"| {_ms(row.tpot_p50['plain'])} / {_ms(row.tpot_p50['schema'])} "
            f"| {row.output_tokens_mean['plain']:.0f} / {row.output_tokens_mean['schema']:.0f} "
            f"| **{_pct(row.verdicts['schema'])}** | {_pct(row.verdicts['plain'])} |"
        )
    return "\n".join(lines) + "\n"


def verdict_table(rows: list[LevelRow]) -> str:
    """How every answer fared, per level and mode."""
    lines = ["| streams | mode | " + " | ".join(VERDICTS) + " |", "|---|---|" + "---|" * len(VERDICTS)]
    for row in rows:
        for mode in MODES:
            counts = row.verdicts[mode]
            lines.append(f"| {row.concurrency} | {mode} | " + " | ".join(str(counts[v]) for v in VERDICTS) + " |")
    return "\n".join(lines) + "\n"


def markdown(rows: list[LevelRow], options: StructuredOptions, meta: dict[str, Any]) -> str:
    m = meta["machine"]
    levels = ", ".join(f"{c} stream{'s' if c > 1 else ''}: {options.requests(c)} requests" for c in options.concurrency)
    cold = meta.get("first_schema_request")
    lines = [
        "# The cost of structured outputs: the same chat requests with and without a JSON schema",
        "",
        f"- Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB RAM; ise {m['ise_commit']}; "
        f"{meta.get('date', '')}",
        f"- Server: `{meta['server']}`",
        f"- Load: closed-loop, per pass and mode {levels}; at most {options.max_tokens} output tokens, greedy, "
        f"no fixed length; {options.repeats} passes, alternating which mode goes first",
        "- Schema: `response_format` json_schema `person` (nested object, array of strings, enum, bounded "
        "integer, string with a pattern); throughput = usage.completion_tokens per second of the level's wall "
        "time; TTFT / ITL / TPOT p50 over every request of every pass",
        f"- Command: `{meta['command']}`",
        "",
        table(rows),
        verdict_table(rows),
    ]
    if cold:
        lines.append(
            f"First schema request after start (builds xgrammar's compiler and compiles the schema, once): TTFT "
            f"{_ms(cold['ttft_s'])} ms, against {_ms(cold['plain_ttft_s'])} ms for the plain request just before it."
        )
        lines.append("")
    return "\n".join(lines)


def plot(rows: list[LevelRow]) -> Figure:
    """Throughput, TTFT p50 and ITL p50 per load level, plain beside schema."""
    charts: list[tuple[str, str, Callable[[LevelRow, Mode], float]]] = [
        ("Output throughput", "tokens/s", lambda r, m: r.tok_s[m]),
        ("TTFT p50", "ms", lambda r, m: r.ttft_p50[m] * 1e3),
        ("ITL p50", "ms", lambda r, m: r.itl_p50[m] * 1e3),
    ]
    colors = {"plain": COLORS[0], "schema": COLORS[1]}
    fig, axes = subplots(1, len(charts), figsize=(13, 4.2))
    width = 0.38
    for ax, (title, unit, value) in zip(axes, charts, strict=True):
        for i, mode in enumerate(MODES):
            xs = [j + (i - 0.5) * width for j in range(len(rows))]
            ax.bar(xs, [value(r, mode) for r in rows], width=width, color=colors[mode], label=mode)
        ax.set_xticks(range(len(rows)), [f"{r.concurrency} stream{'s' if r.concurrency > 1 else ''}" for r in rows])
        ax.set_ylabel(unit)
        ax.set_title(title)
        ax.grid(True, axis="y", alpha=0.3)
        ax.legend(fontsize=8)
    for j, row in enumerate(rows):
        axes[0].annotate(f"{row.ratio:.2f}x", (j, max(row.tok_s.values())), ha="center", va="bottom", fontsize=8)
    fig.suptitle("Structured outputs (JSON schema) against plain chat, same requests", fontsize=10)
    return fig


def save(passes: list[Pass], options: StructuredOptions, info: dict[str, Any], out: Path) -> str:
    """Write the table, every request's record as JSON and the plot; return the table."""
    rows = level_rows(passes)
    text = markdown(rows, options, info)
    payload = {
        **info,
        "options": asdict(options),
        "schema": PERSON_SCHEMA,
        "system_prompt": SYSTEM_PROMPT,
        "levels": [{**asdict(row), "ratio": row.ratio} for row in rows],
        "passes": [
            {
                "mode": p.mode,
                "concurrency": p.concurrency,
                "repeat": p.repeat,
                "duration_s": p.duration_s,
                "summary": p.summary().to_dict(),
                "verdicts": p.verdicts(),
                "records": [asdict(r) for r in p.records],
            }
            for p in passes
        ],
    }
    save_result(out, "structured", payload, text, {"structured": plot(rows)}, json_name="results.json")
    return text


async def warm_up(client: HttpClient, options: StructuredOptions) -> dict[str, float | None]:
    """A lone plain request, a lone schema request (the compile), then a few of each; returns the lone TTFTs."""
    prompts = person_prompts(1 + options.warmup // 2, options.seed + 10_000)
    plain = await client.send(chat_specs(prompts[:1], "plain", options.max_tokens)[0])
    schema = await client.send(chat_specs(prompts[:1], "schema", options.max_tokens)[0])
    for record in (plain, schema):
        if not record.ok:
            raise RuntimeError(f"warm-up request failed: {record.error}")
    rest = prompts[1:]
    specs = chat_specs(rest, "plain", options.max_tokens) + chat_specs(rest, "schema", options.max_tokens)
    await run_load(client, specs, LoadShape(concurrency=max(len(specs), 1)), desc="warm-up")
    return {"ttft_s": schema.ttft, "latency_s": schema.latency, "plain_ttft_s": plain.ttft}


async def measure(
    client: HttpClient, options: StructuredOptions, report: Callable[[Pass], None] = lambda p: None
) -> list[Pass]:
    """Every pass: per load level, plain and schema on the same prompts, which first alternating by pass."""
    passes = []
    for repeat in range(options.repeats):
        for index, level in enumerate(options.concurrency):
            # New prompts each pass, so a pass is not served from the prefix cache the one before filled.
            prompts = person_prompts(options.requests(level), options.seed + 1000 * repeat + index)
            for mode in MODES if repeat % 2 == 0 else MODES[::-1]:
                specs = chat_specs(prompts, mode, options.max_tokens)
                result = await run_load(client, specs, LoadShape(concurrency=level), desc=f"{mode} x{level}")
                passes.append(Pass(mode, level, repeat, result.records, result.duration_s))
                report(passes[-1])
    return passes


HELP = "the same chat requests with and without a JSON schema"
_D = StructuredOptions()
PARENT = flags.parent(
    "model-dir", "dtype", "max-num-seqs", "kv-cache-gib", "prompts-per-stream", "min-prompts", "max-tokens",
    "warmup", "repeats", "seed", "out",
    dtype="float32", prompts_per_stream=_D.prompts_per_stream, min_prompts=_D.min_prompts,
    max_tokens=_D.max_tokens, warmup=_D.warmup, repeats=_D.repeats, seed=_D.seed,
    out=flags.DEFAULT_OUT / "structured",
)  # fmt: skip


def add_cli_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--concurrency", type=int, nargs="+", default=list(_D.concurrency), help="streams per level")


def main(args: argparse.Namespace) -> None:
    asyncio.run(_main(args))


async def _main(args: argparse.Namespace) -> None:
    dtype = str(resolve_dtype(args.dtype)).removeprefix("torch.")
    options = StructuredOptions(
        concurrency=tuple(args.concurrency),
        prompts_per_stream=args.prompts_per_stream,
        min_prompts=args.min_prompts,
        max_tokens=args.max_tokens,
        warmup=args.warmup,
        repeats=args.repeats,
        seed=args.seed,
    )
    config = TargetConfig(
        model_dir=flags.model_dir(args), dtype=dtype, log_dir=args.out / "logs", max_num_seqs=args.max_num_seqs
    )
    extra = ["--kv-cache-gib", str(args.kv_cache_gib)] if args.kv_cache_gib else []
    info = {
        **meta(args=vars(args)),
        "date": time.strftime("%Y-%m-%d"),
        "server": " ".join(["ise serve --dtype", dtype, "--max-num-seqs", str(args.max_num_seqs), *extra]),
    }

    def report(p: Pass) -> None:
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
            info["first_schema_request"] = await warm_up(client, options)
            passes = await measure(client, options, report)
        finally:
            await client.aclose()
    save(passes, options, info, args.out)
