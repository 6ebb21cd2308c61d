"""``ise bench structured``'s pure parts: the requests it sends, how answers are judged, its table."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import xgrammar

from adapters.engine import StructuredOutput
from adapters.grammars import tokenizer_info
from benchmarks.clients import HttpClient
from benchmarks.metrics import RequestRecord
from benchmarks.structured import (
    PERSON_SCHEMA,
    RESPONSE_FORMAT,
    Pass,
    StructuredOptions,
    chat_specs,
    count_verdicts,
    level_rows,
    person_prompts,
    save,
    table,
    valid_fraction,
    verdict,
)
from server.text.grammar_check import problem
from tests.fast.tiny_model import TinyModel

PERSON = {
    "name": "Ada Brook",
    "age": 41,
    "occupation": "engineer",
    "email": "ada.brook@mail.org",
    "address": {"city": "Oslo", "country": "Norway"},
    "hobbies": ["chess", "sailing"],
}


def _answer(text: str | None, finish_reason: str = "stop", error: str | None = None) -> RequestRecord:
    return RequestRecord(text=text, finish_reason=finish_reason, error=error)


def test_the_schema_is_one_ise_enforces(tiny: TinyModel) -> None:
    info = tokenizer_info(tiny.tokenization.hf, tiny.info.vocab_size, tiny.info.eos_token_ids)
    assert problem(xgrammar.GrammarCompiler(info), StructuredOutput(json=json.dumps(PERSON_SCHEMA))) is None


def test_schema_requests_carry_the_response_format_and_plain_ones_do_not() -> None:
    prompts = person_prompts(3, seed=1)
    assert prompts == person_prompts(3, seed=1) and prompts != person_prompts(3, seed=2)
    client = HttpClient("http://127.0.0.1:1/v1", "bench")
    plain, schema = (client.payload(chat_specs(prompts, mode, 64)[0]) for mode in ("plain", "schema"))
    assert "response_format" not in plain
    assert schema["response_format"] == RESPONSE_FORMAT
    assert schema["messages"] == plain["messages"]
    for body in (plain, schema):  # neither is held to a fixed length
        assert body["max_tokens"] == 64 and "ignore_eos" not in body and "min_tokens" not in body


def test_verdicts() -> None:
    assert verdict(_answer(json.dumps(PERSON))) == "valid"
    assert verdict(_answer(json.dumps({**PERSON, "age": 7}))) == "schema_violation"
    assert verdict(_answer(json.dumps({**PERSON, "email": "Ada@x"}))) == "schema_violation"  # the pattern
    assert verdict(_answer(json.dumps({**PERSON, "occupation": "pilot"}))) == "schema_violation"  # the enum
    assert verdict(_answer(json.dumps({**PERSON, "hobbies": []}))) == "schema_violation"
    assert verdict(_answer("Here is a person: {")) == "not_json"
    assert verdict(_answer('{"name": "Ada', finish_reason="length")) == "cut_at_max_tokens"
    assert verdict(_answer(None, error="HTTP 500")) == "failed"


def test_counts_and_fraction() -> None:
    records = [_answer(json.dumps(PERSON)), _answer(json.dumps(PERSON)), _answer("no"), _answer(None, error="x")]
    counts = count_verdicts(records)
    assert counts == {"valid": 2, "schema_violation": 0, "not_json": 1, "cut_at_max_tokens": 0, "failed": 1}
    assert valid_fraction(counts) == 0.5
    assert math.isnan(valid_fraction(count_verdicts([])))


def _pass(mode: str, repeat: int, tokens: int, seconds: float, text: str) -> Pass:
    # Two requests, 10 ms between chunks, ending at ``seconds``.
    records = [
        RequestRecord(
            output_tokens=tokens,
            ttft=0.05,
            latency=seconds,
            chunk_times=[0.05, 0.06, 0.07],
            text=text,
            finish_reason="stop",
        )
        for _ in range(2)
    ]
    return Pass(mode, 1, repeat, records, seconds)  # type: ignore[arg-type]


def test_rows_and_table() -> None:
    good, bad = json.dumps(PERSON), "prose"
    passes = [
        _pass("plain", 0, 50, 1.0, bad),  # 100 tok/s
        _pass("schema", 0, 40, 1.0, good),  # 80 tok/s: 0.8 of plain
        _pass("schema", 1, 45, 1.0, good),  # 90 tok/s
        _pass("plain", 1, 50, 1.0, good),  # 100 tok/s: 0.9
    ]
    (row,) = level_rows(passes)
    assert row.ratios == pytest.approx([0.8, 0.9])
    assert row.ratio == pytest.approx(0.85)
    assert row.tok_s == pytest.approx({"plain": 100.0, "schema": 85.0})
    assert row.itl_p50 == pytest.approx({"plain": 0.01, "schema": 0.01})
    assert row.verdicts["schema"]["valid"] == 4 and row.verdicts["plain"]["valid"] == 2
    text = table([row])
    assert "| 1 | 100.0 | 85.0 | **0.85x** (0.80, 0.90) |" in text
    assert "**100% (4/4)**" in text and "50% (2/4)" in text


def test_save_writes_json_markdown_and_plot(tmp_path: Path) -> None:
    passes = [_pass("plain", 0, 50, 1.0, "x"), _pass("schema", 0, 40, 1.0, json.dumps(PERSON))]
    machine = {"cpu": "a CPU", "cores": 2, "memory_gib": 8, "ise_commit": "abc"}
    meta = {"machine": machine, "command": "ise bench structured", "server": "ise serve", "date": "2025-01-01",
            "first_schema_request": {"ttft_s": 1.5, "latency_s": 2.0, "plain_ttft_s": 0.1}}  # fmt: skip
    text = save(passes, StructuredOptions(concurrency=(1,), repeats=1), meta, tmp_path)
    assert "0.80x" in text and "1500 ms" in text
    payload = json.loads((tmp_path / "results.json").read_text())
    assert payload["levels"][0]["ratio"] == pytest.approx(0.8)
    assert payload["passes"][1]["verdicts"]["valid"] == 2
    assert (tmp_path / "structured.md").read_text() == text
    assert (tmp_path / "structured.png").stat().st_size > 0
