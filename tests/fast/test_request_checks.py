"""What a request alone can be refused for is refused while it is parsed, naming the field.

Such a 400 must cost the server nothing: no tokenization of the prompt, no grammar compile, no
charge against the key's request limit. The tokenizer and the compile workers are made to fail
here, so a check that ran after either would answer 500 instead of its 400.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from tests.fast.helpers import state_of
from tests.fast.tiny_model import MODEL
from tests.helpers import assert_openai_error

HI = [{"role": "user", "content": "hi"}]
TOOL = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
CHAT = "/v1/chat/completions"
TEXT = "/v1/completions"
TOKENIZE = "/tokenize"


@pytest.fixture
def costly(app: FastAPI, monkeypatch: pytest.MonkeyPatch) -> None:
    """Tokenizing or compiling anything now fails the request with a 500."""

    def refuse(*_: Any, **__: Any) -> Any:
        raise AssertionError("a request refused for its fields alone was tokenized or compiled")

    state = state_of(app)
    monkeypatch.setattr(state.tokenization, "chat_prompt", refuse)
    monkeypatch.setattr(state.tokenization, "encode", refuse)
    monkeypatch.setattr(state.grammars, "problem", refuse)


@pytest.mark.parametrize(
    ("path", "body", "param", "message"),
    [
        (CHAT, {"messages": HI, "stream_options": {"include_usage": True}}, "stream_options", "only allowed when"),
        (TEXT, {"prompt": "hi", "stream": True, "prompt_logprobs": 1}, "prompt_logprobs", "not available when stream"),
        (CHAT, {"messages": HI, "use_beam_search": True}, "use_beam_search", "does not support"),
        (TEXT, {"prompt": "hi", "suffix": "end"}, "suffix", "does not support"),
        (TEXT, {"prompt": "hi", "best_of": 3}, "best_of", "does not support"),
        (CHAT, {"messages": HI, "tool_choice": "required"}, "tool_choice", "needs tools"),
        (CHAT, {"messages": HI, "tools": [TOOL], "tool_choice": {"type": "function", "function": {"name": "g"}}},
         "tool_choice", "'g', which is not among the tools"),
        (TOKENIZE, {"messages": HI, "tool_choice": "auto"}, "tool_choice", "needs tools"),
        (CHAT, {"messages": HI, "guided_regex": "a+", "structured_outputs": {"choice": ["a"]}}, "guided_regex",
         "so does 'structured_outputs.choice'"),
        (TEXT, {"prompt": "hi", "structured_outputs": {"regex": "a+", "grammar": "root ::= \"a\""}},
         "structured_outputs.grammar", "so does 'structured_outputs.regex'"),
        (CHAT, {"messages": HI, "response_format": {"type": "json_schema"}}, "response_format.json_schema",
         "needs 'json_schema'"),
    ],
)  # fmt: skip
async def test_refused_while_parsing_naming_the_field(
    http: httpx.AsyncClient, costly: None, path: str, body: dict[str, Any], param: str, message: str
) -> None:
    response = await http.post(path, json={"model": MODEL, **body})
    error = assert_openai_error(response, 400)
    assert error["param"] == param
    assert message in error["message"]
    assert error["type"] == "invalid_request_error"


async def test_a_request_refused_for_its_fields_is_not_charged(app: FastAPI, http: httpx.AsyncClient) -> None:
    state_of(app).gateway.options.requests_per_minute = 1
    bad = await http.post(CHAT, json={"model": MODEL, "messages": HI, "tool_choice": "required"})
    assert bad.status_code == 400
    good = await http.post(CHAT, json={"model": MODEL, "messages": HI, "max_tokens": 2})
    assert good.status_code == 200, good.text
    assert good.headers["x-ratelimit-remaining-requests"] == "0"
