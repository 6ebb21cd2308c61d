"""Every failure answered in the API's error shape: FastAPI's and Starlette's own errors included.

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
from server.protocol.base import FIELD_ERROR
from server.protocol.errors import APIError, api_error_response, error_response, generation_error

log = logging.getLogger(__name__)


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
    if first.get("type") == FIELD_ERROR:  # a request model's own check names its field itself
        ctx = first["ctx"]
        return error_response(400, ctx["message"], param=ctx["param"], code=ctx["code"])
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
