"""``ise serve`` takes ``vllm serve``'s command line: the model first, then ise's and vLLM's flags.

Launch scripts, compose files and Helm charts are written as ``vllm serve MODEL --flags``. ise
reads the flags it declares (``Settings``, in vLLM's spellings where both have the option) and
hands every other flag, with its values, to vLLM's own argument parser, which knows and validates
them; the CPU engine refuses them with a message that says so. Splitting needs only to know
which flags are ise's: the values after a flag are the tokens up to the next flag.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass

_NUMBER = re.compile(r"^-\d")


@dataclass(frozen=True)
class SplitArgs:
    ise: list[str]  # for Settings.load
    engine: list[str]  # for vLLM's engine argument parser


def _is_flag(token: str) -> bool:
    return token.startswith("-") and not _NUMBER.match(token)


def split_serve_args(argv: list[str], ise_flags: Iterable[str], list_flags: Iterable[str] = ()) -> SplitArgs:
    """Split ``argv`` into ise's flags and the rest; a leading positional argument is ``--model``.

    ``list_flags`` take several values (``--served-model-name a b``); they reach ise as one JSON list.
    """
    known, lists = set(ise_flags), set(list_flags)
    ise: list[str] = []
    engine: list[str] = []
    index = 0
    if argv and not _is_flag(argv[0]):
        ise += ["--model", argv[0]]
        index = 1
    while index < len(argv):
        token = argv[index]
        end = index + 1
        if "=" not in token:
            while end < len(argv) and not _is_flag(argv[end]):
                end += 1
        values = argv[index + 1 : end]
        name = token.split("=", 1)[0]
        if name not in known:
            engine += [token, *values]
        elif name in lists and values:
            ise += [name, json.dumps(values)]
        else:
            ise += [token, *values]
        index = end
    return SplitArgs(ise, engine)
