"""Numeric choices for the CPU engine, made from what the CPU can do.

Machines of the same kind differ: an AVX2-only EPYC runs float32 fastest, while a Xeon with
AMX runs bfloat16 batched decode faster than float32 (benchmarks/RESULTS.md). ``auto`` picks by
CPU flags.
"""

from __future__ import annotations

import os
from functools import cache
from pathlib import Path

import torch

from adapters.config import DTYPES

# The --dtype choices (adapters.config.DTYPES) other than auto, as torch's dtypes of the same names.
TORCH_DTYPES: dict[str, torch.dtype] = {name: getattr(torch, name) for name in DTYPES if name != "auto"}


@cache
def cpu_flags() -> frozenset[str]:
    """The CPU feature flags from /proc/cpuinfo; empty where that file does not exist."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def has_amx_bf16() -> bool:
    return "amx_bf16" in cpu_flags()


def has_bf16_kernels() -> bool:
    """Whether oneDNN has bfloat16 kernels for this CPU (AVX512-BF16 or AMX), so torch runs it fast."""
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def resolve_dtype(name: str) -> torch.dtype:
    """Turn a dtype setting into a torch dtype; ``auto`` takes bfloat16 only where AMX runs it fast."""
    if name == "auto":
        return torch.bfloat16 if has_amx_bf16() else torch.float32
    try:
        return TORCH_DTYPES[name]
    except KeyError:
        raise ValueError(f"Unknown dtype {name!r}; choose {', '.join(DTYPES)}") from None


def default_threads() -> int:
    """All cores this process may run on: torch's own default can count cores outside our affinity."""
    return len(os.sched_getaffinity(0))


def cpu_description() -> str:
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    extras = sorted(f for f in cpu_flags() if f.startswith(("amx", "avx512_bf16", "avx2")))
    return f"{model} [{' '.join(extras)}]"
