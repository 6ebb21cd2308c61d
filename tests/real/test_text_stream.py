"""Detokenization and stop strings, token by token, with the built-in model's real tokenizer."""

from __future__ import annotations

import pytest

from server.text.tokenization import Tokenization
from tests.real.helpers import ServerHandle

SAMPLE = "Héllo wörld! 日本語のテキスト 🎉🚀 done. STOP here"


@pytest.fixture(scope="module")
def tokenization(server: ServerHandle) -> Tokenization:
    return Tokenization(server.model_dir)


def _run(tokenization: Tokenization, text: str, stop: list[str]) -> tuple[list[str], bool]:
    stream = tokenization.text_stream(stop)
    deltas = []
    for token in tokenization.encode(text, add_special_tokens=False):
        deltas.append(stream.push([token]))
        if stream.stopped:
            return deltas, True
    deltas.append(stream.flush())
    return deltas, False


def test_multibyte_characters_never_split(tokenization: Tokenization) -> None:
    ids = tokenization.encode(SAMPLE, add_special_tokens=False)
    assert any("\ufffd" in tokenization.decode([i]) for i in ids), "the sample must split characters across tokens"
    deltas, stopped = _run(tokenization, SAMPLE, [])
    assert not stopped
    assert "".join(deltas) == SAMPLE
    assert not any("\ufffd" in d for d in deltas)


@pytest.mark.parametrize(
    ("stop", "expected"),
    [
        (["STOP"], "Héllo wörld! 日本語のテキスト 🎉🚀 done. "),
        (["wörld"], "Héllo "),
        (["🚀"], "Héllo wörld! 日本語のテキスト 🎉"),
        (["テキ", "done"], "Héllo wörld! 日本語の"),
        (["d"], "Héllo wörl"),
    ],
)
def test_stop_strings_across_token_boundaries(tokenization: Tokenization, stop: list[str], expected: str) -> None:
    deltas, stopped = _run(tokenization, SAMPLE, stop)
    assert stopped
    assert "".join(deltas) == expected


def test_text_that_only_starts_a_stop_string_is_released(tokenization: Tokenization) -> None:
    deltas, stopped = _run(tokenization, "done and dusted", ["done!"])
    assert not stopped
    assert "".join(deltas) == "done and dusted"
    # "done" was held back until " and" showed it was not the stop string.
    assert deltas[0] == ""
