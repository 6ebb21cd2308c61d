"""Triton's LLM conventions over KServe v2 tensors, as Triton's vLLM backend defines them.

A request carries ``text_input`` (BYTES, one element), and optionally ``stream`` (BOOL),
``sampling_parameters`` (BYTES: a JSON object of vLLM's sampling parameters, numbers as JSON
numbers or as strings, as Triton's own examples send them), ``exclude_input_in_output`` (BOOL),
and ``return_finish_reason`` / ``return_num_input_tokens`` / ``return_num_output_tokens`` (BOOL).
The answer is ``text_output`` (BYTES), plus ``finish_reason`` (BYTES), ``num_input_tokens`` and
``num_output_tokens`` (UINT32) when asked for. The request becomes the body of a ``POST
/v1/completions`` (``to_completion``), so the text API's one request model checks every field.

Tensors arrive in ``raw_input_contents`` (tritonclient's way: BYTES elements each behind a
4-byte little-endian length, BOOL one byte each) or in ``contents``; outputs go out raw.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from typing import Any

from tritonclient.grpc import service_pb2

# Inputs that are booleans, and the outputs the return_* inputs ask for.
_FLAGS = (
    "stream",
    "exclude_input_in_output",
    "return_finish_reason",
    "return_num_input_tokens",
    "return_num_output_tokens",
)
INPUTS = {"text_input": "BYTES", "sampling_parameters": "BYTES", **dict.fromkeys(_FLAGS, "BOOL")}
OUTPUTS = {
    "text_output": "BYTES",
    "finish_reason": "BYTES",
    "num_input_tokens": "UINT32",
    "num_output_tokens": "UINT32",
}
# Request parameters ise reads; tritonclient sets the first for enable_empty_final_response.
EMPTY_FINAL = "triton_enable_empty_final_response"
FINAL = "triton_final_response"  # on every streamed response: whether it is the request's last
# What Triton's vLLM backend converts from strings, by type (its sample client sends "0.1").
_FLOATS = {"temperature", "top_p", "min_p", "presence_penalty", "frequency_penalty", "repetition_penalty"}
_INTS = {"max_tokens", "min_tokens", "top_k", "seed", "n", "logprobs"}
_BOOLS = {"ignore_eos", "skip_special_tokens", "spaces_between_special_tokens", "include_stop_str_in_output"}
# Set by the tensors and the call itself, not by sampling_parameters.
_RESERVED = {"model", "prompt", "stream", "stream_options", "echo", "suffix"}


class TensorError(ValueError):
    """A request that breaks the tensor conventions; ``field`` names the input or parameter."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


@dataclass
class TritonRequest:
    """One ``ModelInferRequest`` read by Triton's vLLM backend's rules."""

    text: str
    stream: bool = False
    sampling: dict[str, Any] = field(default_factory=dict)
    exclude_input: bool = False
    outputs: set[str] = field(default_factory=lambda: {"text_output"})
    empty_final: bool = False

    def to_completion(self, model: str) -> dict[str, Any]:
        """The ``/v1/completions`` body: the prompt, the sampling parameters, usage for the counts."""
        body: dict[str, Any] = {**self.sampling, "model": model, "prompt": self.text, "stream": self.stream}
        if self.stream:
            body["stream_options"] = {"include_usage": True}
        return body

    def field_of(self, param: str | None) -> str:
        """Where an OpenAI error's ``param`` came from in this request: a tensor or a sampling parameter."""
        if param in (None, "prompt"):
            return "text_input"
        if param == "model":
            return "model_name"
        return f"sampling_parameters.{param}"


