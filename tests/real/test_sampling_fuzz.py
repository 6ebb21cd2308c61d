"""Property: no sampling value a api_client sends can stop the engine or earn anything but 200 or 400.

Hypothesis sends the sampling fields across the whole JSON number range (huge and tiny,
negative, zero, NaN and infinities, floats where integers belong, ``n`` with seeds near the
ends of the 64-bit range) to the real api_server, both endpoints, streamed and not. Each answer must
be a 200 that completes, or a 400 naming a field the request set. The api_server must stay healthy
after every example and still answer a plain request after every batch of them.

Valid ``max_tokens`` and ``n`` are drawn small, so the run stays bounded in time.
"""

from __future__ import annotations

import json
import math
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.helpers import assert_openai_error, sse_chunks
from tests.real.helpers import ServerHandle

EXAMPLES = 150
BATCH = 10  # examples between two checks that a plain request still succeeds

EDGES = [0, 1, -1, 2, 2**31, 2**63 - 1, 2**63, 2**64, -(2**63), -(2**63) - 1, 10**30, -(10**30)]
FLOAT_EDGES = [0.0, -0.0, 1e-40, 5e-324, 1e-5, 0.5, 1.0, 2.0, 1e38, 1e308, -1e308, math.inf, -math.inf, math.nan]

any_number = st.one_of(
    st.integers(min_value=-(2**80), max_value=2**80),
    st.sampled_from(EDGES),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(FLOAT_EDGES),
)
# Fields whose valid values cost generation time: valid draws stay tiny, invalid ones span everything.
small_count = st.one_of(
    st.integers(min_value=-(2**70), max_value=3),
    st.sampled_from([0, -1, 129, 10**6, 2**63, 2**64, 1e300, 1.5, 2.0, -0.0, math.nan, math.inf]),
    st.floats(max_value=3.0, allow_nan=False),
)


def mostly(valid: st.SearchStrategy[Any], invalid: st.SearchStrategy[Any] = any_number) -> st.SearchStrategy[Any]:
    """Mostly valid values (edges included), so many examples reach the engine.

    Both are drawn and one is kept, so the odds hold whichever branch Hypothesis would favour.
    """
    return st.tuples(st.integers(0, 4), valid, invalid).map(lambda drawn: drawn[2] if drawn[0] == 4 else drawn[1])


FIELDS = {
    "temperature": mostly(st.one_of(st.floats(0.0, 2.0), st.sampled_from([1e-40, 5e-324, 1e-6, 2.0]))),
    "top_p": mostly(st.one_of(st.floats(0.0, 1.0, exclude_min=True), st.sampled_from([5e-324, 1e-40, 1.0]))),
    "top_k": mostly(st.one_of(st.integers(-1, 100), st.sampled_from([2**31, 2**62, 1.0, 5.0]))),
    "seed": mostly(st.one_of(st.integers(-(2**63), 2**63 - 1), st.sampled_from([2**63 - 1, -(2**63), 0, -1]))),
    "presence_penalty": mostly(st.floats(-2.0, 2.0)),
    "frequency_penalty": mostly(st.floats(-2.0, 2.0)),
    "repetition_penalty": mostly(st.floats(0.01, 100.0)),
    "min_tokens": mostly(st.integers(0, 3), small_count),
    "n": mostly(st.integers(1, 3), small_count),
}

requests = st.fixed_dictionaries(
    {
        "endpoint": st.sampled_from(["chat/completions", "completions"]),
        "stream": st.booleans(),
        "max_tokens": mostly(st.integers(1, 3), small_count),
    },
    optional={name: strategy for name, strategy in FIELDS.items()},
)


def _plain_request_succeeds(http: httpx.Client, api_server: ServerHandle) -> None:
    body = {"model": api_server.model, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}
    response = http.post("/chat/completions", json=body)
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"]


@pytest.mark.timeout(900)
def test_no_sampling_value_stops_the_engine(api_server: ServerHandle) -> None:
    seen = 0
    with httpx.Client(base_url=api_server.base_url, timeout=120) as http:

        @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
        @given(requests)
        def one(fields: dict[str, Any]) -> None:
            nonlocal seen
            endpoint, stream = fields.pop("endpoint"), fields["stream"]
            prompt: dict[str, Any] = {"messages": [{"role": "user", "content": "Name a colour."}]}
            if endpoint == "completions":
                prompt = {"prompt": "Colours:"}
            # json.dumps writes NaN and Infinity, as a careless client's JSON library would.
            body = json.dumps({"model": api_server.model, **prompt, **fields})
            response = http.post(f"/{endpoint}", content=body, headers={"content-type": "application/json"})
            assert response.status_code in (200, 400), (response.status_code, response.text, fields)
            if response.status_code == 400:
                error = assert_openai_error(response, 400)
                assert error["type"] == "invalid_request_error"
                # A max_tokens past the context is OpenAI's context_length_exceeded, which names the prompt.
                named = {*fields, *(prompt if error["code"] == "context_length_exceeded" else ())}
                assert error["param"] is not None and error["param"].split(".")[0] in named, (error, fields)
            elif stream:
                assert all("error" not in chunk for chunk in sse_chunks(response.text)), response.text
            else:
                assert response.json()["choices"], response.text
            assert httpx.get(f"{api_server.root_url}/health", timeout=10).status_code == 200
            seen += 1
            if seen % BATCH == 0:
                _plain_request_succeeds(http, api_server)

        one()
        _plain_request_succeeds(http, api_server)
