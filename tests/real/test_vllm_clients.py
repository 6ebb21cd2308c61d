"""What clients written for vLLM met on ise, against the real server and model: ``vllm bench serve``
(TTFT timed at the first chunk with choices; the model read from ``/v1/models``' ``root``), a tool
call cut by ``max_tokens``, a path ise does not serve, and ``vllm serve``'s deployment flags."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from langchain_core.messages import HumanMessage
from langchain_openai import ChatOpenAI
from langchain_openai.chat_models.base import OpenAIModelNotFoundError
from openai.lib.streaming.chat import ChatCompletionStreamState, ParsedChatCompletionSnapshot
from openai.types.chat import ChatCompletion, ChatCompletionToolParam
from pydantic import SecretStr

from tests.helpers import assert_openai_error, sse_line
from tests.real.helpers import ServerHandle, running_server, user

# A prompt of about 1,000 tokens, so its prefill is long enough to tell from a role chunk sent at once.
WORDS = ("alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet", "kilo")
LONG_PROMPT_WORDS = 560


def _long_prompt() -> str:
    # A fresh opening each time, so no earlier request's prefix cache shortens the prefill.
    words = " ".join(WORDS[(i * 7) % len(WORDS)] for i in range(LONG_PROMPT_WORDS))
    return f"{uuid.uuid4().hex}\n{words}\nSummarize."


def _first_token_s(server: ServerHandle, request_id: str) -> float:
    """Queue plus prefill time of a request, as its line in the server's access log says."""
    pattern = rf"\[{re.escape(request_id)}\]: POST .* queue=([\d.]+)s prefill=([\d.]+)s"
    deadline = time.monotonic() + 10
    while (match := re.search(pattern, server.log_path.read_text())) is None:
        assert time.monotonic() < deadline, f"no log line for {request_id}"
        time.sleep(0.1)
    return float(match.group(1)) + float(match.group(2))


