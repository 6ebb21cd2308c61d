"""One function builds the engine the settings ask for (vLLM's ``build_async_engine_client``).

``server/`` calls only this, so which engine runs, and how its options are resolved, stays in
``adapters/``.
"""

from __future__ import annotations

from pathlib import Path

from adapters.config import EngineArgs
from adapters.cpu.engine import CPUEngine
from adapters.cpu.engine_core import CPUEngineConfig
from adapters.engine import Engine
from adapters.model_info import ModelInfo


def build_engine(args: EngineArgs, model: ModelInfo, *, cache_dir: Path) -> Engine:
    """The engine for ``model``, not yet started (``await engine.start()`` loads it).

    Raises ValueError, naming the option to change, where the options cannot run on this model
    or machine. ``cache_dir`` holds what engines build once per machine (ise's CPU kernels).
    """
    return CPUEngine(CPUEngineConfig.resolve(args, model, kernel_dir=cache_dir))
