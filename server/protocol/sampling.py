"""The sampling fields chat and text completions share, with OpenAI's and vLLM's spellings.

Seeds are bounded to the signed 64-bit range torch and vLLM use, penalties to where float32
sampling stays finite.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from adapters.engine import SEED_MAX, SEED_MIN
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
