"""``ise serve`` reads ``vllm serve``'s command lines: the model first, vLLM's spellings, vLLM-only flags passed on."""

from __future__ import annotations

from pathlib import Path

import pytest

from adapters.config import EngineKind
from server.config.command_line import split_serve_args
from server.config.settings import Settings
from server.config.vllm_flags import VLLM_FLAGS, read_vllm_flags

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
        "--enable-prefix-caching", "--speculative-config", '{"method": "ngram"}', "--port", "8001",
    ]  # fmt: skip
    assert engine == ["--tensor-parallel-size", "4", "--gpu-memory-utilization=0.9", "--enforce-eager", "--seed", "-1"]
    # Both engines take --speculative-config (the CPU engine runs the ngram method): it is ise's, as JSON.
    assert Settings.load(ise).speculative_config == {"method": "ngram"}


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


# vLLM's server flags that are not ise options (server/config/vllm_flags.py): accepted and named, or refused.
RECIPE = [
    "/models/llama", "--disable-log-requests", "--enable-request-id-headers", "--enable-prompt-tokens-details",
    "--disable-log-stats", "--disable-uvicorn-access-log", "--uvicorn-log-level", "warning",
    "--response-role=assistant", "--enforce-eager",
]  # fmt: skip


def test_a_deployment_recipes_server_flags_are_accepted_and_named() -> None:
    split = split_serve_args(RECIPE, FLAGS)
    assert split.ise == ["--model", "/models/llama", "--uvicorn-log-level", "warning"]
    assert split.engine == ["--enforce-eager"]
    on_cpu = read_vllm_flags(split.vllm, "cpu")
    assert on_cpu.engine_argv == []
    named = [entry.split(" (")[0] for entry in on_cpu.accepted]
    assert named == [
        "--disable-log-requests", "--enable-request-id-headers", "--enable-prompt-tokens-details",
        "--disable-log-stats", "--disable-uvicorn-access-log", "--response-role",
    ]  # fmt: skip
    assert "ise sends x-request-id on every response" in on_cpu.accepted[1]
    # vLLM's engine takes its own engine arguments among them, where they take effect.
    on_vllm = read_vllm_flags(split.vllm, "vllm")
    assert on_vllm.engine_argv == ["--disable-log-stats"]
    assert "--disable-log-stats" not in " ".join(on_vllm.accepted)


def test_a_switch_does_not_swallow_the_model_after_it() -> None:
    split = split_serve_args(["--enable-request-id-headers", "/models/llama"], FLAGS)
    assert (split.ise, split.vllm) == (["--model", "/models/llama"], [("--enable-request-id-headers", None)])


@pytest.mark.parametrize(
    ("argv", "why"),
    [
        (["--trust-remote-code"], "never runs code shipped with a model"),
        (["--return-tokens-as-token-ids"], "never as token_id:N"),
        (["--enable-log-outputs"], "does not log generated text"),
        (["--response-role", "user"], "the assistant's"),
        (["--ssl-keyfile", "key.pem"], "plain HTTP"),
        (["--lora-modules"], "needs a value"),
    ],
)
@pytest.mark.parametrize("engine", ["cpu", "vllm"])
def test_flags_whose_meaning_ise_cannot_give_are_refused_with_the_reason(
    argv: list[str], why: str, engine: EngineKind
) -> None:
    with pytest.raises(ValueError, match=why) as refused:
        read_vllm_flags(split_serve_args(argv, FLAGS).vllm, engine)
    assert argv[0] in str(refused.value)


def test_every_table_flag_is_not_also_an_ise_option() -> None:
    assert not set(VLLM_FLAGS) & set(FLAGS)


def test_the_readme_shows_the_table() -> None:
    """The README's table of vLLM's server flags is the one ise reads: rows of flags with the same answer."""
    groups: dict[tuple[bool, str, bool], list[str]] = {}
    for flag, entry in VLLM_FLAGS.items():
        shown = [f"`{flag} {value}`" for value in sorted(entry.values)] or [f"`{flag}`"]
        groups.setdefault((entry.accepted, entry.why, entry.engine), []).extend(shown)
    rows = []
    for (accepted, why, engine), flags in groups.items():
        verdict = ("accepted" if accepted else "**refused**") + ("; `--engine vllm` hands it to vLLM" if engine else "")
        rows.append(f"| {', '.join(flags)} | {verdict} | {why} |")
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    table = readme.split("<!-- vllm-flags")[1].split("<!-- /vllm-flags -->")[0]
    assert table.splitlines()[3:] == rows
