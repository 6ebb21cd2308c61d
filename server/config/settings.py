"""ise's one source of configuration: defaults, a TOML file, ``ISE_*`` variables and flags.

Later sources win: a flag beats an environment variable, which beats the file, which beats the
default. The same model serves ``ise serve`` and the tests, so nothing is configured twice.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from pydantic import Field
from pydantic_settings import (
    BaseSettings,
    CliSettingsSource,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from adapters.config import EngineArgs
from server.gateway.options import GatewayArgs
from server.text.options import ApiArgs

# vLLM's (or older) spellings of ise's flags: flag -> the other name it answers to, so that
# `vllm serve` command lines work unchanged.
CLI_ALIASES = {
    "long-prefill-token-threshold": "long-prompt-tokens",
    "prefix-caching": "enable-prefix-caching",
    "log-level": "uvicorn-log-level",
}


def _takes_list(annotation: Any) -> bool:
    """Whether a setting's type is a list, through ``X | None`` and ``Annotated[...]``."""
    return get_origin(annotation) is list or any(_takes_list(arg) for arg in get_args(annotation))


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "ise"


class ModelEntry(EngineArgs):
    """One more model to serve beside ``--model`` (``--model A --model B``, or a ``[[models]]`` table in TOML).

    Its engine options default to the server's; those set here are its own (its ``kv_cache_gib``,
    ``max_num_seqs``, ``engine``, ...), so each model's share of memory and batch is explicit.
    """

    model: str = Field(description="Local model directory, hub id, or a built-in model's name")
    served_model_name: list[str] | None = Field(None, description="Names clients may call it by; default: --model's")


# The server's own settings; the engine's, the gateway's and the API's come from EngineArgs,
# GatewayArgs and ApiArgs, declared there once. The docstring is what `ise serve --help` shows first.
class Settings(BaseSettings, EngineArgs, GatewayArgs, ApiArgs):
    """Serve a model over an OpenAI-compatible API (every option is also an ISE_* variable and a key of --config)."""

    model_config = SettingsConfigDict(env_prefix="ISE_", protected_namespaces=(), extra="forbid")

    config: Path | None = Field(None, description="TOML file of settings; flags and ISE_* variables override it")
    model: str | None = Field(
        None, description="Local transformers model directory or hub id; unset serves the built-in model"
    )
    served_model_name: list[str] | None = Field(
        None,
        description="Names clients may call the model by (--served-model-name a b); responses carry the name "
        "the request used; defaults to the model's",
    )
    models: list[ModelEntry] = Field(
        default_factory=list,
        description="Further models served beside --model, each routed to by the request's model field: "
        "--model A --model B, or [[models]] tables in the config file, each with its own engine options",
    )
    chat_template: str | None = Field(
        None, description="A Jinja chat template, or a file holding one, instead of the tokenizer's"
    )
    host: str = Field("127.0.0.1", description="Address to listen on")
    port: int = Field(8000, ge=0, le=65535, description="Port to listen on")
    web_ui: bool = Field(True, description="Serve the chat page at / (--no-web-ui: / answers an empty 200)")
    grpc_port: int | None = Field(
        None,
        ge=0,
        le=65535,
        description="Also serve gRPC on this port, on --host: KServe v2's GRPCInferenceService with Triton's "
        "LLM tensors, and grpc.health.v1 (unset: no gRPC)",
    )
    generation_config: Literal["auto", "none"] = Field(
        "auto",
        description="Sampling defaults for fields a request omits: auto takes the model's generation_config.json, "
        "none uses OpenAI's (temperature 1)",
    )
    cache_dir: Path = Field(default_factory=default_cache_dir, description="Where the built-in model is prepared")
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="Server log level")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings)

    @classmethod
    def cli_flags(cls) -> dict[str, int | None]:
        """Every flag spelling ``load`` understands, with the values it takes (None: several)."""
        flags: dict[str, int | None] = {"-h": 0, "--help": 0}
        for field_name, info in cls.model_fields.items():
            flag = field_name.replace("_", "-")
            arity = 0 if info.annotation is bool else None if _takes_list(info.annotation) else 1
            for spelling in filter(None, (flag, CLI_ALIASES.get(flag))):
                flags[f"--{spelling}"] = arity
                if arity == 0:
                    flags[f"--no-{spelling}"] = 0
        return flags

    @classmethod
    def load(cls, argv: list[str], prog: str = "ise serve") -> Settings:
        """Merge the sources in order of precedence; the file is the one a flag or ISE_CONFIG names."""
        cli: dict[str, Any] = CliSettingsSource(
            cls,
            cli_parse_args=argv,
            cli_prog_name=prog,
            cli_kebab_case=True,
            cli_implicit_flags=True,
            cli_shortcuts=CLI_ALIASES,
        )()
        env: dict[str, Any] = EnvSettingsSource(cls, env_prefix="ISE_")()
        config_file = cli.get("config") or env.get("config")
        from_file = TomlConfigSettingsSource(cls, toml_file=Path(config_file))() if config_file else {}
        # vLLM deployments set VLLM_API_KEY; it counts where no ise source names a key.
        vllm_key = {"api_key": os.environ["VLLM_API_KEY"]} if os.environ.get("VLLM_API_KEY") else {}
        return cls(**{**vllm_key, **from_file, **env, **cli})
