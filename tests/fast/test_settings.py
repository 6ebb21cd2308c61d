"""Settings: one model read from flags, ISE_* variables and a TOML file, in that precedence."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from adapters.config import EngineArgs
from server.config.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


def test_default_config_file_matches_the_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in Settings.model_fields:
        monkeypatch.delenv(f"ISE_{name.upper()}", raising=False)
    path = ROOT / "configs" / "default.toml"
    values = tomllib.loads(path.read_text())
    defaults = Settings()
    assert values, "the default config should set something"
    for key, value in values.items():
        assert getattr(defaults, key) == value, key
    assert Settings.load(["--config", str(path)]).model_dump(exclude={"config"}) == defaults.model_dump(
        exclude={"config"}
    )


def test_flags_beat_environment_beat_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "ise.toml"
    config.write_text('port = 9001\nmax_num_seqs = 3\ndtype = "bfloat16"\nhost = "0.0.0.0"\n')
    monkeypatch.setenv("ISE_CONFIG", str(config))
    monkeypatch.setenv("ISE_PORT", "9002")
    monkeypatch.setenv("ISE_MAX_NUM_SEQS", "5")
    settings = Settings.load(["--port", "9003", "--dtype", "float32"])
    assert settings.port == 9003  # flag over env and file
    assert settings.max_num_seqs == 5  # env over file
    assert settings.host == "0.0.0.0"  # file over default
    assert settings.dtype == "float32"


def test_bad_values_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="dtype"):
        Settings.load(["--dtype", "float8"])
    monkeypatch.setenv("ISE_MAX_NUM_SEQS", "0")
    with pytest.raises(ValueError, match="max_num_seqs"):
        Settings.load([])


def test_cli_reports_bad_settings_cleanly() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "ise", "serve", "--dtype", "float8"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert "dtype" in result.stderr and "Traceback" not in result.stderr


def test_vllm_spelling_of_the_long_prefill_threshold_and_the_old_one_both_work() -> None:
    assert Settings.load(["--long-prefill-token-threshold", "300"]).long_prefill_token_threshold == 300
    assert Settings.load(["--long-prompt-tokens", "301"]).long_prefill_token_threshold == 301


def test_engine_options_are_declared_once() -> None:
    """Settings takes every engine option from EngineArgs: none is declared a second time."""
    own = set(Settings.__annotations__)
    assert not own & set(EngineArgs.model_fields), "an engine option is declared in Settings too"
    assert set(EngineArgs.model_fields) <= set(Settings.model_fields)
