"""``inference.GRPCInferenceService`` (KServe v2, as Triton serves it) over ise's HTTP app.

Each call goes through the same app as HTTP (``http_call.HTTPCall``): inference is ``POST
/v1/completions`` built from Triton's tensors (``triton.py``); readiness and metadata read
``/v1/models/{name}`` and ``/version``, so they need the key as those routes do, while
``ServerLive``/``ServerReady`` answer without one, as ``/health`` does. The caller's key comes
in the call's metadata (``authorization: Bearer KEY`` or ``x-api-key``), as do ``x-request-id``
and ``x-slo-ttft-ms``.

HTTP's refusals become gRPC status codes: 400 ``INVALID_ARGUMENT`` (the message starts with the
tensor or ``sampling_parameters.<field>`` at fault), 401 ``UNAUTHENTICATED``, 404 ``NOT_FOUND``,
413 and 429 ``RESOURCE_EXHAUSTED`` (with ``retry-after`` in the trailing metadata), 503
``UNAVAILABLE`` (draining, or the engine down). In ``ModelStreamInfer`` a request's error is a
response's ``error_message`` (as Triton sends it, prefixed with the code's name) and the stream
goes on; only a refused key ends the stream, with ``UNAUTHENTICATED``. A call the client
cancels aborts its requests in the engine.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from importlib.metadata import version
from typing import Any, NoReturn

import grpc
from starlette.types import ASGIApp
from tritonclient.grpc import service_pb2, service_pb2_grpc

from server.endpoints.state import ServerState
from server.runtime.kserve.http_call import HTTPCall
from server.runtime.kserve.triton import INPUTS, OUTPUTS, TensorError, TritonRequest, read_request, response

_CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    404: grpc.StatusCode.NOT_FOUND,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    499: grpc.StatusCode.CANCELLED,
    503: grpc.StatusCode.UNAVAILABLE,
}
_PASSED_ON = ("authorization", "x-api-key", "x-request-id", "x-slo-ttft-ms")  # metadata the HTTP request carries
log = logging.getLogger(__name__)
IGNORED = "ignored_params"  # a response parameter: x-ignored-params, the fields that took no effect


class CallError(Exception):
    """A call's failure as gRPC reports it: a status code, a message, and trailing metadata."""

    def __init__(self, code: grpc.StatusCode, message: str, trailers: tuple[tuple[str, str], ...] = ()) -> None:
        super().__init__(message)
        self.code, self.message, self.trailers = code, message, trailers

    @classmethod
    def from_http(cls, status: int, body: bytes, headers: dict[str, str], infer: TritonRequest | None) -> CallError:
        """HTTP's refusal (OpenAI's error JSON) as gRPC's; a 400 names the tensor or parameter at fault."""
        try:
            error = json.loads(body)["error"]
            message, param = str(error["message"]), error.get("param")
        except (ValueError, KeyError, TypeError):
            message, param = body.decode(errors="replace") or f"HTTP {status}", None
        if status == 400:
            message = f"{infer.field_of(param) if infer else param}: {message}"
        trailers = tuple((name, headers[name]) for name in ("retry-after",) if name in headers)
        code = _CODES.get(status, grpc.StatusCode.INTERNAL if status >= 500 else grpc.StatusCode.UNKNOWN)
        return cls(code, message, trailers)


async def _abort(context: grpc.aio.ServicerContext, error: CallError) -> NoReturn:
    if error.trailers:
        context.set_trailing_metadata(error.trailers)
    await context.abort(error.code, error.message)
    raise AssertionError("abort returns by raising")  # for the type checker


async def _events(body: AsyncIterator[bytes]) -> AsyncIterator[str]:
    """The data of each server-sent event of ``body`` (OpenAI's chunks are data-only events)."""
    buffer = b""
    async for piece in body:
        buffer += piece
        *lines, buffer = buffer.split(b"\n")
        for line in lines:
            if line.startswith(b"data:"):
                yield line[5:].strip().decode()


