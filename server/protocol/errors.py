"""Errors in OpenAI's shape, ``{"error": {"message", "type", "param", "code"}}``, for every failure.

OpenAI SDKs read ``error.message`` and the status code to raise their typed exceptions, so no
response may fall back to FastAPI's ``{"detail": ...}`` or its 422 validation shape.
"""

from __future__ import annotations

import logging
import math

from fastapi.responses import JSONResponse

from adapters.engine import EngineDeadError, RequestFailedError
from server.protocol.common import ErrorDetail, ErrorResponse

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


def retry_after(seconds: float | None) -> dict[str, str]:
    """``Retry-After`` (whole seconds, at least 1) and the openai SDK's finer ``retry-after-ms``."""
    wait = max(1.0, seconds or 1.0)
    return {"retry-after": str(math.ceil(wait)), "retry-after-ms": str(math.ceil(wait * 1000))}
