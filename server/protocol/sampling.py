"""The sampling fields chat and text completions share, with OpenAI's and vLLM's spellings.

Seeds are bounded to the signed 64-bit range torch and vLLM use, penalties to where float32
sampling stays finite.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Self

from pydantic import Field, model_validator

from adapters.engine import SEED_MAX, SEED_MIN, StructuredOutput
from server.protocol.base import (
    MAX_LOGIT_BIAS,
    MAX_LOGPROBS,
    MAX_STOP_STRINGS,
    MAX_STOP_TOKEN_IDS,
    Bias,
    Choices,
    Count,
    Name,
    Penalty,
    Probability,
    RequestModel,
    StopString,
    field_error,
    null_is,
)
from server.protocol.constraint_limits import Choice, GrammarText, Regex, Schema, SchemaOrText


class StreamOptions(RequestModel):
    include_usage: Annotated[bool, null_is(False, bool)] = False
    # vLLM's: every chunk carries the usage so far.
    continuous_usage_stats: Annotated[bool, null_is(False, bool)] = False


class JSONSchemaFormat(RequestModel):
    name: Name = "response"
    # ``schema`` shadows a BaseModel attribute, hence the alias.
    json_schema: Schema = Field(default_factory=dict, alias="schema")
    strict: bool | None = None


class ResponseFormat(RequestModel):
    """OpenAI's ``response_format``; vLLM's ``structural_tag`` is not supported."""

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JSONSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_given(self) -> Self:
        if self.type == "json_schema" and self.json_schema is None:
            raise field_error(
                "response_format.json_schema", "response_format of type 'json_schema' needs 'json_schema'."
            )
        return self


@dataclass(frozen=True)
class Constraint:
    """A structured-output constraint and the request field that set it (``param`` of its 400s)."""

    param: str
    output: StructuredOutput


def schema_text(schema: dict[str, Any]) -> str:
    """A schema as compact JSON text, its keys in the order given: xgrammar has the model write properties
    in that order, as OpenAI does; equal schemas share one compiled grammar in the caches."""
    return json.dumps(schema, separators=(",", ":"))


def _vllm_constraints(
    prefix: str,
    schema: dict[str, Any] | None,
    regex: str | None,
    choice: list[str] | None,
    grammar: str | None,
    *,
    json_object: bool = False,
) -> list[Constraint]:
    """vLLM's constraint fields, named ``{prefix}json``, ``{prefix}regex`` and so on."""
    found = []
    if schema is not None:
        found.append(Constraint(f"{prefix}json", StructuredOutput(json=schema_text(schema))))
    if regex is not None:
        found.append(Constraint(f"{prefix}regex", StructuredOutput(regex=regex)))
    if choice is not None:
        found.append(Constraint(f"{prefix}choice", StructuredOutput(choice=tuple(choice))))
    if grammar is not None:
        found.append(Constraint(f"{prefix}grammar", StructuredOutput(grammar=grammar)))
    if json_object:
        found.append(Constraint(f"{prefix}json_object", StructuredOutput(json_object=True)))
    return found


class StructuredOutputsFields(RequestModel):
    """vLLM's ``structured_outputs`` request field: exactly one constraint."""

    json_: SchemaOrText | None = Field(None, alias="json")
    regex: Regex | None = None
    choice: Choice | None = None
    grammar: GrammarText | None = None
    json_object: bool | None = None


