"""Several models' Prometheus registries as one exposition, for ``/metrics`` of a server with several models.

Each model's gateway keeps its own registry (its engine's load, its admission, its requests). Two
registries hold the same series names, so they cannot be written one after the other: a family
must appear once. Here each family is written once with every model's samples, each sample
labelled ``model_name`` (vLLM's series carry it already); the process's own series (``process_*``,
``python_*``), the same in every registry, are taken from the first.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from prometheus_client import CollectorRegistry, Metric
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample

_PROCESS_WIDE = ("process_", "python_")


class _Merged(Collector):
    def __init__(self, registries: Sequence[CollectorRegistry], model_names: Sequence[str]) -> None:
        self.registries, self.model_names = registries, model_names

    def collect(self) -> Iterator[Metric]:
        families: dict[str, Metric] = {}
        for index, (registry, model) in enumerate(zip(self.registries, self.model_names, strict=True)):
            for family in registry.collect():
                process_wide = family.name.startswith(_PROCESS_WIDE)
                if process_wide and index > 0:
                    continue
                merged = families.setdefault(family.name, Metric(family.name, family.documentation, family.type))
                merged.samples += family.samples if process_wide else [_labelled(s, model) for s in family.samples]
        yield from families.values()


def _labelled(sample: Sample, model: str) -> Sample:
    return sample._replace(labels={"model_name": model, **sample.labels})


def merged_registry(registries: Sequence[CollectorRegistry], model_names: Sequence[str]) -> CollectorRegistry:
    """A registry whose one collector writes ``registries`` merged, each model's samples labelled by its name."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Merged(registries, model_names))
    return registry
