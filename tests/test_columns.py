"""The column decoder: the ingest fast path for all-numeric schemas (the property that it agrees
with the validators is in test_properties)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from driftd.ingest.columns import ColumnDecoder
from driftd.ingest.schema import Feature, Schema

SCHEMA = Schema(features=(Feature("b"), Feature("a"), Feature("c d")), max_id_length=8)


def test_a_batch_decodes_into_a_block_in_the_schemas_order() -> None:
    body = json.dumps(
        [
            {"features": {"a": 2, "c d": 3.5, "b": 1.0}, "id": "r1", "label": 1},
            {"label": "yes", "features": {"c d": -1e300, "b": 0.25, "a": -0.0}, "timestamp": 7},
        ]
    ).encode()
    columns = ColumnDecoder(SCHEMA).decode(body)
    assert columns is not None
    block = np.frombuffer(columns.block, dtype=np.float64).reshape(2, 3)
    assert block.tolist() == [[1.0, 2.0, 3.5], [0.25, -0.0, -1e300]]
    assert list(columns.rows) == [
        {"b": 1.0, "a": 2.0, "c d": 3.5},
        {"b": 0.25, "a": -0.0, "c d": -1e300},
    ]
    assert list(columns.rows[1:]) == [columns.rows[1]]
    assert columns.ids == ["r1", None]
    assert columns.labels == [1, "yes"]
    assert columns.timestamps == [None, 7.0]
    assert columns.predictions is None  # no record gave one
    batch = columns.batch(now=100.0)
    assert batch.ts == [100.0, 7.0]
    assert batch.numeric == columns.block


def test_probabilities_and_a_zero_timestamp_decode_as_given() -> None:
    body = json.dumps(
        [
            {
                "features": {"a": 1, "b": 2, "c d": 3},
                "timestamp": 0,
                "proba": {"0": 0.25, "1": 0.75},
            },
            {"features": {"a": 1, "b": 2, "c d": 3}},
        ]
    ).encode()
    columns = ColumnDecoder(SCHEMA).decode(body)
    assert columns is not None
    assert columns.probas == [{"0": 0.25, "1": 0.75}, None]
    batch = columns.batch(now=100.0)
    assert batch.ts == [0.0, 100.0], "0 is the epoch, not now"
    assert batch.probas == columns.probas


@pytest.mark.parametrize(
    "record",
    [
        pytest.param('{"features": {"a": 1, "b": 2, "c d": 3, "a": 4}}', id="key twice"),
        pytest.param('{"features": {"a": 1, "b": 2, "c d": 1e400}}', id="out of range"),
        pytest.param('{"features": {"a": 1, "b": 2, "c d": NaN}}', id="NaN"),
        pytest.param('{"features": {"a": 1, "b": 2, "c d": true}}', id="bool"),
        pytest.param('{"features": {"a": 1, "b": 2}}', id="missing feature"),
        pytest.param('{"features": {"a": 1, "b": 2, "c d": 3, "e": 4}}', id="unknown feature"),
        pytest.param('{"features": {"a": 1, "b": 2, "c d": 3}, "weight": 1}', id="unknown key"),
        pytest.param('{"features": {"a": 1, "b": 2, "c d": 3}, "id": "123456789"}', id="long id"),
        pytest.param('{"features": {"a": 1, "b": 2, "c d": 3}, "label": 1.5}', id="float label"),
        pytest.param('{"features": {"a": 1, "b": 2, "c d": 3}, "label": ""}', id="empty label"),
        pytest.param('{"features": {"a": 1, "b": 2, "c d": 3}, "id": "a\\nb"}', id="newline id"),
        pytest.param('{"features": {"a": 1, "b": 2, "c d": 3}, "timestamp": -1}', id="before 1970"),
        pytest.param('{"features": {"a": 1, "b": 2, "c d": 3}, "proba": {"0": 1.5}}', id="p > 1"),
        pytest.param('{"features": {"a": 1, "b": 2, "c d": 3}, "proba": {}}', id="no classes"),
        pytest.param(
            '{"features": {"a": 1, "b": 2, "c d": 3}, "proba": {"0": 0.5, "0": 0.5}}',
            id="class twice",
        ),
    ],
)
def test_what_the_decoder_does_not_take_whole_is_left_to_the_validators(record: str) -> None:
    good = '{"features": {"a": 1, "b": 2, "c d": 3}}'
    assert ColumnDecoder(SCHEMA).decode(f"[{good}, {record}]".encode()) is None


def test_an_empty_batch_or_one_over_the_cap_is_left_to_the_validators() -> None:
    one = {"features": {"a": 1, "b": 2, "c d": 3}}
    decoder = ColumnDecoder(SCHEMA, max_items=2)
    assert decoder.decode(b"[]") is None
    assert decoder.decode(json.dumps([one] * 3).encode()) is None
    assert decoder.decode(json.dumps([one] * 2).encode()) is not None


def test_a_schema_with_a_categorical_feature_has_no_column_decoder() -> None:
    mixed = Schema(features=(Feature("a"), Feature("color", "categorical")))
    assert ColumnDecoder.for_schema(mixed) is None
    assert ColumnDecoder.for_schema(SCHEMA) is not None


@pytest.mark.parametrize("name", ['temp "C"', "a\\b", "tab\there"])
def test_a_feature_name_msgspec_cannot_match_leaves_every_batch_to_the_validators(
    name: str,
) -> None:
    """msgspec refuses to match a key with a quote, a backslash or a control character; such a
    schema still starts, its records all validated by pydantic."""
    assert ColumnDecoder.for_schema(Schema(features=(Feature("a"), Feature(name)))) is None
