"""What the soak sends: each request planned ahead, its kind (how its client behaves) and its body.

The kinds come in the exact proportions the options ask for, shuffled with a seed, so two runs
with one seed send the same requests in the same order.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Literal, get_args

Kind = Literal[
    "complete", "slow_reader", "abort_before_headers", "abort_mid_stream", "abort_non_stream", "stalled_reader"
]
KINDS: tuple[Kind, ...] = get_args(Kind)
ABORT_KINDS: tuple[Kind, ...] = ("abort_before_headers", "abort_mid_stream", "abort_non_stream")


WORDS = (
    "the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "while", "seven", "tired", "engineers",
    "watch", "servers", "answer", "questions", "about", "rivers", "mountains", "cities", "music", "history",
    "weather", "gardens", "bridges", "trains", "oceans", "planets", "poetry", "coffee", "bread", "maps", "clocks",
    "lamps", "windows", "stories", "numbers", "colours", "letters", "birds",
)  # fmt: skip


@dataclass(frozen=True)
class SoakOptions:
    requests: int = 2000
    concurrency: int = 32
    warmup: int = 200  # requests of the same mix before the memory baseline, not counted in ``requests``
    disconnect_fraction: float = 0.2  # split evenly between the three abort kinds
    slow_fraction: float = 0.05
    stalled_fraction: float = 0.01  # at least one stalled reader whenever this is above 0
    min_tokens: int = 4
    max_tokens: int = 16
    stall_choices: int = 16  # a stalled reader's n ...
    stall_tokens: int = 64  # ... and max_tokens: enough output to fill every buffer on the way
    send_timeout_s: float = 2.0  # the server's --stream-send-timeout
    stall_max_s: float = 60.0  # a stalled reader reads again after this at the latest
    request_timeout_s: float = 120.0  # a request still running after this (plus a stall) is hung
    max_duration_s: float = 3600.0  # no request starts after this; the rest count as not sent
    settle_timeout_s: float = 60.0  # time the server gets after a phase to return to idle
    rss_growth: float = 0.05  # resident memory growth allowed from after warm-up to the end
    max_abort_release_s: float = 1.0  # mean abort-to-KV-free time allowed
    seed: int = 0


@dataclass(frozen=True)
class Plan:
    """One request, and how its client behaves."""

    index: int
    kind: Kind
    api: Literal["chat", "completions"]
    stream: bool
    include_usage: bool
    n: int
    max_tokens: int
    fixed_length: bool  # ignore_eos: the output is exactly max_tokens per choice
    temperature: float
    seed: int | None
    prompt: int  # index into the prompt pool
    system: bool  # chat with the shared system prompt (a prefix the cache can reuse)
    wait_s: float  # aborts: time before closing; slow reader: pause before each read
    events: int  # abort_mid_stream: events read before closing
    reset: bool  # close with a reset (SO_LINGER 0) rather than a FIN
    partial_body: bool  # abort_before_headers: send only half the body

    def body(self, model: str, prompts: Prompts) -> dict[str, Any]:
        body: dict[str, Any] = {"model": model, "max_tokens": self.max_tokens, "stream": self.stream, "n": self.n}
        text = prompts.user[self.prompt]
        if self.api == "chat":
            system = [{"role": "system", "content": prompts.system}] if self.system else []
            body["messages"] = [*system, {"role": "user", "content": text}]
        else:
            body["prompt"] = (prompts.system + "\n\n" if self.system else "") + text
        body["temperature"] = self.temperature
        if self.seed is not None:
            body["seed"] = self.seed
        if self.fixed_length:
            body["ignore_eos"] = True
        if self.stream and self.include_usage:
            body["stream_options"] = {"include_usage": True}
        return body

    @property
    def path(self) -> str:
        return "/v1/chat/completions" if self.api == "chat" else "/v1/completions"

    @property
    def prompt_key(self) -> tuple[str, int, bool]:
        """Requests with the same key send the same prompt, so must be counted the same prompt tokens."""
        return (self.api, self.prompt, self.system)


@dataclass(frozen=True)
class Prompts:
    system: str
    user: list[str]

    @classmethod
    def make(cls, rng: random.Random, count: int = 48) -> Prompts:
        def words(k: int) -> str:
            return " ".join(rng.choice(WORDS) for _ in range(k))

        return cls(system=words(120), user=[words(rng.randint(6, 48)) for _ in range(count)])


def make_plans(options: SoakOptions, count: int, first_index: int, rng: random.Random) -> list[Plan]:
    """``count`` requests whose kinds come in the exact proportions of ``options``, shuffled."""
    d = options.disconnect_fraction
    shares: dict[Kind, float] = {
        "abort_before_headers": d / 3,
        "abort_mid_stream": d / 3,
        "abort_non_stream": d / 3,
        "slow_reader": options.slow_fraction,
        "stalled_reader": options.stalled_fraction,
    }
    kinds: list[Kind] = []
    for kind, share in shares.items():
        planned = round(share * count)
        if kind == "stalled_reader" and share > 0:
            planned = max(planned, 1)
        kinds += [kind] * planned
    if len(kinds) > count:
        raise ValueError("the fractions of special kinds add up to more than every request")
    kinds += ["complete"] * (count - len(kinds))
    rng.shuffle(kinds)
    return [_plan(first_index + i, kind, options, rng) for i, kind in enumerate(kinds)]


def _plan(index: int, kind: Kind, options: SoakOptions, rng: random.Random) -> Plan:
    if kind == "stalled_reader":
        return Plan(
            index, kind, "chat", stream=True, include_usage=False, n=options.stall_choices,
            max_tokens=options.stall_tokens, fixed_length=True, temperature=0.0, seed=None, prompt=rng.randrange(48),
            system=False, wait_s=0.0, events=0, reset=False, partial_body=False,
        )  # fmt: skip
    streams = {"slow_reader": True, "abort_mid_stream": True, "abort_non_stream": False}
    stream = streams.get(kind, rng.random() < 0.5)
    max_tokens = rng.randint(options.min_tokens, options.max_tokens)
    n = 2 if rng.random() < 0.1 else 1
    sampled = rng.random() < 0.3
    wait_s = {
        "abort_before_headers": rng.choice([0.0, rng.uniform(0.0, 0.05)]),
        "abort_non_stream": rng.uniform(0.02, 1.0),
        "slow_reader": rng.uniform(0.02, 0.2),
    }.get(kind, 0.0)
    return Plan(
        index=index,
        kind=kind,
        api="chat" if rng.random() < 0.5 else "completions",
        stream=stream,
        include_usage=stream and rng.random() < 0.5,
        n=n,
        max_tokens=max_tokens,
        fixed_length=rng.random() < 0.5,
        temperature=rng.choice([0.7, 1.0]) if sampled else 0.0,
        seed=rng.randrange(2**31) if sampled and rng.random() < 0.5 else None,
        prompt=rng.randrange(48),
        system=rng.random() < 0.3,
        wait_s=wait_s,
        events=rng.randint(1, max(1, max_tokens * n)),
        reset=rng.random() < 0.5,
        partial_body=kind == "abort_before_headers" and rng.random() < 0.25,
    )
