"""What every request and response model of the API is built on, and the bounds requests are held to.

Requests accept every field, so SDKs and UIs that send fields ise has no use for keep working,
but nothing is ignored silently: a field that takes no effect is named in the response's
``x-ignored-params`` header (and refused under ``--strict``; see ``ignored_fields``), and a field
whose omission would change the answer in a way the client relies on is refused outright (see
``unsupported_fields`` on the request models). vLLM's extensions are accepted so vLLM clients
work unchanged.

Every number a request carries is bounded at the edge, to what the engines can take: finite
floats only (Python's JSON parser turns ``1e400`` into inf and accepts ``NaN``), sizes below.
"""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field
from pydantic_core import PydanticCustomError

# Bounds on the sizes of a request's parts, checked while it is parsed, so oversized requests are
# refused (400 naming the field) before any work is done for them. OpenAI's own limits where it
# has them (n up to 128); elsewhere far above what a client needs and far below what would let
# one request cost the server seconds (a stop string is matched against each new token's text).

# Bounds on the sizes of a request's parts, checked while it is parsed, so oversized requests are
# refused (400 naming the field) before any work is done for them. OpenAI's own limits where it
# has them (n up to 128); elsewhere far above what a client needs and far below what would let
# one request cost the server seconds (a stop string is matched against each new token's text).
MAX_NAME_CHARS = 256  # model, user, a message's name


MAX_STOP_STRINGS = 16  # OpenAI allows 4; vLLM clients send more


MAX_STOP_CHARS = 1024


MAX_STOP_TOKEN_IDS = 1024


MAX_MESSAGES = 4096


MAX_CONTENT_PARTS = 1024


MAX_PROMPTS = 256  # a batch of prompts in one text completion


MAX_CHOICES = 128  # prompts x n: each one a request in the engine


MAX_LOGIT_BIAS = 1024  # entries of logit_bias (OpenAI documents no limit; 300 is common)


MAX_LOGPROBS = 20  # OpenAI's top_logprobs bound; vLLM's default --max-logprobs


MAX_TOOLS = 128  # OpenAI's limit on tools per request


Name = Annotated[str, Field(max_length=MAX_NAME_CHARS)]


def null_is(default: Any, schema: Any) -> BeforeValidator:
    """OpenAI's nullable fields: ``null`` means the default (clients send unset options as null).

    ``schema`` is the field's type with its bounds, published as ``schema | None``.
    """
    return BeforeValidator(lambda value: default if value is None else value, json_schema_input_type=schema | None)


Penalty = Annotated[float, Field(ge=-2.0, le=2.0)]


Choices = Annotated[int, Field(ge=1, le=MAX_CHOICES)]


StopString = Annotated[str, Field(max_length=MAX_STOP_CHARS)]


Probability = Annotated[float, Field(ge=0.0, le=1.0)]


Count = Annotated[int, Field(ge=0)]


Bias = Annotated[float, Field(ge=-100.0, le=100.0)]


# OpenAI's defaults of fields ise does not act on: a request that sends one at its default asks
# for nothing ise fails to do, so it is not reported as ignored.
NO_EFFECT_VALUES: dict[str, tuple[object, ...]] = {
    "store": (False,),
    "service_tier": ("auto", "default"),
    "parallel_tool_calls": (True, False),
    "skip_special_tokens": (True,),
    "spaces_between_special_tokens": (True,),
    "include_obfuscation": (False,),
    "add_generation_prompt": (True,),
}


class RequestModel(BaseModel):
    # Fields ise does not declare are kept (not refused, not dropped unseen): ``ignored_fields``
    # names them for the x-ignored-params header.
    model_config = ConfigDict(extra="allow", allow_inf_nan=False, strict=True)

    def ignored_fields(self, prefix: str = "") -> list[str]:
        """Fields sent that take no effect, as dotted paths (``stream_options.include_obfuscation``).

        ``null`` and OpenAI's own default values are not counted: they ask for nothing.
        """
        # An ordered set: a body can name a hundred thousand fields, each message its own.
        found = dict.fromkeys(
            f"{prefix}{name}"
            for name, value in (self.model_extra or {}).items()
            if value is not None and not (name in NO_EFFECT_VALUES and value in NO_EFFECT_VALUES[name])
        )
        for name in type(self).model_fields:
            value = getattr(self, name)
            # A list holds models or none (its type says which), so its first item tells: a prompt
            # of a million token ids is not walked.
            items = value if isinstance(value, list) and value and isinstance(value[0], RequestModel) else [value]
            for item in items:
                if isinstance(item, RequestModel):
                    found.update(dict.fromkeys(item.ignored_fields(f"{prefix}{name}.")))
        return list(found)


class ResponseModel(BaseModel):
    pass


def _is_none(value: object) -> bool:
    return value is None


# A field OpenAI leaves out of a response (rather than sending null) when it has no value.
Absent: Any = Field(None, exclude_if=_is_none)


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def now() -> int:
    return int(time.time())


def field_error(param: str, message: str, code: str | None = None) -> PydanticCustomError:
    """A request check's failure, for a model validator to raise: the 400 names ``param`` (the field
    as the client wrote it, ``stream_options`` or ``structured_outputs.regex``), says ``message``
    as it is and carries ``code``, where pydantic's own location would name the model instead."""
    return PydanticCustomError(FIELD_ERROR, "{message}", {"message": message, "param": param, "code": code})


FIELD_ERROR = "ise_field_error"
