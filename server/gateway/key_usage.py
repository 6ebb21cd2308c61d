"""Usage by API key: requests, prompt tokens and generated tokens per key name.

An operator can bill tenants, or find the noisy one, from ``/metrics`` alone, without a proxy in
front (vLLM leaves this out of scope). Series are labelled by the key's *name* (``key-1``,
``key-2``, ... for ``--api-key`` values in the order given; the table name for a keys file's
``[keys.NAME]``), never by the key. Tokens move by exactly what the response's usage reported
(``prompt_tokens``, ``completion_tokens``; a Messages response's ``input_tokens`` plus
``cache_read_input_tokens``, and ``output_tokens``), counted when the request ends, failed and
aborted requests included (they used the engine too). A server without keys counts nothing here:
``vllm:prompt_tokens_total`` and ``vllm:generation_tokens_total`` are its totals.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter

from server.gateway.request_record import RequestRecord

KEY_LABELS = ("model_name", "engine", "api_key_name")


class KeyUsage:
    def __init__(self, registry: CollectorRegistry, labels: tuple[str, str]) -> None:
        self.labels = labels

        def counter(name: str, doc: str) -> Counter:
            return Counter(name, doc, KEY_LABELS, registry=registry)

        self.requests = counter("ise_api_key_requests", "Admitted requests that ended, by API key name")
        self.prompt_tokens = counter(
            "ise_api_key_prompt_tokens", "Prompt tokens, as usage counts them, by API key name"
        )
        self.generation_tokens = counter(
            "ise_api_key_generation_tokens", "Generated tokens, as usage counts them, by API key name"
        )

    def finished(self, record: RequestRecord) -> None:
        name = record.context.api_key_name
        if name is None:
            return
        self.requests.labels(*self.labels, name).inc()
        self.prompt_tokens.labels(*self.labels, name).inc(record.prompt_tokens)
        self.generation_tokens.labels(*self.labels, name).inc(record.generation_tokens)
