"""The load generator and ``ise bench run`` against the real test server, on a handful of requests."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from transformers import AutoTokenizer

from benchmarks.clients import HttpClient
from benchmarks.interference import measure, save
from benchmarks.loadgen import LoadShape, run_load
from benchmarks.workloads import random_workload, shared_prefix_workload
from tests.real.helpers import ServerHandle


async def test_every_request_is_accounted_for(server: ServerHandle) -> None:
    tokenizer = AutoTokenizer.from_pretrained(server.model_dir)
    specs = random_workload(tokenizer, count=5, input_len=24, output_len=12, seed=3)
    assert specs == random_workload(tokenizer, count=5, input_len=24, output_len=12, seed=3), "seeded workloads repeat"
    specs += shared_prefix_workload(tokenizer, count=2, prefix_len=40, input_len=8, output_len=12, seed=3)
    client = HttpClient(server.base_url, server.model)
    try:
        closed = await run_load(client, specs, LoadShape(concurrency=3))
        poisson = await run_load(client, specs, LoadShape(rate=20.0, seed=1))
    finally:
        await client.aclose()
    for result in (closed, poisson):
        assert len(result.records) == len(specs)
        assert all(r.ok for r in result.records), [r.error for r in result.records]
        assert all(r.output_tokens == 12 for r in result.records)
        assert all(r.prompt_tokens > 0 for r in result.records)
        assert all(r.ttft is not None and 0 < r.ttft <= r.latency for r in result.records)
        assert all(0 < len(r.chunk_times) <= 12 for r in result.records)
        assert result.duration_s >= max(r.latency for r in result.records)


def test_bench_run_command_writes_results(server: ServerHandle, tmp_path: Path) -> None:
    out = tmp_path / "bench"
    cmd = [
        sys.executable, "-m", "ise", "bench", "run", "--base-url", server.base_url, "--model", server.model,
        "--model-dir", str(server.model_dir), "--concurrency", "1", "2", "--input-len", "16", "--output-len", "6",
        "--min-prompts", "3", "--warmup", "1", "--out", str(out),
    ]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    data = json.loads((out / "results.json").read_text())
    assert [run["concurrency"] for run in data["runs"]] == [1, 2]
    assert [len(run["records"]) for run in data["runs"]] == [3, 4]
    assert all(run["summary"]["completed"] == len(run["records"]) for run in data["runs"])
    assert data["machine"]["cores"] >= 1 and data["machine"]["cpu"]
    table = (out / "table.md").read_text()
    assert table.count("\n") == 4 and "output tok/s" in table
    for plot in ("throughput.png", "ttft.png", "itl.png"):
        assert (out / plot).read_bytes()[:4] == b"\x89PNG"


async def test_interference_measures_the_streams_around_a_long_prompt(server: ServerHandle, tmp_path: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(server.model_dir)
    client = HttpClient(server.base_url, server.model)
    try:
        result = await measure(client, tokenizer, streams=2, prompt_len=300, stream_output=120, seed=5)
    finally:
        await client.aclose()
    save(result, tmp_path)
    assert result.streams == 2 and result.long_prompt_tokens >= 300
    assert len(result.gaps) == 2 * 119, "every stream's every gap between its 120 tokens"
    start, first_token = result.prefill_window
    assert 0 < start < first_token and result.long_prompt_ttft_s > 0
    assert result.itl_p50_ms > 0 and 0 < result.itl_p50_during_ms <= result.itl_p99_during_ms
    assert (tmp_path / "interference.png").stat().st_size > 0
    assert json.loads((tmp_path / "interference.json").read_text())["streams"] == 2


def test_static_batch_command_times_batched_generate(server: ServerHandle, tmp_path: Path) -> None:
    out = tmp_path / "static"
    cmd = [
        sys.executable, "-m", "ise", "bench", "static", "--model-dir", str(server.model_dir),
        "--batch", "1", "3", "--input-len", "16", "--output-len", "5", "--dtype", "float32", "--out", str(out),
    ]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    data = json.loads((out / "static.json").read_text())
    # Every row of the batch generated exactly the asked-for tokens, padding or not.
    assert [(r["batch"], r["output_tokens"]) for r in data["results"]] == [(1, 5), (3, 15)]
    assert all(r["throughput"] > 0 for r in data["results"])
    assert "| 3 | 16 | 5 | no |" in (out / "static.md").read_text()
    assert (out / "static.png").read_bytes()[:4] == b"\x89PNG"


def test_static_batch_command_can_decode_through_torch_compile(server: ServerHandle, tmp_path: Path) -> None:
    """The measurement behind not compiling the engine stays runnable: inductor compiles on this CPU."""
    out = tmp_path / "static"
    cmd = [
        sys.executable, "-m", "ise", "bench", "static", "--model-dir", str(server.model_dir),
        "--batch", "2", "--input-len", "16", "--output-len", "5", "--dtype", "float32", "--compile",
        "--out", str(out),
    ]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    data = json.loads((out / "static.json").read_text())
    assert [(r["batch"], r["output_tokens"], r["compiled"]) for r in data["results"]] == [(2, 10, False), (2, 10, True)]
    table = (out / "static.md").read_text()
    assert "| 2 | 16 | 5 | no |" in table and "| 2 | 16 | 5 | yes |" in table


def test_step_command_times_each_model_implementation(server: ServerHandle, tmp_path: Path) -> None:
    out = tmp_path / "step"
    cmd = [
        sys.executable, "-m", "ise", "bench", "step", "--model-dir", str(server.model_dir),
        "--model-impl", "ise", "transformers", "--batch", "1", "2", "--prompt-len", "16", "--steps", "4",
        "--dtype", "float32", "--repeats", "2", "--out", str(out),
    ]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("(median of 2)") == 4
    rows = json.loads((out / "step.json").read_text())["results"]
    assert [(r["impl"], r["batch"]) for r in rows] == [("ise", 1), ("ise", 2), ("transformers", 1), ("transformers", 2)]
    assert all(r["decode_step_ms"] > 0 and r["prefill_tokens_per_s"] > 0 for r in rows)
    assert (out / "step.md").read_text().count("\n") == 6
    assert (out / "step.png").read_bytes()[:4] == b"\x89PNG"


def test_limits_command_rates_a_run_against_this_machines_ceiling(server: ServerHandle, tmp_path: Path) -> None:
    results = tmp_path / "results.json"
    results.write_text(
        json.dumps({"runs": [{"target": "ise", "concurrency": 32, "summary": {"output_throughput": 50}}]})
    )
    out = tmp_path / "limits"
    cmd = [
        sys.executable, "-m", "ise", "bench", "limits", "--model-dir", str(server.model_dir),
        "--dtype", "float32", "--results", str(results), "--out", str(out),
    ]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    data = json.loads((out / "limits.json").read_text())
    found = data["limits"]
    assert found["memory_gb_s"] > 0.5 and found["gemm_gflop_s"] > 1
    assert found["cost"]["weight_bytes"] == 4 * 134_479_872  # SmolLM2-135M's matrices, the embedding tied
    ceiling = data["ceilings"]["32"]
    assert ceiling > 50
    rows = (out / "limits.md").read_text().splitlines()
    assert f"| 32 | {ceiling:.0f} | 50.0 ({50 / ceiling:.0%}) |" in rows


def test_compare_alternates_targets_over_repeats_and_reports_each_median(server: ServerHandle, tmp_path: Path) -> None:
    out, results_md = tmp_path / "compare", tmp_path / "RESULTS.md"
    cmd = [
        sys.executable, "-m", "ise", "bench", "compare", "--targets", "engine", "transformers",
        "--model-dir", str(server.model_dir), "--dtype", "float32", "--repeats", "2", "--concurrency", "1",
        "--input-len", "16", "--output-len", "6", "--min-prompts", "2", "--warmup", "1",
        "--out", str(out), "--results-md", str(results_md),
    ]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    runs = json.loads((out / "results.json").read_text())["runs"]
    assert [(r["target"], r["repeat"]) for r in runs] == [
        ("engine", 0), ("transformers", 0), ("engine", 1), ("transformers", 1)
    ]  # fmt: skip
    assert all(r["summary"]["completed"] == 2 for r in runs)
    rows = [line for line in (out / "table.md").read_text().splitlines() if line.startswith("| 1 |")]
    assert len(rows) == 2, "one row per target: the median of its repeats"
    for row, target in zip(rows, ("engine", "transformers"), strict=True):
        each = [f"{r['summary']['output_throughput']:.1f}" for r in runs if r["target"] == target]
        assert row.endswith(f"| {', '.join(each)} |")
    assert "## Plots" in results_md.read_text()
