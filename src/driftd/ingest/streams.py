"""Seeded synthetic streams with known concept changes, from river's generators.

They feed the demo, bootstrap the demo's first model, and give tests and benchmarks streams
whose drift points are known. A stream switches concept every ``segment`` records, cycling
through ``concepts`` (Agrawal's classification functions, SEA's variants, STAGGER's functions).
Small integer codes are emitted as strings and declared categorical, as a real schema would.

>>> from driftd.ingest.streams import SyntheticStream
>>> s = SyntheticStream("stagger", concepts=(0, 1), segment=2, seed=1)
>>> rows = s.take(4)
>>> rows[0]
({'size': 'medium', 'color': 'green', 'shape': 'circle'}, 0)
>>> [y for _, y in rows]
[0, 0, 1, 1]
>>> s.drift_points(5)
[2, 4]
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

__all__ = ["STREAMS", "StreamName", "SyntheticStream"]

StreamName = Literal["agrawal", "sea", "stagger"]

#: Feature name -> kind for each stream.
STREAMS: dict[str, dict[str, Literal["numeric", "categorical"]]] = {
    "agrawal": {
        "salary": "numeric",
        "commission": "numeric",
        "age": "numeric",
        "elevel": "categorical",
        "car": "categorical",
        "zipcode": "categorical",
        "hvalue": "numeric",
        "hyears": "numeric",
        "loan": "numeric",
    },
    "sea": {"x0": "numeric", "x1": "numeric", "x2": "numeric"},
    "stagger": {"size": "categorical", "color": "categorical", "shape": "categorical"},
}

_STAGGER = {
    "size": ("small", "medium", "large"),
    "color": ("red", "blue", "green"),
    "shape": ("circle", "square", "triangle"),
}


@dataclass(frozen=True, slots=True)
class SyntheticStream:
    """A stream of ``(features, label)`` switching concept every ``segment`` records."""

    name: StreamName
    concepts: tuple[int, ...] = (0,)
    segment: int = 10_000
    seed: int = 0
    noise: float = 0.0

    def __iter__(self) -> Iterator[tuple[dict[str, float | str], int]]:
        for i in itertools.count():
            concept = self.concepts[i % len(self.concepts)]
            yield from itertools.islice(self._concept(concept, self.seed * 1000 + i), self.segment)

    def take(self, n: int, *, start: int = 0) -> list[tuple[dict[str, float | str], int]]:
        return list(itertools.islice(self, start, start + n))

    def concept_at(self, index: int) -> int:
        return self.concepts[(index // self.segment) % len(self.concepts)]

    def drift_points(self, n: int) -> list[int]:
        """Indices (0-based) within the first ``n`` records where a new concept starts."""
        return list(range(self.segment, n, self.segment))

    def _concept(self, concept: int, seed: int) -> Iterator[tuple[dict[str, float | str], int]]:
        from river.datasets import synth

        gen: Any
        if self.name == "agrawal":
            gen = synth.Agrawal(classification_function=concept, seed=seed, perturbation=self.noise)
            kinds = STREAMS["agrawal"]
            for x, y in gen:
                yield (
                    {k: (str(v) if kinds[k] == "categorical" else float(v)) for k, v in x.items()},
                    int(y),
                )
        elif self.name == "sea":
            gen = synth.SEA(variant=concept, noise=self.noise, seed=seed)
            for x, y in gen:
                yield {f"x{k}": float(v) for k, v in x.items()}, int(y)
        else:
            gen = synth.STAGGER(classification_function=concept, seed=seed)
            for x, y in gen:
                yield {k: _STAGGER[k][v] for k, v in x.items()}, int(y)
