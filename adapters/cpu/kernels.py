"""The engine's one native kernel, paged decode attention, compiled once per machine on first use.

torch's C++ extension loader builds ``paged_attention.cpp`` with the system's C++ compiler and
caches the result; the build directory's name carries a hash of the source and of the CPU's flags,
so a changed kernel or a cache carried to a different CPU (``-march=native``) is rebuilt, never
run stale.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from functools import cache
from pathlib import Path

import ninja
import torch
from torch.utils import cpp_extension

from adapters.cpu.attention import PagedKernel
from adapters.cpu.numerics import cpu_flags

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("paged_attention.cpp")
# -march=native and -ffast-math let the compiler vectorize the head_dim loops (SIMD partial sums)
# and the exponentials (glibc's vector expf). The kernel never meets an infinity: its softmax
# subtracts the largest real score.
CFLAGS = ["-O3", "-march=native", "-ffast-math"]


def _build_dir(cache_dir: Path) -> tuple[str, Path]:
    key = hashlib.sha256(
        b"\0".join([SOURCE.read_bytes(), " ".join(sorted(cpu_flags())).encode(), torch.__version__.encode()])
    ).hexdigest()[:16]
    name = f"ise_paged_attention_{key}"
    return name, cache_dir / "kernels" / name


@cache
def paged_attention_kernel(cache_dir: Path) -> PagedKernel:
    """Compile (first time, about a minute) or load the kernel; raise with the compiler's words if it fails."""
    name, build = _build_dir(cache_dir)
    build.mkdir(parents=True, exist_ok=True)
    fresh = not any(build.glob("*.so"))
    if fresh:
        log.info("Compiling the paged attention kernel into %s (once per machine) ...", build)
    started = time.monotonic()
    # torch runs the build tool by name; the ninja wheel's copy works where none is installed.
    os.environ["PATH"] = os.pathsep.join([ninja.BIN_DIR, os.environ.get("PATH", "")])
    try:
        module = cpp_extension.load(
            name=name,
            sources=[str(SOURCE)],
            extra_cflags=CFLAGS,
            build_directory=str(build),
            verbose=False,
        )
    except (RuntimeError, OSError) as exc:
        raise RuntimeError(
            f"Could not build ise's paged attention kernel (it needs a C++ compiler, g++ or clang++): {exc}"
        ) from exc
    if fresh:
        log.info("Kernel built in %.0f s", time.monotonic() - started)
    kernel: PagedKernel = module.paged_attention
    return kernel