def test_the_first_chunk_with_choices_comes_with_the_first_token(server: ServerHandle) -> None:
    request_id = f"first-chunk-{uuid.uuid4().hex[:8]}"
    body = {"model": server.model, "messages": user(_long_prompt()), "max_tokens": 4, "temperature": 0, "stream": True}
    started = time.perf_counter()
    chunks: list[tuple[float, dict[str, Any]]] = []
    with httpx.stream(
        "POST", f"{server.base_url}/chat/completions", json=body, headers={"x-request-id": request_id}, timeout=300
    ) as response:
        for line in response.iter_lines():
            if (payload := sse_line(line)) not in (None, "[DONE]"):
                chunks.append((time.perf_counter() - started, json.loads(payload)))
    (opened_at, opening), (_, first) = chunks[:2]
    assert opening["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert first["choices"][0]["delta"]["content"]
    first_token = _first_token_s(server, request_id)
    assert first_token > 0.1, "a 1,000-token prompt takes a while to prefill"
    # Before, the role chunk came at once (46 ms in the issue, against 2,709 ms to the first token).
    assert opened_at >= 0.9 * first_token, (opened_at, first_token)


def test_vllm_bench_serve_reads_the_model_and_times_the_first_token(server: ServerHandle, tmp_path: Path) -> None:
    """vLLM's own benchmark, unchanged: without --model it takes the model (and its tokenizer) from
    /v1/models' root; the TTFT it reports for each request is ise's own queue plus prefill."""
    prefix = f"vllm-bench-{uuid.uuid4().hex[:8]}-"
    args = [
        "--backend", "openai-chat", "--base-url", server.root_url, "--endpoint", "/v1/chat/completions",
        "--dataset-name", "random", "--random-input-len", "1000", "--random-output-len", "4", "--ignore-eos",
        "--num-prompts", "2", "--max-concurrency", "1", "--seed", str(uuid.uuid4().int % 10_000),
        "--ready-check-timeout-sec", "0", "--request-id-prefix", prefix, "--disable-tqdm", "--save-detailed",
    ]  # fmt: skip
    driver = (
        "import json, sys\n"
        "from vllm.benchmarks.serve import add_cli_args, main\n"
        "from vllm.utils.argparse_utils import FlexibleArgumentParser\n"
        "parser = FlexibleArgumentParser()\n"
        "add_cli_args(parser)\n"
        "result = main(parser.parse_args(sys.argv[1:]))\n"
        "print('RESULT ' + json.dumps({'ttfts': result['ttfts'], 'completed': result['completed']}))\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", driver, *args],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
        env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
        check=False,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert f"First model name: {server.model}, first model id: {server.model_dir}" in run.stdout
    result = json.loads(run.stdout.split("RESULT ", 1)[1])
    assert result["completed"] == 2
    for index, ttft in enumerate(result["ttfts"]):
        first_token = _first_token_s(server, f"{prefix}{index}")
        assert first_token > 0.1
        assert 0.9 * first_token <= ttft <= 1.5 * first_token + 0.5, (index, ttft, first_token)


LLM_TIME: ChatCompletionToolParam = {
    "type": "function",
    "function": {
        "name": "llm_time",
        "description": "Returns the current time",
        "parameters": {"type": "object", "properties": {}},
    },
}


def _choices(client: openai.OpenAI, server: ServerHandle, stream: bool) -> list[tuple[Any, ...]]:
    """Each choice's finish reason, content and calls (name, arguments), streamed (as the SDK adds
    the chunks up) or whole."""
    request: dict[str, Any] = {
        "model": server.model,
        "messages": user("What time is it? Use the tool."),
        "tools": [LLM_TIME],
        "max_tokens": 80,
        "n": 4,
        "seed": 1,  # sampled at the model's own temperature: it calls the tool until max_tokens
    }
    reply: ChatCompletion | ParsedChatCompletionSnapshot
    if stream:
        state = ChatCompletionStreamState()
        for chunk in client.chat.completions.create(**request, stream=True):
            state.handle_chunk(chunk)
        reply = state.current_completion_snapshot  # get_final_completion() refuses a length finish
    else:
        reply = client.chat.completions.create(**request)
    return [
        (
            choice.finish_reason,
            choice.message.content or None,  # a stream's role chunk opens its content with ""
            [(t.function.name, t.function.arguments) for t in choice.message.tool_calls or [] if t.type == "function"],
        )
        for choice in reply.choices
    ]


@pytest.mark.parametrize("stream", [False, True])
def test_a_tool_call_cut_by_max_tokens_is_not_content(
    client: openai.OpenAI, server: ServerHandle, stream: bool
) -> None:
    """The issue's case: tools=[llm_time], max_tokens 80, float32. Complete calls come back as calls,
    the one max_tokens cut is dropped or kept as a call, and no call syntax is content, as the
    ``llm`` CLI printed it to its user (``'\\n    },\\n    {\\n      "name": "l'``)."""
    choices = _choices(client, server, stream)
    cut = [c for c in choices if c[0] == "length" and c[2]]
    assert cut, f"no choice was cut inside its calls: {choices}"
    for finish, content, calls in choices:
        if calls:
            assert content is None, f"call syntax in the content: {content!r}"
            assert {name for name, _ in calls} == {"llm_time"}
            assert all(isinstance(json.loads(arguments), dict) for _, arguments in calls)
        assert finish in ("length", "tool_calls", "stop")
    if stream:  # seeded choices, float32: the same tokens streamed and whole
        assert choices == _choices(client, server, stream=False)


def test_a_path_ise_does_not_serve_is_named_in_a_404(client: openai.OpenAI, server: ServerHandle) -> None:
    response = httpx.post(f"{server.root_url}/v1/audio/speech", json={}, timeout=30)
    assert response.status_code == 404
    assert response.json() == {
        "error": {
            "message": "Invalid URL (POST /v1/audio/speech): ise does not serve this path.",
            "type": "invalid_request_error",
            "param": None,
            "code": None,
        }
    }
    # Under Anthropic's routes the same 404 wears Anthropic's shape, as its clients read it.
    anthropic_path = httpx.post(f"{server.root_url}/v1/messages/nowhere", json={}, timeout=30)
    assert anthropic_path.status_code == 404
    assert anthropic_path.json() == {
        "type": "error",
        "error": {
            "type": "not_found_error",
            "message": "Invalid URL (POST /v1/messages/nowhere): ise does not serve this path.",
        },
    }
    wrong = httpx.delete(f"{server.root_url}/v1/models", timeout=30)
    assert wrong.headers["allow"] == "GET, HEAD"
    message = assert_openai_error(wrong, 405)["message"]
    assert message == "Invalid method (DELETE /v1/models): ise serves this path with GET, HEAD only."
    with pytest.raises(openai.NotFoundError, match=r"Invalid URL \(GET /v1/fine_tuning/jobs\)"):
        client.fine_tuning.jobs.list()
    # LangChain turns any 404 into "model not found"; its message now says what was not found.
    chat = ChatOpenAI(base_url=f"{server.root_url}/v2", api_key=SecretStr("unused"), model=server.model, max_retries=0)
    with pytest.raises(OpenAIModelNotFoundError, match=r"Invalid URL \(POST /v2/chat/completions\)"):
        chat.invoke([HumanMessage("hi")])


DEPLOYMENT_FLAGS = [
    "--disable-log-requests", "--enable-request-id-headers", "--enable-prompt-tokens-details", "--disable-log-stats",
    "--disable-uvicorn-access-log", "--uvicorn-log-level", "info", "--enable-force-include-usage",
    "--disable-fastapi-docs", "--disable-access-log-for-endpoints", "/health,/metrics",
]  # fmt: skip


def test_vllm_deployment_flags_start_ise_and_are_named_at_start_up(tmp_path: Path) -> None:
    log_path = tmp_path / "ise.log"
    with (
        running_server(["--dtype", "float32", *DEPLOYMENT_FLAGS], log_path) as flagged,
        openai.OpenAI(base_url=flagged.base_url, api_key="unused", max_retries=0, timeout=120) as client,
    ):
        raw = client.chat.completions.with_raw_response.create(
            model=flagged.model, messages=user("What is the capital of France?"), temperature=0, max_tokens=8
        )
        assert raw.headers["x-request-id"]
        reply = raw.parse()
        assert reply.usage is not None and reply.usage.prompt_tokens_details is not None
        stream = client.chat.completions.create(
            model=flagged.model, messages=user("Hi"), temperature=0, max_tokens=4, stream=True
        )
        assert [chunk.usage for chunk in stream][-1] is not None  # --enable-force-include-usage
        assert httpx.get(f"{flagged.root_url}/docs", timeout=30).status_code == 404  # --disable-fastapi-docs
        assert httpx.get(f"{flagged.root_url}/metrics", timeout=30).status_code == 200
    log = log_path.read_text()
    [accepted] = [line for line in log.splitlines() if "vLLM flags accepted without effect" in line]
    for flag in DEPLOYMENT_FLAGS[:5]:
        assert f"{flag} (" in accepted
    assert "--enable-request-id-headers (ise sends x-request-id on every response)" in accepted
    assert "POST /v1/chat/completions 200" in log
    assert "GET /metrics" not in log and "GET /health" not in log  # --disable-access-log-for-endpoints


@pytest.mark.parametrize(
    ("flag", "why"),
    [
        ("--trust-remote-code", "never runs code shipped with a model"),
        ("--return-tokens-as-token-ids", "never as token_id:N"),
    ],
)
def test_flags_whose_meaning_ise_cannot_give_stop_it_with_the_reason(flag: str, why: str) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "ise", "serve", "--port", "0", flag],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert run.returncode != 0
    assert f"ise serve: {flag}: vLLM's option is not available on ise: " in run.stderr
    assert why in run.stderr


