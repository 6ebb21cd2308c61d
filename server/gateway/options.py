"""The gateway's options, declared once: keys, rate limits, backpressure, SLO, limits, CORS, drain.

``server.config.settings.Settings`` inherits them (as it inherits ``EngineArgs``), so each is a flag, an
``ISE_*`` variable and a key of the TOML file. Names follow vLLM's frontend flags where it has the
option (``--api-key``, ``--allowed-origins``, ``--allow-credentials``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field
from pydantic_settings import NoDecode


def string_list(value: Any) -> Any:
    """A list of strings from any of the spellings deployments use.

    ``ISE_API_KEY=k1`` (one), ``k1,k2`` (several), a JSON list (vLLM's ``--allowed-origins
    '["https://a"]'``), or a list whose items are any of these (several flag values).
    """
    if value is None:
        return None
    items = value if isinstance(value, list) else [value]
    flat: list[Any] = []
    for item in items:
        if isinstance(item, str) and item.lstrip().startswith("["):
            flat += string_list(json.loads(item))
        elif isinstance(item, str):
            flat += [part.strip() for part in item.split(",") if part.strip()]
        else:
            flat.append(item)
    return flat


StringList = Annotated[list[str], NoDecode, BeforeValidator(string_list)]


class GatewayArgs(BaseModel):
    """What stands between clients and the engine; every limit here is checked before any work."""

    model_config = ConfigDict(extra="forbid")

    api_key: StringList | None = Field(
        None,
        description="Keys clients must send as 'Authorization: Bearer KEY' (several: --api-key k1 k2, or "
        "ISE_API_KEY=k1,k2; VLLM_API_KEY is read too). With keys set, every route but /health needs one",
    )
    api_keys_file: Path | None = Field(
        None,
        description="TOML file of named keys, each with optional limits ([keys.NAME] key = ..., "
        "requests_per_minute = ..., tokens_per_minute = ...), so keys stay out of ps and the environment",
    )
    requests_per_minute: int | None = Field(
        None, gt=0, description="Requests a key (or, without keys, a client address) may start per minute"
    )
    tokens_per_minute: int | None = Field(
        None,
        gt=0,
        description="Tokens a key may ask for per minute: prompt tokens plus max_tokens (or the context left) "
        "per choice, charged when the request is admitted",
    )
    max_waiting_requests: int | None = Field(
        None, gt=0, description="Requests admitted but not yet streaming their first token, at most; more get 429"
    )
    max_waiting_prompt_tokens: int | None = Field(
        None, gt=0, description="Prompt tokens of the waiting requests, at most; more get 429"
    )
    slo_ttft_ms: float | None = Field(
        None,
        gt=0,
        description="Time-to-first-token target: a request whose predicted TTFT misses it gets 429 at once "
        "(the x-slo-ttft-ms request header sets a request's own target); /metrics counts the requests that "
        "met and missed it (ise_request_slo_total)",
    )
    slo_tpot_ms: float | None = Field(
        None,
        gt=0,
        description="Time-per-output-token target, in ms per token after the first: /metrics counts the requests "
        "that met and missed it (ise_request_slo_total), for goodput; no request is refused for it",
    )
    max_request_body_bytes: int = Field(
        4 * 1024 * 1024, gt=0, description="Largest request body accepted; larger bodies get 413"
    )
    stream_send_timeout: float = Field(
        30.0,
        gt=0,
        description="Seconds a stream may wait for a client to take its next event; a client that stops "
        "reading is dropped after it and its request aborted",
    )
    sse_keep_alive_interval: float = Field(
        15.0,
        ge=0,
        description="Seconds between keep-alive comments (': keep-alive') on every stream, so proxies that cut "
        "idle connections keep a stream that waits in the queue, reads a long prompt or pauses between tokens "
        "(Messages streams send Anthropic's ping event instead); 0 sends none",
    )
    otlp_traces_endpoint: str | None = Field(
        None,
        description="Where to send OpenTelemetry traces, one span per request (vLLM's flag): OTLP over gRPC, or "
        "over HTTP (the whole URL) with OTEL_EXPORTER_OTLP_TRACES_PROTOCOL=http/protobuf; needs ise[tracing]",
    )
    drain_timeout: float = Field(
        30.0,
        ge=0,
        description="On SIGTERM, seconds in-flight requests get to finish (new ones get 503) before the rest "
        "are ended with an error event and the server exits",
    )
    allowed_origins: StringList = Field(
        default_factory=list,
        description="CORS: origins browsers may call from ('*' for any); empty turns CORS off",
    )
    allowed_methods: StringList = Field(default_factory=lambda: ["*"], description="CORS: methods allowed")
    allowed_headers: StringList = Field(default_factory=lambda: ["*"], description="CORS: request headers allowed")
    allow_credentials: bool = Field(False, description="CORS: allow cookies and credentials")
    log_prompts: bool = Field(False, description="Log each request's prompt with its one end-of-request line")
    max_log_len: int | None = Field(
        None, ge=0, description="With --log-prompts, the characters of each prompt logged at most (unset: all)"
    )
    disable_access_log_for_endpoints: StringList = Field(
        default_factory=list,
        description="Paths whose requests get no log line, comma-separated ('/health,/metrics'), as vLLM's flag",
    )
    disable_fastapi_docs: bool = Field(False, description="Serve no /docs, /redoc or /openapi.json")
