"""The ``ise`` command: ``ise serve`` loads a model and serves it over the OpenAI API."""

from __future__ import annotations

import ipaddress
import logging
import sys
import time
from pathlib import Path

import uvicorn
from pydantic import ValidationError

from adapters.builtin_model import BUILTIN_MODEL_NAME, ensure_builtin_model
from adapters.factory import build_engine, choose_engine
from adapters.model_info import ModelInfo
from server.app import create_app
from server.command_line import split_serve_args
from server.drain import DrainingServer
from server.event_stream import UnfinishedStreamFilter
from server.generation import SamplingDefaults
from server.request_id import RequestIdLogFilter
from server.settings import Settings
from server.state import ServerState
from server.text import Tokenization
from server.vllm_flags import read_vllm_flags

log = logging.getLogger("ise")

USAGE = """usage: ise serve [MODEL] [options]  serve a model over an OpenAI-compatible API
       ise bench {run,compare} ...    benchmark an endpoint, or ise against its peers

With no --model, ise serve serves the built-in SmolLM2-135M-Instruct; --help after a command lists its options."""


def build_state(settings: Settings, engine_argv: list[str] | None = None) -> ServerState:
    """Resolve the model, build its engine and load the tokenizer; the model loads at app start.

    ``engine_argv``: flags ise does not declare, for vLLM's engine argument parser.
    """
    model: str | Path
    if settings.model is None:
        model, default_name = ensure_builtin_model(settings.cache_dir), BUILTIN_MODEL_NAME
    else:
        model, default_name = settings.model, settings.model
    info = ModelInfo.load(model)
    try:
        engine = build_engine(settings, info, cache_dir=settings.cache_dir, engine_argv=engine_argv or [])
    except ValueError as exc:
        raise SystemExit(f"ise serve: {exc}") from None
    defaults = SamplingDefaults.from_model(info) if settings.generation_config == "auto" else SamplingDefaults()
    names = settings.served_model_name or [default_name]
    return ServerState(
        engine=engine,
        tokenization=Tokenization(model, info.vocab_size, chat_template=settings.chat_template),
        model_name=names[0],
        aliases=tuple(names[1:]),
        model_path=str(model),
        sampling_defaults=defaults,
        gateway=settings,
        api=settings,
        batch_slots=settings.max_num_seqs,
    )


def serve(argv: list[str]) -> None:
    started = time.monotonic()
    args = split_serve_args(argv, Settings.cli_flags())
    try:
        settings = Settings.load(args.ise)
    except ValidationError as exc:
        print(f"ise serve: invalid settings:\n{exc}", file=sys.stderr)
        raise SystemExit(2) from None
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s [%(request_id)s]: %(message)s"
    )
    for handler in logging.getLogger().handlers:
        handler.addFilter(RequestIdLogFilter())
    logging.getLogger("uvicorn.error").addFilter(UnfinishedStreamFilter())
    try:
        vllm_flags = read_vllm_flags(args.vllm, choose_engine(settings.engine))
    except ValueError as exc:
        raise SystemExit(f"ise serve: {exc}") from None
    if vllm_flags.accepted:
        log.info(
            "vLLM flags accepted without effect (ise already does as they ask, or they do not apply): %s",
            "; ".join(vllm_flags.accepted),
        )
    state = build_state(settings, [*args.engine, *vllm_flags.engine_argv])
    try:
        app = create_app(
            state,
            on_ready=lambda: log.info(
                "Serving %s at http://%s:%d/v1 (ready %.1f s after start)",
                state.model_name,
                settings.host,
                settings.port,
                time.monotonic() - started,
            ),
        )
    except ValueError as exc:
        raise SystemExit(f"ise serve: {exc}") from None
    if not settings.api_key and settings.api_keys_file is None and not _is_loopback(settings.host):
        log.warning("Listening on %s without an API key: anyone who can reach it can use it", settings.host)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        access_log=False,  # ise logs each request once, when it ends (server/access_log.py)
        timeout_graceful_shutdown=int(settings.drain_timeout) + 10,
    )
    try:
        DrainingServer(config, state).run()
    except KeyboardInterrupt:
        # uvicorn shuts down gracefully on Ctrl-C, then raises the signal again; the shutdown is
        # already logged, so a traceback would only alarm.
        log.info("Stopped")


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help"):
        print(USAGE)
        raise SystemExit(0 if args else 2)
    command, rest = args[0], args[1:]
    if command == "serve":
        serve(rest)
    elif command == "bench":
        from benchmarks.cli import main as bench_main  # heavy imports, only for benchmarks

        bench_main(rest)
    else:
        print(f"ise: unknown command {command!r}\n\n{USAGE}", file=sys.stderr)
        raise SystemExit(2)


if __name__ == "__main__":
    main()
