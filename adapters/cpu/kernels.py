"""ise's native CPU kernels (``kernels.cpp``), compiled once per machine on first use.

torch's C++ extension loader builds the source with the system's C++ compiler and caches the
result; the build directory's name carries a hash of the source and of the CPU's flags, so a
changed kernel or a cache carried to a different CPU (``-march=native``) is rebuilt, never run
stale.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from functools import cache
from pathlib import Path
from typing import Protocol, cast

import ninja
import torch
from torch.utils import cpp_extension

from adapters.cpu.numerics import cpu_flags

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("kernels.cpp")
# -march=native and -ffast-math let the compiler vectorize the inner loops (SIMD partial sums)
# and the exponentials (glibc's vector expf). No kernel meets an infinity: the softmax subtracts
# the largest real score. Without -fopenmp, at::parallel_for compiles to a plain loop and every
# kernel runs on one core; with it, the kernels share torch's OpenMP runtime (the libgomp.so.1
# torch loaded first is the one the dynamic loader hands this module) and its thread count.
CFLAGS = ["-O3", "-march=native", "-ffast-math", "-fopenmp"]
LDFLAGS = ["-fopenmp"]


class CPUKernels(Protocol):
    """The compiled module's functions; shapes and layouts are documented in kernels.cpp."""

    def paged_attention(
        self,
        out: torch.Tensor,
        q: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        block_tables: torch.Tensor,
        seq_index: torch.Tensor,
        context_lens: torch.Tensor,
        block_size: int,
        scale: float,
    ) -> None: ...

    def rms_norm(
        self, x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor, eps: float
    ) -> torch.Tensor: ...

    def silu_mul(self, gate_up: torch.Tensor) -> torch.Tensor: ...

    def pack_linear_weight(self, weight: torch.Tensor, quantize: bool) -> tuple[torch.Tensor, torch.Tensor]: ...

    def linear(
        self, x: torch.Tensor, packed: torch.Tensor, scales: torch.Tensor, bias: torch.Tensor | None, n: int
    ) -> torch.Tensor: ...

    def rotary_cache_write(
        self,
        qkv: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        heads: int,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        slots: torch.Tensor,
    ) -> None: ...


def _build_dir(cache_dir: Path) -> tuple[str, Path]:
    key = hashlib.sha256(
        b"\0".join(
            [
                SOURCE.read_bytes(),
                " ".join([*CFLAGS, *LDFLAGS]).encode(),
                " ".join(sorted(cpu_flags())).encode(),
                torch.__version__.encode(),
            ]
        )
    ).hexdigest()[:16]
    name = f"ise_kernels_{key}"
    return name, cache_dir / "kernels" / name


@cache
def cpu_kernels(cache_dir: Path) -> CPUKernels:
    """Compile (first time, about a minute) or load the kernels; raise with the compiler's words if it fails."""
    name, build = _build_dir(cache_dir)
    build.mkdir(parents=True, exist_ok=True)
    fresh = not any(build.glob("*.so"))
    if fresh:
        log.info("Compiling ise's CPU kernels into %s (once per machine) ...", build)
    started = time.monotonic()
    # torch runs the build tool by name; the ninja wheel's copy works where none is installed.
    os.environ["PATH"] = os.pathsep.join([ninja.BIN_DIR, os.environ.get("PATH", "")])
    try:
        module = cpp_extension.load(
            name=name,
            sources=[str(SOURCE)],
            extra_cflags=CFLAGS,
            extra_ldflags=LDFLAGS,
            build_directory=str(build),
            verbose=False,
        )
    except (RuntimeError, OSError) as exc:
        raise RuntimeError(
            f"Could not build ise's CPU kernels (they need a C++ compiler, g++ or clang++): {exc}"
        ) from exc
    if fresh:
        log.info("Kernels built in %.0f s", time.monotonic() - started)
    return cast(CPUKernels, module)