class InferenceService(service_pb2_grpc.GRPCInferenceServiceServicer):  # type: ignore[misc]
    def __init__(self, app: ASGIApp, state: ServerState) -> None:
        self.app, self.state = app, state

    @staticmethod
    def _headers(context: grpc.aio.ServicerContext) -> dict[str, str]:
        metadata = {key.lower(): value for key, value in context.invocation_metadata() or ()}
        return {name: metadata[name] for name in _PASSED_ON if isinstance(metadata.get(name), str)}

    async def _get(self, path: str, context: grpc.aio.ServicerContext) -> tuple[int, bytes]:
        call = HTTPCall(self.app, "GET", path, headers=self._headers(context))
        try:
            await call.start()
            body = await call.read()
        finally:
            await call.close()
        if call.status not in (200, 404):
            await _abort(context, CallError.from_http(call.status, body, call.headers, None))
        return call.status, body

    async def ServerLive(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return service_pb2.ServerLiveResponse(live=True)

    async def ServerReady(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        ready = self.state.engine.is_alive and not self.state.gateway.admission.draining
        return service_pb2.ServerReadyResponse(ready=ready)

    async def ModelReady(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        status, _ = await self._get(f"/v1/models/{request.name}", context)
        return service_pb2.ModelReadyResponse(ready=status == 200 and self.state.engine.is_alive)

    async def ServerMetadata(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        await self._get("/version", context)
        return service_pb2.ServerMetadataResponse(name="ise", version=version("ise"), extensions=[])

    async def ModelMetadata(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        status, body = await self._get(f"/v1/models/{request.name}", context)
        if status == 404:
            await _abort(context, CallError.from_http(status, body, {}, None))
        tensor = service_pb2.ModelMetadataResponse.TensorMetadata
        return service_pb2.ModelMetadataResponse(
            name=request.name,
            versions=["1"],
            platform="ise",
            inputs=[tensor(name=name, datatype=kind, shape=[1]) for name, kind in INPUTS.items()],
            outputs=[tensor(name=name, datatype=kind, shape=[1]) for name, kind in OUTPUTS.items()],
        )

    async def ModelInfer(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            infer = read_request(request)
            if infer.stream:
                raise TensorError("stream", "ModelInfer answers once; stream with ModelStreamInfer")
            answers = [a async for a in self._answers(request, infer, self._headers(context), streamed=False)]
        except TensorError as exc:
            await _abort(context, CallError(grpc.StatusCode.INVALID_ARGUMENT, str(exc)))
        except CallError as exc:
            await _abort(context, exc)
        return answers[0]

    async def ModelStreamInfer(
        self, request_iterator: AsyncIterator[Any], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[Any]:
        """Requests may overlap on one stream (perf_analyzer's way): each runs as its own task."""
        headers = self._headers(context)
        out: asyncio.Queue[Any] = asyncio.Queue()
        tasks: set[asyncio.Task[None]] = set()

        async def one(request: Any) -> None:
            try:
                infer = read_request(request)
                async for answer in self._answers(request, infer, headers, streamed=True):
                    out.put_nowait(service_pb2.ModelStreamInferResponse(infer_response=answer))
            except TensorError as exc:
                out.put_nowait(_stream_error(request, f"{grpc.StatusCode.INVALID_ARGUMENT.name}: {exc}"))
            except CallError as exc:
                if exc.code == grpc.StatusCode.UNAUTHENTICATED:
                    out.put_nowait(exc)
                else:
                    out.put_nowait(_stream_error(request, f"{exc.code.name}: {exc.message}"))
            except Exception as exc:  # the stream's other requests go on; this one gets its answer
                log.exception("A request of a gRPC stream failed")
                out.put_nowait(_stream_error(request, f"{grpc.StatusCode.INTERNAL.name}: {exc}"))

        async def read_all() -> None:
            async for request in request_iterator:
                task = asyncio.create_task(one(request))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            while tasks:
                await asyncio.gather(*tasks, return_exceptions=True)
            out.put_nowait(None)

        reader = asyncio.create_task(read_all())
        try:
            while (item := await out.get()) is not None:
                if isinstance(item, CallError):
                    await _abort(context, item)
                yield item
        finally:
            for task in (reader, *tasks):
                task.cancel()
            await asyncio.gather(reader, *tasks, return_exceptions=True)

    async def _answers(
        self, request: Any, infer: TritonRequest, headers: dict[str, str], streamed: bool
    ) -> AsyncIterator[Any]:
        """The responses to one request: one for ``ModelInfer``; on a stream, one per piece of text
        with Triton's final flag (and an empty last one when the client enabled it)."""
        body = json.dumps(infer.to_completion(request.model_name)).encode()
        call = HTTPCall(self.app, "POST", "/v1/completions", body, headers)
        try:
            await call.start()
            if call.status != 200:
                raise CallError.from_http(call.status, await call.read(), call.headers, infer)
            ignored = call.headers.get("x-ignored-params")
            if infer.stream:
                # Each piece goes out as it comes, but the last (the chunk with the finish reason)
                # waits for the usage chunk right behind it, so that it can carry the counts.
                text, tail = "", {}
                async for data in _events(call.body()):
                    if data == "[DONE]":
                        break
                    chunk = json.loads(data)
                    if "error" in chunk:  # the request failed after its stream began
                        error = chunk["error"]
                        down = error.get("code") in ("engine_dead", "server_shutting_down")
                        code = grpc.StatusCode.UNAVAILABLE if down else grpc.StatusCode.INTERNAL
                        raise CallError(code, str(error.get("message")))
                    for choice in chunk["choices"]:
                        if choice.get("finish_reason"):
                            text, tail["finish_reason"] = choice["text"], choice["finish_reason"]
                        elif choice["text"]:
                            yield response(request, {"text_output": choice["text"]}, final=False)
                    if chunk.get("usage"):
                        tail["usage"] = chunk["usage"]
                outputs = _outputs(infer, text, tail.get("finish_reason"), tail.get("usage"))
            else:
                completion = json.loads(await call.read())
                choice = completion["choices"][0]
                text = choice["text"] if infer.exclude_input else infer.text + choice["text"]
                outputs = _outputs(infer, text, choice["finish_reason"], completion["usage"])
        finally:
            await call.close()
        answer = response(request, outputs, final=not infer.empty_final if streamed else None)
        if ignored:
            answer.parameters[IGNORED].string_param = ignored
        yield answer
        if streamed and infer.empty_final:
            yield response(request, {}, final=True)


def _outputs(infer: TritonRequest, text: str, finish_reason: Any, usage: Any) -> dict[str, str | int]:
    outputs: dict[str, str | int] = {"text_output": text}
    if "finish_reason" in infer.outputs:
        outputs["finish_reason"] = str(finish_reason or "")
    if "num_input_tokens" in infer.outputs and usage:
        outputs["num_input_tokens"] = int(usage["prompt_tokens"])
    if "num_output_tokens" in infer.outputs and usage:
        outputs["num_output_tokens"] = int(usage["completion_tokens"])
    return outputs


def _stream_error(request: Any, message: str) -> Any:
    """Triton's way to fail one request of a stream: a response with ``error_message``, the stream going on."""
    answer = service_pb2.ModelInferResponse(model_name=request.model_name, id=request.id)
    return service_pb2.ModelStreamInferResponse(error_message=message, infer_response=answer)
