"""Errors in OpenAI's shape, ``{"error": {"message", "type", "param", "code"}}``, for every failure.

OpenAI SDKs read ``error.message`` and the status code to raise their typed exceptions, so no
response may fall back to FastAPI's ``{"detail": ...}`` or its 422 validation shape.
"""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from adapters.engine import EngineDeadError, RequestFailedError
from server.gateway.request_id import HEADER, current_request_id
from server.protocol.models import ErrorDetail, ErrorResponse

log = logging.getLogger(__name__)

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    503: "service_unavailable",
}


# Errors a retry cannot fix. The openai SDK retries 408, 409, 429 and every 5xx unless the
# response says ``x-should-retry: false``; saying it spares clients retries that cannot succeed.
_PERMANENT = {400, 401, 403, 404, 405, 413, 422}


class APIError(Exception):
    """An error the API reports in OpenAI's shape.

    ``headers`` go on the response (``Retry-After``, rate-limit headers); ``retryable`` False
    marks a 5xx or 429 that a retry cannot fix (a dead engine, an SLO no server state can meet).
    """

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
        retryable: bool | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.headers = dict(headers or {})
        self.retryable = status not in _PERMANENT if retryable is None else retryable

    def response_headers(self) -> dict[str, str]:
        """``headers``, and ``x-should-retry: false`` when a retry cannot help."""
        return self.headers if self.retryable else {**self.headers, "x-should-retry": "false"}


def invalid_request(message: str, *, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, param=param, code=code)


def error_body(status: int, message: str, *, param: str | None = None, code: str | None = None) -> ErrorResponse:
    return ErrorResponse(
        error=ErrorDetail(message=message, type=_TYPES.get(status, "invalid_request_error"), param=param, code=code)
    )


def generation_error(exc: Exception) -> APIError:
    """The API error for a failure while generating: 503 once the engine is dead, else 500.

    A request that failed alone (``RequestFailedError``) says why; anything else is logged with
    its traceback and described only generically, as OpenAI does.
    """
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, EngineDeadError):
        return APIError(503, str(exc), code="engine_dead", retryable=False)
    if isinstance(exc, RequestFailedError):
        return APIError(500, str(exc))
    log.exception("Generation failed", exc_info=exc)
    return APIError(500, "The server had an error while processing your request.")


def error_response(status: int, message: str, *, param: str | None = None, code: str | None = None) -> JSONResponse:
    return api_error_response(APIError(status, message, param=param, code=code))


def api_error_response(error: APIError) -> JSONResponse:
    body = error_body(error.status, error.message, param=error.param, code=error.code)
    return JSONResponse(body.model_dump(), status_code=error.status, headers=error.response_headers())


async def _api_error(_: Request, exc: Exception) -> JSONResponse:
    return api_error_response(generation_error(exc))


def _param(body: Any, loc: list[Any], missing: bool) -> str | None:
    """The error's location as the client wrote it: ``messages.0.content``, not pydantic's
    ``messages.0.content.str`` (a union's branch name); a missing field's own name is kept."""
    path: list[str] = []
    node = body
    for part in loc:
        if (isinstance(node, dict) and part in node) or (
            isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node)
        ):
            node = node[part]
        else:
            if missing:
                path.append(str(part))
            break
        path.append(str(part))
    return ".".join(path) or None


async def _validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    first = errors[0] if errors else {}
    param = _param(exc.body, [part for part in first.get("loc", ()) if part != "body"], first.get("type") == "missing")
    if first.get("type") == "json_invalid":
        message = "The request body is not valid JSON."
    elif first.get("type") == "missing":
        message = f"Missing required parameter: '{param}'."
    else:
        message = f"Invalid value for '{param}': {first.get('msg', 'invalid')}." if param else str(first.get("msg"))
    return error_response(400, message, param=param, code="invalid_value" if first.get("type") != "missing" else None)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    """Starlette's HTTP errors in OpenAI's shape; the router's own 404 and 405 name the method and path.

    Clients turn any 404 into "model not found" (LangChain's ``OpenAIModelNotFoundError``, Claude
    Code's "issue with the selected model"), so the message is what tells the user the URL is wrong;
    its form is OpenAI's own for a URL it does not serve, ``Invalid URL (POST /v1/foo)``.
    """
    assert isinstance(exc, StarletteHTTPException)
    phrase = HTTPStatus(exc.status_code).phrase
    headers = dict(exc.headers or {})
    message = exc.detail if isinstance(exc.detail, str) else phrase
    if message == phrase and exc.status_code == 404:
        message = f"Invalid URL ({request.method} {request.url.path}): ise does not serve this path."
    elif message == phrase and exc.status_code == 405:
        # Starlette's Allow names the first route on the path only (HEAD and GET are two routes).
        headers["Allow"] = ", ".join(_allowed_methods(request))
        message = (
            f"Invalid method ({request.method} {request.url.path}): ise serves this path with {headers['Allow']} only."
        )
    return api_error_response(APIError(exc.status_code, message, headers=headers))


def _allowed_methods(request: Request) -> list[str]:
    """The methods some route serves the request's path with."""
    methods: set[str] = set()
    for route in request.app.routes:
        match, _ = route.matches(request.scope)
        if match != Match.NONE:
            methods |= getattr(route, "methods", None) or set()
    return sorted(methods)


async def _unexpected_error(_: Request, exc: Exception) -> JSONResponse:
    log.exception("Unhandled error", exc_info=exc)
    response = error_response(500, "The server had an error while processing your request.")
    # Starlette answers this one outside every middleware, so the request id is added here.
    request_id = current_request_id.get()
    if request_id is not None:
        response.headers[HEADER] = request_id
    return response


def install_error_handlers(app: FastAPI) -> None:
    for error_type in (APIError, EngineDeadError, RequestFailedError):
        app.add_exception_handler(error_type, _api_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected_error)
