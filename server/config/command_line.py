"""``ise serve`` takes ``vllm serve``'s command line: the model first, then ise's and vLLM's flags.

Launch scripts, compose files and Helm charts are written as ``vllm serve MODEL --flags``. ise
reads the flags it declares (``Settings``, in vLLM's spellings where both have the option) and
the rest of vLLM's server flags (``server.config.vllm_flags``), and hands every other flag, with its
values, to vLLM's own engine argument parser, which knows and validates them; the CPU engine
refuses them with a message that says so. Splitting needs only to know which flags are whose
and how many values each takes.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from server.config.vllm_flags import VLLM_FLAG_ARITY

_NUMBER = re.compile(r"^-\d")


@dataclass(frozen=True)
class SplitArgs:
    ise: list[str]  # for Settings.load
    engine: list[str]  # for vLLM's engine argument parser
    vllm: list[tuple[str, str | None]] = field(default_factory=list)  # vLLM's server flags, for read_vllm_flags


def _is_flag(token: str) -> bool:
    return token.startswith("-") and not _NUMBER.match(token)


def split_serve_args(
    argv: list[str], ise_flags: Mapping[str, int | None], vllm_flags: Mapping[str, int] = VLLM_FLAG_ARITY
) -> SplitArgs:
    """Split ``argv`` into ise's flags, vLLM's server flags and the rest; a positional argument is ``--model``.

    Several models (``--model A --model B``, or positional ones) become ``--model A`` and the rest
    ``--models``, the further models' entries.

    ``ise_flags`` gives each of ise's flags the number of values it takes: 0 for a switch, 1, or
    None for several (``--served-model-name a b``, passed to ise as one JSON list); ``vllm_flags``
    the same for vLLM's server flags (0 or 1). Any other flag takes the tokens up to the next
    flag. The model may come first, as in ``vllm serve MODEL``, or after the flags
    (``docker run IMAGE MODEL`` behind an entrypoint with flags).
    """
    ise: list[str] = []
    engine: list[str] = []
    vllm: list[tuple[str, str | None]] = []
    more: list[str] = []  # models after the first
    index = 0
    while index < len(argv):
        token = argv[index]
        name = token.split("=", 1)[0]
        model, taken = (token, 1) if not _is_flag(token) else (None, 0)
        if name == "--model":
            model, taken = (token.split("=", 1)[1], 1) if "=" in token else (next(iter(argv[index + 1 :]), None), 2)
        if taken:
            if model is None:
                ise.append(token)  # --model without a value: Settings.load says so
            elif "--model" in ise:
                more.append(model)
            else:
                ise += ["--model", model]
            index += taken
            continue
        end = index + 1
        if "=" not in token:
            while end < len(argv) and not _is_flag(argv[end]):
                end += 1
        if name in ise_flags:
            arity = ise_flags[name]
            if arity is not None and "=" not in token:
                end = min(end, index + 1 + arity)
            values = argv[index + 1 : end]
            ise += [name, json.dumps(values)] if arity is None and values else [token, *values]
        elif name in vllm_flags:
            end = min(end, index + 1 + vllm_flags[name])
            value = token.split("=", 1)[1] if "=" in token else next(iter(argv[index + 1 : end]), None)
            vllm.append((name, value))
        else:
            engine += argv[index:end]
        index = end
    if more:  # --model A --model B: B is a further model, an entry of --models
        ise += ["--models", json.dumps([{"model": m} for m in more])]
    return SplitArgs(ise, engine, vllm)
