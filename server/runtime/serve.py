"""``ise serve``: settings from flags, environment and file, logging, the app, and uvicorn until stopped."""

from __future__ import annotations

import ipaddress
import logging
import sys
import time

import uvicorn
from pydantic import ValidationError

from adapters.factory import choose_engine
from server.config.command_line import split_serve_args
from server.config.settings import Settings
from server.config.vllm_flags import read_vllm_flags
from server.endpoints.event_stream import UnfinishedStreamFilter
from server.endpoints.state import build_models
from server.gateway.drain import DrainingServer
from server.gateway.request_id import RequestIdLogFilter
from server.runtime.app import create_app

log = logging.getLogger("ise")


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
    try:
        models = build_models(settings, [*args.engine, *vllm_flags.engine_argv])
    except ValueError as exc:
        raise SystemExit(f"ise serve: {exc}") from None
    try:
        app = create_app(
            models,
            on_ready=lambda: log.info(
                "Serving %s at http://%s:%d/v1%s (ready %.1f s after start)",
                ", ".join(state.model_name for state in models.states),
                settings.host,
                settings.port,
                f", the chat page at http://{settings.host}:{settings.port}/" if settings.web_ui else "",
                time.monotonic() - started,
            ),
            serve_web_ui=settings.web_ui,
            grpc_address=None if settings.grpc_port is None else (settings.host, settings.grpc_port),
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
        access_log=False,  # ise logs each request once, when it ends (server/gateway/access_log.py)
        timeout_graceful_shutdown=int(settings.drain_timeout) + 10,
    )
    try:
        DrainingServer(config, [state.gateway for state in models.states]).run()
    except KeyboardInterrupt:
        # uvicorn shuts down gracefully on Ctrl-C, then raises the signal again; the shutdown is
        # already logged, so a traceback would only alarm.
        log.info("Stopped")


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"
