"""``ise serve`` with options a user would pass: a local model directory, a name, bfloat16."""

from __future__ import annotations

from pathlib import Path

import openai
import pytest
import torch

from adapters.cpu import numerics
from tests.real.helpers import ServerHandle, running_server, user


def test_local_model_directory_in_bfloat16(server: ServerHandle, tmp_path: Path) -> None:
    args = [
        "--model", str(server.model_dir),
        "--served-model-name", "local-smol",
        "--dtype", "bfloat16",
        "--max-model-len", "512",
        "--max-num-seqs", "4",
    ]  # fmt: skip
    with (
        running_server(args, tmp_path / "ise.log", model="local-smol") as local,
        openai.OpenAI(base_url=local.base_url, api_key="unused", max_retries=0, timeout=120) as client,
    ):
        assert [m.id for m in client.models.list()] == ["local-smol"]
        reply = client.chat.completions.create(
            model="local-smol", messages=user("What is the capital of France?"), temperature=0, max_tokens=20
        )
        assert "Paris" in (reply.choices[0].message.content or "")
        with pytest.raises(openai.BadRequestError, match="512"):
            client.chat.completions.create(model="local-smol", messages=user("Hi"), max_tokens=600)
    log = (tmp_path / "ise.log").read_text()
    assert "dtype bfloat16" in log
    assert "Application shutdown complete" in log and "Traceback" not in log, "Ctrl-C stops it cleanly"


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        ({"avx2", "avx512f", "amx_tile", "amx_bf16"}, torch.bfloat16),
        ({"avx2", "avx512f", "avx512_bf16"}, torch.float32),
        ({"avx2"}, torch.float32),
        (set(), torch.float32),
    ],
)
def test_auto_dtype_follows_cpu_flags(monkeypatch: pytest.MonkeyPatch, flags: set[str], expected: torch.dtype) -> None:
    monkeypatch.setattr(numerics, "cpu_flags", lambda: frozenset(flags))
    assert numerics.resolve_dtype("auto") == expected
    assert numerics.resolve_dtype("float32") == torch.float32
