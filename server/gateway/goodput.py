"""Live goodput: how many requests met their latency targets, counted as they end.

Percentiles say how slow the slowest requests were; goodput says how many requests were served
on time, which is what a latency target promises. With ``--slo-ttft-ms`` and/or ``--slo-tpot-ms``
set, each request that ends is judged against every target set and counted once per target in
``ise_request_slo_total{slo, outcome}``: ``slo`` is ``ttft``, ``tpot``, or ``all`` (every target
set at once), ``outcome`` is ``met`` or ``missed``. A request that failed or was aborted misses
every target (it was not served); one with no second token meets any TPOT target. A request's own
``x-slo-ttft-ms`` is the TTFT target it is judged by. Requests refused at admission are not
here: ``ise_requests_rejected_total{reason="slo_exceeded"}`` counts them.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter

from server.gateway.request_record import RequestRecord

SLO_LABELS = ("model_name", "engine", "slo", "outcome")


class Goodput:
    """``ise_request_slo_total``, for the targets the server has (none: nothing is counted)."""

    def __init__(
        self, registry: CollectorRegistry, labels: tuple[str, str], ttft_s: float | None, tpot_s: float | None
    ) -> None:
        self.ttft_s, self.tpot_s = ttft_s, tpot_s
        counter = Counter(
            "ise_request_slo",
            "Requests that ended, by latency target (ttft, tpot, all: every target set) and whether they met it",
            SLO_LABELS,
            registry=registry,
        )
        slos = [slo for slo, target in (("ttft", ttft_s), ("tpot", tpot_s)) if target is not None]
        self._counts = {
            (slo, outcome): counter.labels(*labels, slo, outcome)
            for slo in ([*slos, "all"] if slos else [])
            for outcome in ("met", "missed")
        }

    def finished(self, record: RequestRecord) -> None:
        if not self._counts:
            return
        verdicts: list[bool] = []
        ttft_target = record.context.ttft_target if record.context.ttft_target is not None else self.ttft_s
        if ("ttft", "met") in self._counts and ttft_target is not None:
            verdicts.append(
                self._count("ttft", record.served and record.ttft is not None and record.ttft <= ttft_target)
            )
        if self.tpot_s is not None:
            tpot = record.tpot
            verdicts.append(self._count("tpot", record.served and (tpot is None or tpot <= self.tpot_s)))
        self._count("all", all(verdicts))

    def _count(self, slo: str, met: bool) -> bool:
        self._counts[slo, "met" if met else "missed"].inc()
        return met
