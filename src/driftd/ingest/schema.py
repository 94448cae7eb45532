"""The record schema: feature names and kinds, the target, the task, and a record's shape.

The domain half of ingest: what a record is, with no opinion on how it arrives. Validation of
request bodies against a schema lives in :mod:`driftd.ingest.validation` (pydantic), reading
history files in :mod:`driftd.ingest.history`; the monitor and the models need only this module.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, NotRequired, TypedDict

__all__ = ["Feature", "Label", "LabelRecord", "LabelType", "Record", "Schema", "label_type_of"]

Kind = Literal["numeric", "categorical"]
Task = Literal["classification", "regression"]
LabelType = Literal["integer", "string"]
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

    ``label_type`` fixes the type of a class label (classification only): a model fitted on
    ``1`` and ``"1"`` alike would answer strings to consumers that expect integers. Left unset,
    the first label or prediction stored fixes it (see :func:`label_type_of`). A timestamp is
    seconds since the epoch, at least 0 and at most ``max_timestamp_ahead`` seconds after the
    receiving clock.
    """

    features: tuple[Feature, ...]
    task: Task = "classification"
    target: str = "label"
    id_field: str | None = None
    timestamp_field: str | None = None
    max_string_length: int = 256
    max_id_length: int = 128
    label_type: LabelType | None = None
    max_timestamp_ahead: float = 3600.0

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


def label_type_of(value: Label) -> LabelType:
    """The class type a label has: ``1`` is an integer, ``"1"`` a string."""
    return "string" if isinstance(value, str) else "integer"


class Record(TypedDict):
    """A validated record as it flows from the API to the store and the monitor."""

    id: NotRequired[str]
    timestamp: NotRequired[float]
    features: dict[str, Value]
    prediction: NotRequired[Label | None]
    label: NotRequired[Label | None]
    proba: NotRequired[dict[str, float] | None]


class LabelRecord(TypedDict):
    """A delayed label for a record or prediction id."""

    id: str
    label: Label
    timestamp: NotRequired[float]
