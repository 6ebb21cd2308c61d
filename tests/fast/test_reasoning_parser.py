"""Reasoning parsers: the thinking split from the answer as vLLM's deepseek_r1 splits it, the same
however the output is streamed, tags never in either part, and ``in_reasoning`` as the text goes."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from server.text.reasoning import REASONING_PARSERS, ReasoningParser

R1 = REASONING_PARSERS["deepseek_r1"]
QWEN3 = REASONING_PARSERS["qwen3"]

CASES: list[tuple[ReasoningParser, str, tuple[str | None, str | None]]] = [
    (QWEN3, "<think>Let me see.</think>\n\nThe answer is 4.", ("Let me see.", "\n\nThe answer is 4.")),
    (QWEN3, "  \n<think>\nhmm</think>4", ("\nhmm", "4")),
    (QWEN3, "The answer is 4.", (None, "The answer is 4.")),
    (QWEN3, "No <think>here</think> at start", (None, "No <think>here</think> at start")),
    (QWEN3, "<think>never ends", ("never ends", None)),
    (QWEN3, "<thinker>", (None, "<thinker>")),
    (QWEN3, " <thi", (None, " <thi")),
    (QWEN3, "<think></think>", (None, None)),
    (QWEN3, "<think>a </thin b</think>c</think>", ("a </thin b", "c</think>")),
    (R1, "Thinking...</think>Answer", ("Thinking...", "Answer")),
    (R1, "<think>Thinking...</think>Answer", ("Thinking...", "Answer")),
    (R1, "Still thinking when cut", ("Still thinking when cut", None)),
    (R1, "  x</think>", ("  x", None)),
    (R1, "</think>only answer", (None, "only answer")),
    (
        ReasoningParser("<|begin_of_thought|>", "<|end_of_thought|>"),
        "<|begin_of_thought|>t<|end_of_thought|>a",
        ("t", "a"),
    ),
]


def streamed(parser: ReasoningParser, pieces: Sequence[str]) -> tuple[str | None, str | None]:
    stream = parser.stream()
    parts = [stream.push(piece) for piece in pieces]
    parts.append(stream.finish())
    reasoning, content = "".join(r for r, _ in parts), "".join(c for _, c in parts)
    return reasoning or None, content or None


@pytest.mark.parametrize(("parser", "text", "expected"), CASES)
def test_split(parser: ReasoningParser, text: str, expected: tuple[str | None, str | None]) -> None:
    assert parser.split(text) == expected


@pytest.mark.parametrize(("parser", "text", "expected"), CASES)
def test_every_split_streams_the_same(
    parser: ReasoningParser, text: str, expected: tuple[str | None, str | None]
) -> None:
    assert streamed(parser, list(text)) == expected
    for cut in range(len(text) + 1):
        assert streamed(parser, [text[:cut], text[cut:]]) == expected


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_random_splits_and_texts(data: st.DataObject) -> None:
    parser = data.draw(st.sampled_from([R1, QWEN3]))
    text = "".join(
        data.draw(st.lists(st.sampled_from(["<think>", "</think>", "<", "</", "think", ">", " ", "\n", "a"])))
    )
    cuts = sorted(data.draw(st.lists(st.integers(0, len(text)), max_size=8)))
    pieces = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]
    assert streamed(parser, pieces) == parser.split(text)


def test_in_reasoning_follows_the_text() -> None:
    stream = QWEN3.stream()
    assert not stream.in_reasoning
    assert stream.push("<think>") == ("", "")
    assert stream.in_reasoning
    assert stream.push("step one </th") == ("step one ", "")
    assert stream.in_reasoning
    assert stream.push("ink>\n4") == ("", "\n4")
    assert not stream.in_reasoning
    assert R1.stream().in_reasoning


def test_thinking_never_leaks_into_content() -> None:
    stream = R1.stream()
    out = [stream.push(c) for c in "secret</think>public"]
    assert "".join(c for _, c in out) == "public"
    assert all(not c for _, c in out[: len("secret</think>") - 1])
