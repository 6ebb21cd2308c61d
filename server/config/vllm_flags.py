"""vLLM's serving flags that are not ise options: what each does on ise, in one table.

``vllm serve`` takes its OpenAI server's flags beside the engine's, and deployment recipes carry
them (``--disable-log-requests``, ``--enable-request-id-headers``, ...). The ones ise has as
options of its own are ``Settings`` fields under vLLM's spelling (``--host``, ``--api-key``,
``--chat-template``, ``--enable-force-include-usage``, ...). Every other flag of vLLM's server is
here, so none falls through to vLLM's engine parser (which does not know them) or to the CPU
engine's refusal: accepted where ise already behaves as the flag asks or the flag has no effect
on ise (named with the reason in one start-up log line, never silently), refused with the reason
where ise cannot give what it asks. ``VLLM_FLAGS`` is the table; the README shows it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from adapters.config import EngineKind


@dataclass(frozen=True)
class VllmFlag:
    """What one of vLLM's serving flags does on ise.

    ``accepted`` False: refused, ``why`` saying why. ``values``: the flag takes a value, and the
    values listed are those ise already behaves as (others are refused, ``why`` saying why); an
    empty ``values`` on a flag that takes one accepts any. ``engine``: one of vLLM's engine
    arguments, which ``--engine vllm`` hands to vLLM (where it takes effect); ``why`` is then
    what it is on ise's CPU engine.
    """

    accepted: bool
    why: str
    takes_value: bool = False
    values: frozenset[str] = frozenset()
    engine: bool = False


def _accepted(why: str, *values: str, takes_value: bool = False, engine: bool = False) -> VllmFlag:
    return VllmFlag(True, why, takes_value or bool(values), frozenset(values), engine)


def _refused(why: str, *, takes_value: bool = False) -> VllmFlag:
    return VllmFlag(False, why, takes_value)


_NO_COHERE = "ise serves no Cohere API"
_NO_ANTHROPIC = "ise serves no Anthropic API"
_NO_SCORING = "ise serves no pooling or scoring"
_NO_OUTPUT_LOG = "ise does not log generated text"
_PLAIN_HTTP = "ise serves plain HTTP: terminate TLS in a proxy in front of it"
_DP_SUPERVISOR = "used by vLLM's multi-port data-parallel launcher only, which ise does not run"
_REQUEST_ID = "ise sends x-request-id on every response"
_CACHED_TOKENS = "ise always reports usage.prompt_tokens_details.cached_tokens"
_NO_REQUEST_LOG = "ise logs no request's contents unless --log-prompts"
_ERROR_STACK = "ise logs the traceback of every server error (500), and none for client errors"
_TOKEN_IDS = "ise writes logprobs' tokens as text with their bytes, never as token_id:N"
_LOAD = "ise always tracks its load: GET /load reports it, as does the endpoint-load-metrics header when asked"
_TIMINGS = (
    "ise always sends a request's timings: the Server-Timing header, and usage.server_timing in a stream's usage chunk"
)
_TOKENIZER_INFO = "ise serves no /tokenizer_info route"
_OFFLINE_DOCS = "ise's /docs load Swagger UI from its CDN"
_SCALE_OUT = "ise serves none of vLLM's scale-out endpoints"
_TOKENS_ONLY = "ise serves the OpenAI API, not vLLM's tokens-only endpoints"
_REQUEST_TEMPLATE = "ise renders no chat template sent in a request"
_TOOLS_NONE = "with tool_choice none, ise shows the tools to the model and tells it not to call them"
_REMOTE_CODE = (
    "ise reads the model's config and tokenizer itself and never runs code shipped with a model; "
    "a model that needs remote code cannot be served"
)

# vLLM 0.32's server flags (vllm/entrypoints/launchers/cli_args.py) that are not ise options, with
# their --no- forms, the logging and remote-code flags among its engine arguments, and
# --disable-log-requests from older vLLMs. A --no- form asks for vLLM's default.
VLLM_FLAGS: dict[str, VllmFlag] = {
    # ise already does what these ask, or they do not apply to it.
    "--enable-request-id-headers": _accepted(_REQUEST_ID),
    "--enable-prompt-tokens-details": _accepted(_CACHED_TOKENS),
    "--disable-log-requests": _accepted(_NO_REQUEST_LOG),
    "--no-enable-log-requests": _accepted(_NO_REQUEST_LOG, engine=True),
    "--enable-log-requests": _accepted(
        "ise logs one line per request (id, tokens, timings); --log-prompts adds its prompt", engine=True
    ),
    "--disable-log-stats": _accepted("ise's CPU engine logs no periodic statistics (/metrics has them)", engine=True),
    "--disable-uvicorn-access-log": _accepted(
        "uvicorn's access log is off in ise; ise's own line per request stays (it has the request's tokens "
        "and timings; --disable-access-log-for-endpoints leaves paths out of it)"
    ),
    "--no-disable-uvicorn-access-log": _accepted("ise logs one line per request"),
    "--log-error-stack": _accepted(_ERROR_STACK),
    "--no-log-error-stack": _accepted(_ERROR_STACK),
    "--no-trust-remote-code": _accepted(_REMOTE_CODE, engine=True),
    "--chat-template-content-format": _accepted(
        "ise renders message content as a string (its text parts joined)", "auto", "string"
    ),
    "--response-role": _accepted("ise's responses are the assistant's", "assistant"),
    "--fingerprint-mode": _accepted("ise sends system_fingerprint null", "none"),
    "--tool-strict-level": _accepted(
        "ise enforces calls by grammar where tool_choice requires them, and auto calls in its generic format",
        "auto",
    ),
    "--api-server-count": _accepted("ise runs one API server process", "1"),
    "--trust-request-mm-kwargs": _accepted("ise serves text-only models"),
    "--no-trust-request-mm-kwargs": _accepted("ise serves text-only models"),
    "--no-trust-request-chat-template": _accepted(_REQUEST_TEMPLATE),
    "--no-exclude-tools-when-tool-choice-none": _accepted(_TOOLS_NONE),
    "--no-return-tokens-as-token-ids": _accepted(_TOKEN_IDS),
    "--enable-server-load-tracking": _accepted(_LOAD),
    "--no-enable-server-load-tracking": _accepted(_LOAD),
    "--enable-per-request-metrics": _accepted(_TIMINGS),
    "--no-enable-per-request-metrics": _accepted(_TIMINGS),
    "--no-enable-log-outputs": _accepted(_NO_OUTPUT_LOG),
    "--enable-log-deltas": _accepted(_NO_OUTPUT_LOG),
    "--no-enable-log-deltas": _accepted(_NO_OUTPUT_LOG),
    "--no-enable-tokenizer-info-endpoint": _accepted(_TOKENIZER_INFO),
    "--no-enable-offline-docs": _accepted(_OFFLINE_DOCS),
    "--no-enable-scale-out": _accepted(_SCALE_OUT),
    "--no-tokens-only": _accepted(_TOKENS_ONLY),
    "--no-enable-ssl-refresh": _accepted(_PLAIN_HTTP),
    "--enable-flash-late-interaction": _accepted(_NO_SCORING),
    "--no-enable-flash-late-interaction": _accepted(_NO_SCORING),
    "--cohere-is-reasoning-model": _accepted(_NO_COHERE),
    "--no-cohere-is-reasoning-model": _accepted(_NO_COHERE),
    "--cohere-format": _accepted(_NO_COHERE, takes_value=True),
    "--anthropic-disabled-thinking-effort": _accepted(_NO_ANTHROPIC, takes_value=True),
    "--data-parallel-supervisor-port": _accepted(_DP_SUPERVISOR, takes_value=True),
    "--dp-supervisor-probe-interval-s": _accepted(_DP_SUPERVISOR, takes_value=True),
    "--dp-supervisor-probe-timeout-s": _accepted(_DP_SUPERVISOR, takes_value=True),
    "--dp-supervisor-probe-failure-threshold": _accepted(_DP_SUPERVISOR, takes_value=True),
    # What ise cannot give.
    "--trust-remote-code": _refused(_REMOTE_CODE),
    "--no-enable-request-id-headers": _refused(_REQUEST_ID),
    "--no-enable-prompt-tokens-details": _refused(_CACHED_TOKENS),
    "--return-tokens-as-token-ids": _refused(_TOKEN_IDS),
    "--enable-log-outputs": _refused(_NO_OUTPUT_LOG),
    "--enable-tokenizer-info-endpoint": _refused(_TOKENIZER_INFO),
    "--enable-offline-docs": _refused(_OFFLINE_DOCS),
    "--lora-modules": _refused("ise serves no LoRA adapters", takes_value=True),
    "--default-chat-template-kwargs": _refused(
        "ise has no server-wide chat_template_kwargs; requests send their own", takes_value=True
    ),
    "--trust-request-chat-template": _refused(_REQUEST_TEMPLATE),
    "--exclude-tools-when-tool-choice-none": _refused(_TOOLS_NONE),
    "--tool-parser-plugin": _refused(
        "ise loads no tool parser plugins; --tool-call-parser names its own formats", takes_value=True
    ),
    "--tool-server": _refused("ise runs no built-in tools or tool servers", takes_value=True),
    "--fingerprint-value": _refused("ise sends system_fingerprint null", takes_value=True),
    "--uds": _refused("ise listens on TCP only (--host, --port)", takes_value=True),
    "--root-path": _refused("ise serves at the root path: have the proxy strip its prefix", takes_value=True),
    "--middleware": _refused("ise loads no ASGI middleware by import path", takes_value=True),
    "--ssl-keyfile": _refused(_PLAIN_HTTP, takes_value=True),
    "--ssl-certfile": _refused(_PLAIN_HTTP, takes_value=True),
    "--ssl-ca-certs": _refused(_PLAIN_HTTP, takes_value=True),
    "--ssl-cert-reqs": _refused(_PLAIN_HTTP, takes_value=True),
    "--ssl-ciphers": _refused(_PLAIN_HTTP, takes_value=True),
    "--enable-ssl-refresh": _refused(_PLAIN_HTTP),
    "--h11-max-incomplete-event-size": _refused(
        "ise keeps uvicorn's header limits; --max-request-body-bytes bounds bodies", takes_value=True
    ),
    "--h11-max-header-count": _refused("ise keeps uvicorn's header limits", takes_value=True),
    "--headless": _refused("ise always runs its API server"),
    "--grpc": _refused("ise serves HTTP only"),
    "--grpc-port": _refused("ise serves HTTP only", takes_value=True),
    "--tokens-only": _refused(_TOKENS_ONLY),
    "--enable-scale-out": _refused(_SCALE_OUT),
}

# Values each flag takes on the command line, for splitting it (server.config.command_line).
VLLM_FLAG_ARITY = {flag: int(entry.takes_value) for flag, entry in VLLM_FLAGS.items()}


@dataclass(frozen=True)
class ReadFlags:
    """vLLM's serving flags as read for one engine: those it takes, and those accepted without effect."""

    engine_argv: list[str]  # for vLLM's engine parser: its engine arguments among the flags
    accepted: list[str]  # "--flag (why)", for the start-up log line


def read_vllm_flags(given: Sequence[tuple[str, str | None]], engine: EngineKind) -> ReadFlags:
    """``given``: the flags of ``VLLM_FLAGS`` on the command line, each with its value.

    Raises ValueError, naming the flag and why, for one ise refuses or a value it cannot honour.
    """
    engine_argv: list[str] = []
    accepted: list[str] = []
    for flag, value in given:
        entry = VLLM_FLAGS[flag]
        if entry.takes_value and value is None:
            raise ValueError(f"{flag} needs a value")
        if not entry.accepted or (entry.values and value not in entry.values):
            shown = flag if value is None else f"{flag} {value}"
            raise ValueError(f"{shown}: vLLM's option is not available on ise: {entry.why}")
        if entry.engine and engine == "vllm":
            engine_argv += [flag] if value is None else [flag, value]
        else:
            accepted.append(f"{flag} ({entry.why})")
    return ReadFlags(engine_argv, accepted)