def test_every_vllm_server_flag_is_an_ise_option_or_in_the_table() -> None:
    """vLLM 0.32's whole server parser: a flag neither ise nor the table knows would reach vLLM's
    engine parser, which does not know it either (or the CPU engine's generic refusal)."""
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.entrypoints.launchers.cli_args import make_arg_parser
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    from server.config.settings import Settings
    from server.config.vllm_flags import VLLM_FLAGS

    def flags(parser: FlexibleArgumentParser) -> set[str]:
        return {s for action in parser._actions for s in action.option_strings if s.startswith("--")}

    served, engine = (
        flags(make_arg_parser(FlexibleArgumentParser())),
        flags(AsyncEngineArgs.add_cli_args(FlexibleArgumentParser())),
    )
    assert sorted(served - engine - set(Settings.cli_flags()) - set(VLLM_FLAGS)) == []
    # The table names only vLLM's flags, and the one older vLLMs had that recipes still carry.
    assert sorted(set(VLLM_FLAGS) - served) == ["--disable-log-requests"]
    # The engine arguments in the table: vLLM's logging flags, which --engine vllm still hands to vLLM,
    # and --trust-remote-code, which ise refuses on both engines.
    table_engine_args = {f for f in VLLM_FLAGS if f in engine}
    assert table_engine_args == {f for f, e in VLLM_FLAGS.items() if e.engine} | {"--trust-remote-code"}
