"""ise's one source of configuration: defaults, a TOML file, ``ISE_*`` variables and flags.

Later sources win: a flag beats an environment variable, which beats the file, which beats the
default. The same model serves ``ise serve`` and the tests, so nothing is configured twice.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import Field
from pydantic_settings import (
    BaseSettings,
    CliSettingsSource,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "ise"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ISE_", protected_namespaces=(), extra="forbid")

    config: Path | None = Field(None, description="TOML file of settings; flags and ISE_* variables override it")
    model: str | None = Field(
        None, description="Local transformers model directory or hub id; unset serves the built-in model"
    )
    served_model_name: str | None = Field(None, description="Model name clients send; defaults to the model's")
    host: str = Field("127.0.0.1", description="Address to listen on")
    port: int = Field(8000, ge=0, le=65535, description="Port to listen on")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="Weights and KV cache dtype; auto picks bfloat16 on CPUs with AMX, else float32"
    )
    max_model_len: int | None = Field(
        None, gt=0, description="Context window in tokens, prompt plus output; defaults to min(model's, 2048)"
    )
    generation_config: Literal["auto", "none"] = Field(
        "auto",
        description="Sampling defaults for fields a request omits: auto takes the model's generation_config.json, "
        "none uses OpenAI's (temperature 1)",
    )
    max_num_seqs: int = Field(32, gt=0, description="Requests decoded together at most; the rest wait")
    max_num_batched_tokens: int = Field(
        2048, gt=0, description="Tokens one engine step computes at most: prompt chunks plus one per decoding request"
    )
    prefill_chunk_tokens: int = Field(
        16,
        gt=0,
        description="Largest chunk of a long prompt a step takes while other requests are decoding; "
        "smaller keeps their inter-token latency flat while a long prompt arrives",
    )
    long_prompt_tokens: int = Field(
        256,
        gt=0,
        description="Prompts longer than this are prefilled in chunks of --prefill-chunk-tokens while other "
        "requests decode; shorter ones are taken whole, first come first served",
    )
    kv_cache_gib: float = Field(2.0, gt=0, description="Memory for the paged KV cache, in GiB")
    block_size: int = Field(16, gt=0, le=1024, description="Tokens per KV cache block")
    prefix_caching: bool = Field(
        True, description="Reuse the KV cache of prompt prefixes earlier requests computed (--no-prefix-caching)"
    )
    model_impl: Literal["auto", "ise", "transformers"] = Field(
        "auto",
        description="Model code: ise's fused forward for Llama-family models (llama, mistral, qwen2), "
        "transformers' for any causal LM; auto takes ise's where it covers the model",
    )
    quantization: Literal["none", "int8"] = Field(
        "none",
        description="int8: the decoder layers' linear weights stored in int8 (one scale per output column), "
        "the arithmetic kept in float32 (float32 dtype only); one stream decoded 1.5x faster here, perplexity "
        "+0.75% (benchmarks/RESULTS.md), and batched output still equals solo output",
    )
    threads: int | None = Field(None, gt=0, description="Torch threads; defaults to the usable cores")
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
    def load(cls, argv: list[str], prog: str = "ise serve") -> Settings:
        """Merge the sources in order of precedence; the file is the one a flag or ISE_CONFIG names."""
        cli: dict[str, Any] = CliSettingsSource(
            cls, cli_parse_args=argv, cli_prog_name=prog, cli_kebab_case=True, cli_implicit_flags=True
        )()
        env: dict[str, Any] = EnvSettingsSource(cls, env_prefix="ISE_")()
        config_file = cli.get("config") or env.get("config")
        from_file = TomlConfigSettingsSource(cls, toml_file=Path(config_file))() if config_file else {}
        return cls(**{**from_file, **env, **cli})
