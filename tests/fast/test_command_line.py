"""``ise serve`` reads ``vllm serve``'s command lines: the model first, vLLM's spellings, vLLM-only flags passed on."""

from __future__ import annotations

from pathlib import Path

import pytest

from server.command_line import split_serve_args
from server.settings import Settings

FLAGS = Settings.cli_flags()


def _split(argv: list[str]) -> tuple[list[str], list[str]]:
    split = split_serve_args(argv, FLAGS)
    return split.ise, split.engine


def test_a_vllm_serve_command_line_splits_into_ise_and_vllm_flags() -> None:
    ise, engine = _split(
        [
            "/models/llama", "--served-model-name", "llama", "chat", "--tensor-parallel-size", "4",
            "--max-model-len", "4k", "--gpu-memory-utilization=0.9", "--enable-prefix-caching", "--enforce-eager",
            "--speculative-config", '{"method": "ngram"}', "--port", "8001", "--seed", "-1",
        ]
    )  # fmt: skip
    assert ise == [
        "--model", "/models/llama", "--served-model-name", '["llama", "chat"]', "--max-model-len", "4k",
        "--enable-prefix-caching", "--port", "8001",
    ]  # fmt: skip
    assert engine == [
        "--tensor-parallel-size", "4", "--gpu-memory-utilization=0.9", "--enforce-eager",
        "--speculative-config", '{"method": "ngram"}', "--seed", "-1",
    ]  # fmt: skip


def test_vllm_spellings_of_shared_options_mean_the_same() -> None:
    ise, engine = _split(
        [
            "m", "--served-model-name", "a", "b", "--no-enable-prefix-caching", "--max-model-len", "4K",
            "--max-num-batched-tokens", "2k", "--uvicorn-log-level", "warning",
        ]
    )  # fmt: skip
    assert engine == []
    settings = Settings.load(ise)
    assert settings.model == "m"
    assert settings.served_model_name == ["a", "b"]
    assert settings.prefix_caching is False
    assert settings.max_model_len == 4096  # K is 1024, k is 1000, as in vLLM
    assert settings.max_num_batched_tokens == 2000
    assert settings.log_level == "warning"


def test_the_model_may_follow_ise_flags_as_behind_a_docker_entrypoint() -> None:
    ise, engine = _split(["--engine", "vllm", "--enable-prefix-caching", "/models/llama", "--enforce-eager"])
    assert ise == ["--engine", "vllm", "--enable-prefix-caching", "--model", "/models/llama"]
    assert engine == ["--enforce-eager"]


@pytest.mark.parametrize("value", ["4x", "-1", "k"])
def test_bad_sizes_are_refused(value: str) -> None:
    with pytest.raises(ValueError, match="max_model_len"):
        Settings.load(["--max-model-len", value])


def test_the_config_file_passes_a_vllm_table(tmp_path: Path) -> None:
    config = tmp_path / "vllm.toml"
    config.write_text('engine = "vllm"\n\n[vllm]\ntensor_parallel_size = 4\nenforce_eager = true\n')
    settings = Settings.load(["--config", str(config)])
    assert settings.engine == "vllm"
    assert settings.vllm == {"tensor_parallel_size": 4, "enforce_eager": True}
