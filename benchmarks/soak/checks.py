"""Whether a response is well formed: a stream event by event, a whole response at once.

Status and framing are the client's; here are the OpenAI response's rules: one id, a
finish_reason for every choice, usage that adds up and matches the request, and the same prompt
always counted the same prompt tokens.
"""

from __future__ import annotations

import json
from typing import Any

from benchmarks.soak.plans import Plan


class PromptLedger:
    """Prompt tokens each prompt was counted: the same prompt must always count the same."""

    def __init__(self) -> None:
        self.seen: dict[tuple[str, int, bool], int] = {}

    def check(self, plan: Plan, prompt_tokens: int) -> str | None:
        known = self.seen.setdefault(plan.prompt_key, prompt_tokens)
        if known != prompt_tokens:
            return f"prompt_tokens {prompt_tokens} for a prompt counted {known} before"
        return None


def _usage_errors(usage: Any, plan: Plan, reasons: dict[int, str], ledger: PromptLedger) -> list[str]:
    if not isinstance(usage, dict):
        return [f"usage is {usage!r}"]
    try:
        prompt, completion, total = (int(usage[k]) for k in ("prompt_tokens", "completion_tokens", "total_tokens"))
    except (KeyError, TypeError, ValueError):
        return [f"usage {usage!r} lacks a count"]
    errors = []
    if total != prompt + completion:
        errors.append(f"total_tokens {total} != {prompt} + {completion}")
    if prompt <= 0:
        errors.append(f"prompt_tokens {prompt}")
    most = plan.n * plan.max_tokens
    if not 0 < completion <= most:
        errors.append(f"completion_tokens {completion} outside 1..{most}")
    if (plan.fixed_length or all(r == "length" for r in reasons.values())) and completion != most:
        errors.append(f"completion_tokens {completion}, expected {most} (every choice ran to max_tokens)")
    if (mismatch := ledger.check(plan, prompt)) is not None:
        errors.append(mismatch)
    return errors


def _reason_errors(plan: Plan, reasons: dict[int, str]) -> list[str]:
    errors = []
    if sorted(reasons) != list(range(plan.n)):
        errors.append(f"finish_reason for choices {sorted(reasons)}, expected 0..{plan.n - 1}")
    for index, reason in reasons.items():
        if reason not in ("stop", "length"):
            errors.append(f"choice {index} finish_reason {reason!r}")
        elif plan.fixed_length and reason != "length":
            errors.append(f"choice {index} finished with {reason!r} though ignore_eos")
    return errors


class StreamCheck:
    """Checks a stream's events one by one, and the whole at its end."""

    def __init__(self, plan: Plan, model: str, ledger: PromptLedger) -> None:
        self.plan, self.model, self.ledger = plan, model, ledger
        self.object = "chat.completion.chunk" if plan.api == "chat" else "text_completion"
        self.ids: set[str] = set()
        self.reasons: dict[int, str] = {}
        self.started: set[int] = set()
        self.usage: Any = None
        self.usage_last = False
        self.done = False
        self.events = 0
        self.errors: list[str] = []

    def take(self, data: str) -> bool:
        """Check one event; whether it carried text."""
        self.events += 1
        if self.done:
            self.errors.append("data after [DONE]")
            return False
        if data == "[DONE]":
            self.done = True
            return False
        try:
            chunk = json.loads(data)
        except json.JSONDecodeError:
            self.errors.append(f"event is not JSON: {data[:120]!r}")
            return False
        if not isinstance(chunk, dict) or "error" in chunk:
            self.errors.append(f"error event: {data[:200]}")
            return False
        if self.usage_last:
            self.errors.append("a chunk after the usage chunk")
        self.ids.add(str(chunk.get("id")))
        if chunk.get("object") != self.object or chunk.get("model") != self.model:
            self.errors.append(f"chunk object/model {chunk.get('object')!r}/{chunk.get('model')!r}")
        if self.plan.include_usage:
            if "usage" not in chunk:
                self.errors.append("chunk without a usage field though include_usage")
            elif chunk["usage"] is not None:
                self.usage, self.usage_last = chunk["usage"], True
                if chunk.get("choices"):
                    self.errors.append("the usage chunk has choices")
        elif "usage" in chunk:
            self.errors.append("usage field without include_usage")
        text = False
        for choice in chunk.get("choices") or []:
            text = self._choice(choice) or text
        return text

    def _choice(self, choice: dict[str, Any]) -> bool:
        index = choice.get("index")
        if not isinstance(index, int) or not 0 <= index < self.plan.n:
            self.errors.append(f"choice index {index!r}")
            return False
        if index in self.reasons:
            self.errors.append(f"choice {index} continued after its finish_reason")
        if self.plan.api == "chat":
            delta = choice.get("delta")
            if not isinstance(delta, dict):
                self.errors.append(f"choice {index} without a delta")
                return False
            if index not in self.started and delta.get("role") != "assistant":
                self.errors.append(f"choice {index}'s first delta has no assistant role")
            content = delta.get("content")
        else:
            content = choice.get("text")
        self.started.add(index)
        if content is not None and not isinstance(content, str):
            self.errors.append(f"choice {index} content {content!r}")
        if (reason := choice.get("finish_reason")) is not None:
            self.reasons[index] = str(reason)
        return bool(content)

    def finish(self) -> list[str]:
        errors = list(self.errors)
        if not self.done:
            errors.append("no [DONE]")
        if len(self.ids) != 1:
            errors.append(f"chunk ids {sorted(self.ids)[:3]}")
        errors += _reason_errors(self.plan, self.reasons)
        if self.plan.include_usage:
            if not self.usage_last:
                errors.append("no usage chunk though include_usage")
            else:
                errors += _usage_errors(self.usage, self.plan, self.reasons, self.ledger)
        return errors


def whole_errors(plan: Plan, content_type: str | None, body: bytes, model: str, ledger: PromptLedger) -> list[str]:
    """What is wrong with a non-streamed response, if anything."""
    if not (content_type or "").startswith("application/json"):
        return [f"content-type {content_type!r}"]
    try:
        response = json.loads(body)
    except json.JSONDecodeError:
        return [f"body is not JSON: {body[:120]!r}"]
    expected = "chat.completion" if plan.api == "chat" else "text_completion"
    if not isinstance(response, dict) or response.get("object") != expected or response.get("model") != model:
        return [f"not a {expected} of {model}: {body[:200]!r}"]
    errors = []
    if not response.get("id"):
        errors.append("no id")
    choices = response.get("choices") or []
    reasons: dict[int, str] = {}
    for choice in choices:
        index = choice.get("index")
        if not isinstance(index, int) or index in reasons:
            errors.append(f"choice index {index!r}")
            continue
        reasons[index] = str(choice.get("finish_reason"))
        if plan.api == "chat":
            message = choice.get("message") or {}
            if message.get("role") != "assistant" or not isinstance(message.get("content"), str):
                errors.append(f"choice {index} message {message!r}")
        elif not isinstance(choice.get("text"), str):
            errors.append(f"choice {index} text {choice.get('text')!r}")
    errors += _reason_errors(plan, reasons)
    errors += _usage_errors(response.get("usage"), plan, reasons, ledger)
    return errors
