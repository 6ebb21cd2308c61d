"""``ise serve`` loads a model and serves it over the OpenAI API; ``ise bench`` measures servers.

This module only dispatches: it sits above ``server`` and ``benchmarks`` so that neither imports
the other's command line (the benchmarks start ise's server; the server never imports them).
"""

from __future__ import annotations

import sys

USAGE = """usage: ise serve [MODEL] [options]  serve a model over an OpenAI-compatible API
       ise bench {run,compare,...} ...  benchmark an endpoint, or ise against its peers

With no --model, ise serve serves the built-in SmolLM2-135M-Instruct; --help after a command lists its options."""


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help"):
        print(USAGE)
        raise SystemExit(0 if args else 2)
    command, rest = args[0], args[1:]
    # Each command imports only what it needs: serving never loads the benchmarks' plotting stack.
    if command == "serve":
        from server.runtime.serve import serve

        serve(rest)
    elif command == "bench":
        from benchmarks.cli import main as bench_main

        bench_main(rest)
    else:
        print(f"ise: unknown command {command!r}\n\n{USAGE}", file=sys.stderr)
        raise SystemExit(2)