def read_request(request: service_pb2.ModelInferRequest) -> TritonRequest:
    """The request's tensors and parameters; raises ``TensorError`` naming what is wrong."""
    values: dict[str, Any] = {}
    raw = list(request.raw_input_contents)
    if raw and len(raw) != len(request.inputs):
        raise TensorError("raw_input_contents", f"{len(raw)} given for {len(request.inputs)} inputs")
    for index, tensor in enumerate(request.inputs):
        expected = INPUTS.get(tensor.name)
        if expected is None:
            raise TensorError(tensor.name, f"not an input of this model; it takes {', '.join(INPUTS)}")
        if tensor.name in values:
            raise TensorError(tensor.name, "given twice")
        if tensor.datatype != expected:
            raise TensorError(tensor.name, f"must be {expected}, not {tensor.datatype}")
        elements = _elements(tensor, raw[index] if raw else None)
        if len(elements) != 1:
            raise TensorError(tensor.name, f"must hold one element (a batch of one), not {len(elements)}")
        values[tensor.name] = elements[0]
    if "text_input" not in values:
        raise TensorError("text_input", "the prompt is missing")
    try:
        text = values["text_input"].decode()
    except UnicodeDecodeError:
        raise TensorError("text_input", "is not UTF-8 text") from None
    empty_final = request.parameters[EMPTY_FINAL].bool_param if EMPTY_FINAL in request.parameters else False
    return TritonRequest(
        text=text,
        stream=bool(values.get("stream", False)),
        sampling=_sampling(values.get("sampling_parameters")),
        exclude_input=bool(values.get("exclude_input_in_output", False)),
        outputs={"text_output"} | {name.removeprefix("return_") for name in _FLAGS[2:] if values.get(name)},
        empty_final=empty_final,
    )


def _elements(tensor: service_pb2.ModelInferRequest.InferInputTensor, raw: bytes | None) -> list[Any]:
    if tensor.datatype == "BOOL":
        return [bool(b) for b in raw] if raw is not None else list(tensor.contents.bool_contents)
    if raw is None:
        return list(tensor.contents.bytes_contents)
    elements, offset = [], 0
    while offset < len(raw):
        if offset + 4 > len(raw):
            raise TensorError(tensor.name, "BYTES element cut short (each is a 4-byte length, then the bytes)")
        (size,) = struct.unpack_from("<I", raw, offset)
        elements.append(raw[offset + 4 : offset + 4 + size])
        offset += 4 + size
    if offset != len(raw):
        raise TensorError(tensor.name, "BYTES element cut short (each is a 4-byte length, then the bytes)")
    return elements


def _sampling(raw: bytes | None) -> dict[str, Any]:
    if raw is None:
        return {}
    try:
        params = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TensorError("sampling_parameters", f"is not JSON ({exc})") from None
    if not isinstance(params, dict):
        raise TensorError("sampling_parameters", "must be a JSON object")
    for key, value in params.items():
        if key in _RESERVED:
            raise TensorError(f"sampling_parameters.{key}", "is set by the request itself, not here")
        if isinstance(value, str):
            params[key] = _converted(key, value)
    if params.get("n", 1) != 1 or params.get("best_of", 1) != 1:
        raise TensorError("sampling_parameters.n", "must be 1: text_output holds one answer")
    return params


def _converted(key: str, value: str) -> Any:
    try:
        if key in _FLOATS:
            return float(value)
        if key in _INTS:
            return int(value)
    except ValueError:
        raise TensorError(f"sampling_parameters.{key}", f"{value!r} is not a number") from None
    if key in _BOOLS:
        if value.lower() not in ("true", "false"):
            raise TensorError(f"sampling_parameters.{key}", f"{value!r} is not true or false")
        return value.lower() == "true"
    return value


def response(
    request: service_pb2.ModelInferRequest, outputs: dict[str, str | int], final: bool | None = None
) -> service_pb2.ModelInferResponse:
    """A response with ``outputs`` (name -> text or count) in raw form; ``final``: Triton's flag, on streams."""
    answer = service_pb2.ModelInferResponse(
        model_name=request.model_name, model_version=request.model_version, id=request.id
    )
    for name, value in outputs.items():
        datatype = OUTPUTS[name]
        answer.outputs.add(name=name, datatype=datatype, shape=[1])
        if isinstance(value, str):
            data = value.encode()
            answer.raw_output_contents.append(struct.pack("<I", len(data)) + data)
        else:
            answer.raw_output_contents.append(struct.pack("<I", value))
    if final is not None:
        answer.parameters[FINAL].bool_param = final
    return answer