class SamplingFields(RequestModel):
    """Sampling settings that chat and text completions share."""

    model: Name
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    top_k: int | None = Field(None, ge=-1)
    min_p: Annotated[Probability, null_is(0.0, Probability)] = 0.0
    seed: int | None = Field(None, ge=SEED_MIN, le=SEED_MAX)
    stop: StopString | Annotated[list[StopString], Field(max_length=MAX_STOP_STRINGS)] | None = None
    n: Annotated[Choices, null_is(1, Choices)] = 1
    presence_penalty: Annotated[Penalty, null_is(0.0, Penalty)] = 0.0
    frequency_penalty: Annotated[Penalty, null_is(0.0, Penalty)] = 0.0
    # Token ids (as JSON object keys, so strings) to a bias added to their logits.
    logit_bias: Annotated[dict[str, Bias], Field(max_length=MAX_LOGIT_BIAS)] | None = None
    stream: Annotated[bool, null_is(False, bool)] = False
    stream_options: StreamOptions | None = None
    user: Name | None = None
    response_format: ResponseFormat | None = None
    # vLLM's extensions, so clients written for vLLM work unchanged.
    ignore_eos: Annotated[bool, null_is(False, bool)] = False
    min_tokens: Annotated[Count, null_is(0, Count)] = 0
    # vLLM takes any positive value; dividing logits by less than ~1e-36 overflows float32, and
    # outside [0.01, 100] the penalty is a ban or a forced repeat, not a nudge.
    repetition_penalty: float | None = Field(None, ge=0.01, le=100.0)
    stop_token_ids: Annotated[list[int], Field(max_length=MAX_STOP_TOKEN_IDS)] | None = None
    include_stop_str_in_output: Annotated[bool, null_is(False, bool)] = False
    prompt_logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)
    structured_outputs: StructuredOutputsFields | None = None
    # vLLM's older names for structured_outputs' fields.
    guided_json: SchemaOrText | None = None
    guided_regex: Regex | None = None
    guided_choice: Choice | None = None
    guided_grammar: GrammarText | None = None
    use_beam_search: Annotated[bool, null_is(False, bool)] = False

    def stop_strings(self) -> list[str]:
        if self.stop is None:
            return []
        stops = [self.stop] if isinstance(self.stop, str) else self.stop
        return [s for s in stops if s]

    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage

    def continuous_usage(self) -> bool:
        """vLLM's continuous_usage_stats, which (as in vLLM) takes effect with include_usage."""
        return self.include_usage() and self.stream_options is not None and self.stream_options.continuous_usage_stats

    def num_logprobs(self) -> int | None:
        """Top alternatives per sampled token the response reports; None: no logprobs."""
        return None

    def unsupported_fields(self) -> list[str]:
        """Fields set to values ise cannot honour: refused rather than silently ignored."""
        return ["use_beam_search"] if self.use_beam_search else []

    def constraints(self) -> list[Constraint]:
        """Every structured-output constraint the request sets, in any of its spellings (OpenAI's
        ``response_format``, vLLM's ``structured_outputs`` and ``guided_*``); the check below
        lets at most one through."""
        found = []
        fmt = self.response_format
        if fmt is not None and fmt.type == "json_object":
            found.append(Constraint("response_format", StructuredOutput(json_object=True)))
        if fmt is not None and fmt.json_schema is not None and fmt.type == "json_schema":
            schema = schema_text(fmt.json_schema.json_schema)
            found.append(Constraint("response_format", StructuredOutput(json=schema)))
        so = self.structured_outputs
        if so is not None:
            found += _vllm_constraints(
                "structured_outputs.", so.json_, so.regex, so.choice, so.grammar, json_object=bool(so.json_object)
            )
        found += _vllm_constraints(
            "guided_", self.guided_json, self.guided_regex, self.guided_choice, self.guided_grammar
        )
        return found

    def constraint(self) -> Constraint | None:
        """The request's structured-output constraint, if it sets one."""
        found = self.constraints()
        return found[0] if found else None

    @model_validator(mode="after")
    def _request_checks(self) -> Self:
        """What the request alone can be refused for, refused while it is parsed: no 400 of these
        costs a tokenization or a grammar compile."""
        unsupported = self.unsupported_fields()
        if unsupported:
            raise field_error(unsupported[0], f"ise does not support '{unsupported[0]}'.")
        if self.stream_options is not None and not self.stream:
            raise field_error(
                "stream_options", "The 'stream_options' parameter is only allowed when 'stream' is enabled."
            )
        if self.stream and self.prompt_logprobs is not None:
            raise field_error("prompt_logprobs", "prompt_logprobs are not available when stream is true.")
        found = self.constraints()
        if len(found) > 1:
            first, second = found[0].param, found[1].param
            raise field_error(
                second, f"'{second}' sets a structured-output constraint, and so does '{first}': send only one."
            )
        return self
