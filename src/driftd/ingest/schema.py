"""The record schema: feature names and kinds, the target, the task, and a record's shape.

The domain half of ingest: what a record is, with no opinion on how it arrives. Validation of
request bodies against a schema lives in :mod:`driftd.ingest.validation` (pydantic), reading
history files in :mod:`driftd.ingest.history`; the monitor and the models need only this module.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, NotRequired, TypedDict

__all__ = ["Feature", "Label", "LabelRecord", "Record", "Schema"]

Kind = Literal["numeric", "categorical"]
Task = Literal["classification", "regression"]
Value = float | str
Label = int | str | float


@dataclass(frozen=True, slots=True)
class Feature:
    """One input column of the model."""

    name: str
    kind: Kind = "numeric"


@dataclass(frozen=True, slots=True)
class Schema:
    """What a record looks like, built from the ``[schema]`` section of the config.

    ``target`` and ``id_field`` name the label and id columns in flat history files (CSV, JSONL);
    over HTTP a record is ``{"id", "timestamp", "features", "prediction", "label"}``.
    """

    features: tuple[Feature, ...]
    task: Task = "classification"
    target: str = "label"
    id_field: str | None = None
    timestamp_field: str | None = None
    max_string_length: int = 256
    max_id_length: int = 128

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.features)

    @property
    def numeric(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.features if f.kind == "numeric")

    @property
    def categorical(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.features if f.kind == "categorical")

    @property
    def live_metric(self) -> Literal["accuracy", "mae"]:
        """How a served prediction is scored once its label arrives: accuracy for classes,
        mean absolute error for a regression target. Decided here, once, for the monitor's live
        score, the post-deploy guard and replay."""
        return "accuracy" if self.task == "classification" else "mae"

    def fingerprint(self) -> str:
        """A stable description of the schema; a checkpoint written under another is refused."""
        cols = ",".join(f"{f.name}:{f.kind}" for f in self.features)
        return f"{self.task}|{self.target}|{cols}"


class Record(TypedDict):
    """A validated record as it flows from the API to the store and the monitor."""

    id: NotRequired[str]
    timestamp: NotRequired[float]
    features: dict[str, Value]
    prediction: NotRequired[Label | None]
    label: NotRequired[Label | None]


class LabelRecord(TypedDict):
    """A delayed label for a record or prediction id."""

    id: str
    label: Label
    timestamp: NotRequired[float]
