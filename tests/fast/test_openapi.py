"""``/openapi.json`` documents the API clients meet: each route's JSON or event-stream answer, and
every error status in OpenAI's error shape, so generated clients and API explorers get them right."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

REF = "#/components/schemas/"
ERROR = {"application/json": {"schema": {"$ref": REF + "ErrorResponse"}}}


@pytest.fixture
async def spec(http: httpx.AsyncClient) -> dict[str, Any]:
    response = await http.get("/openapi.json")
    assert response.status_code == 200
    body: dict[str, Any] = response.json()
    return body


@pytest.mark.parametrize(
    ("path", "whole", "chunk", "request_model"),
    [
        ("/v1/chat/completions", "ChatCompletion", "ChatCompletionChunk", "ChatCompletionRequest"),
        ("/v1/completions", "Completion", "Completion", "CompletionRequest"),
    ],
)
def test_completions_answer_json_or_an_event_stream(
    spec: dict[str, Any], path: str, whole: str, chunk: str, request_model: str
) -> None:
    operation = spec["paths"][path]["post"]
    assert operation["requestBody"]["content"]["application/json"]["schema"] == {"$ref": REF + request_model}
    responses = operation["responses"]
    assert set(responses) == {"200", "400", "401", "404", "413", "429", "500", "503", "default"}  # no 422
    ok = responses["200"]["content"]
    assert ok["application/json"]["schema"] == {"$ref": REF + whole}
    data = ok["text/event-stream"]["itemSchema"]["properties"]["data"]["oneOf"]
    assert data[0]["contentSchema"]["anyOf"] == [{"$ref": REF + chunk}, {"$ref": REF + "ErrorResponse"}]
    assert data[1] == {"const": "[DONE]"}
    for status in ("400", "401", "404", "413", "429", "500", "503", "default"):
        assert responses[status]["content"] == ERROR, status


def test_other_routes(spec: dict[str, Any]) -> None:
    paths = spec["paths"]
    assert set(paths) == {
        "/v1/models",
        "/v1/models/{model}",
        "/v1/chat/completions",
        "/v1/completions",
        "/health",
        "/metrics",
        "/load",
        "/tokenize",
        "/detokenize",
        "/version",
        "/v1/messages",
        "/v1/messages/count_tokens",
        "/v1/responses",
        "/v1/responses/{response_id}",
        "/v1/responses/{response_id}/input_items",
        "/v1/embeddings",
        "/score",
        "/v1/score",
        "/rerank",
        "/v1/rerank",
        "/v2/rerank",
    }
    embeddings = paths["/v1/embeddings"]["post"]
    assert embeddings["requestBody"]["content"]["application/json"]["schema"] == {"$ref": REF + "EmbeddingRequest"}
    assert embeddings["responses"]["200"]["content"]["application/json"]["schema"] == {
        "$ref": REF + "EmbeddingResponse"
    }
    for path in ("/rerank", "/v1/rerank", "/v2/rerank"):
        assert paths[path]["post"]["responses"]["200"]["content"]["application/json"]["schema"] == {
            "$ref": REF + "RerankResponse"
        }
    models = paths["/v1/models"]["get"]["responses"]
    assert models["200"]["content"]["application/json"]["schema"] == {"$ref": REF + "ModelList"}
    model = paths["/v1/models/{model}"]["get"]["responses"]
    assert set(model) == {"200", "401", "404", "default"}
    assert model["200"]["content"]["application/json"]["schema"] == {"$ref": REF + "ModelCard"}
    assert model["404"]["content"] == ERROR
    load = paths["/load"]["get"]["responses"]
    assert load["200"]["content"]["application/json"]["schema"] == {"$ref": REF + "ServerLoad"}
    health = paths["/health"]["get"]["responses"]
    assert health["200"]["content"]["application/json"]["schema"] == {"$ref": REF + "Health"}
    assert health["503"]["content"] == ERROR
    metrics = paths["/metrics"]["get"]["responses"]
    assert set(metrics["200"]["content"]) == {"text/plain"}
    version = paths["/version"]["get"]["responses"]
    assert version["200"]["content"]["application/json"]["schema"] == {"$ref": REF + "Version"}
    assert "head" not in paths["/v1/models"]  # HEAD answers as GET does; documenting it twice helps no one


@pytest.mark.parametrize(
    ("path", "request_model", "response_model"),
    [
        ("/tokenize", "TokenizeRequest", "TokenizeResponse"),
        ("/detokenize", "DetokenizeRequest", "DetokenizeResponse"),
    ],
)
def test_tokenizer_routes(spec: dict[str, Any], path: str, request_model: str, response_model: str) -> None:
    operation = spec["paths"][path]["post"]
    assert operation["requestBody"]["content"]["application/json"]["schema"] == {"$ref": REF + request_model}
    responses = operation["responses"]
    assert set(responses) == {"200", "400", "401", "404", "413", "default"}  # no 422
    assert responses["200"]["content"]["application/json"]["schema"] == {"$ref": REF + response_model}
    for status in ("400", "401", "404", "413", "default"):
        assert responses[status]["content"] == ERROR, status


def test_every_reference_resolves(spec: dict[str, Any]) -> None:
    schemas = spec["components"]["schemas"]
    assert {"ChatCompletionChunk", "ChatChunkChoice", "Delta", "Usage", "ErrorResponse"} <= set(schemas)
    assert "HTTPValidationError" not in schemas

    def refs(node: object) -> list[str]:
        if isinstance(node, dict):
            return [v for k, v in node.items() if k == "$ref"] + [r for v in node.values() for r in refs(v)]
        if isinstance(node, list):
            return [r for v in node for r in refs(v)]
        return []

    missing = {r for r in refs(spec) if r.removeprefix(REF) not in schemas}
    assert not missing


async def test_health_answers_as_documented(http: httpx.AsyncClient) -> None:
    assert (await http.get("/health")).json() == {"status": "ok"}
    metrics = await http.get("/metrics")
    assert metrics.headers["content-type"].startswith("text/plain")
    assert "ise_engine_alive 1.0" in metrics.text


def test_integer_bounds_are_exact(spec: dict[str, Any]) -> None:
    """A client generating requests from the schema must not get a seed the server refuses."""
    for name in ("ChatCompletionRequest", "CompletionRequest"):
        [integer, _] = spec["components"]["schemas"][name]["properties"]["seed"]["anyOf"]
        assert (integer["minimum"], integer["maximum"]) == (-(2**63), 2**63 - 1)
