"""Options for what the API does with requests' text: strictness, tool calls, reasoning, grammars; declared once.

``server.config.settings.Settings`` inherits them (as it inherits ``EngineArgs`` and ``GatewayArgs``), so
each is a flag, an ``ISE_*`` variable and a key of the TOML file. Names and values follow vLLM's
frontend flags (``--tool-call-parser hermes``, ``--reasoning-parser deepseek_r1``).
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from server.text.reasoning import REASONING_PARSERS
from server.text.tool_parsers import TOOL_PARSERS


def _one_of(names: Collection[str]) -> AfterValidator:
    """A name from a registry of parsers; the registry is the one place the names are written."""

    def check(value: str) -> str:
        if value not in names:
            raise ValueError(f"must be one of {', '.join(names)}, not {value!r}")
        return value

    return AfterValidator(check)


ToolCallParserName = Annotated[str, _one_of([*TOOL_PARSERS, "auto"])]
ReasoningParserName = Annotated[str, _one_of(list(REASONING_PARSERS))]


class ApiArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")

    strict: bool = Field(
        False,
        description="Refuse (400, naming it) any request field that would take no effect, instead of listing "
        "it in the x-ignored-params response header",
    )
    tool_call_parser: ToolCallParserName = Field(
        "auto",
        description=f"How model output becomes tool calls: {', '.join(TOOL_PARSERS)} (ise_json: ise's generic JSON "
        "format, for chat templates without tools), or auto (detected from the chat template)",
    )
    enable_auto_tool_choice: bool = Field(
        True,
        description="Accepted so vLLM command lines work: tool_choice auto always works on ise, whatever its value",
    )
    enable_force_include_usage: bool = Field(
        False,
        description="Every stream ends with its usage chunk, as if the request sent stream_options.include_usage "
        "(vLLM's flag)",
    )
    reasoning_parser: ReasoningParserName | None = Field(
        None,
        description=f"Put a reasoning model's thinking in reasoning_content, not content: one of "
        f"{', '.join(REASONING_PARSERS)} (deepseek_r1: the template opens <think>; the others: the model writes "
        "<think>...</think> itself); unset: none",
    )
    reasoning_tags: list[str] = Field(
        ["<think>", "</think>"],
        min_length=2,
        max_length=2,
        description="The opening and closing tags around the thinking, for --reasoning-parser",
    )
    grammar_compile_timeout: float = Field(
        5.0,
        gt=0,
        le=600,
        description="Seconds a structured-output constraint (a schema, regex, grammar, choice, or the tools' "
        "schemas) may take to compile into a grammar; a slower one is refused with a 400 and its compile stopped",
    )
    grammar_compile_workers: int = Field(
        1,
        ge=1,
        le=64,
        description="Processes that compile structured-output constraints, each on one core, started with the "
        "first constraint",
    )
    grammar_compile_queue: int = Field(
        16,
        ge=0,
        le=10_000,
        description="Constraints that may wait for a free compile worker; beyond them a request with a new "
        "constraint is refused with 429 server_overloaded (constraints compiled before are not held up)",
    )
    responses_store: str = Field(
        "memory",
        pattern=r"^(memory|sqlite:.+)$",
        description="Where /v1/responses keeps responses for previous_response_id and GET: memory, or sqlite:PATH "
        "(a file, so restarts keep conversations)",
    )
    responses_store_max_entries: int = Field(
        10_000, ge=0, description="Responses the store keeps at most; beyond it the oldest are forgotten"
    )
    responses_store_max_bytes: int = Field(
        64 * 1024 * 1024, ge=0, description="Bytes of JSON the store keeps at most; beyond it the oldest are forgotten"
    )
    responses_store_ttl: float = Field(
        30 * 24 * 3600.0, gt=0, description="Seconds a stored response is kept (OpenAI's 30 days by default)"
    )
