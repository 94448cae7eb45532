"""Record validation: strict types, finite numbers, and errors that name the record and field."""

from __future__ import annotations

import pytest

from driftd.ingest.history import coerce_row
from driftd.ingest.schema import Feature, Schema
from driftd.ingest.validation import InvalidInput, Validators

SCHEMA = Schema(features=(Feature("a"), Feature("c", "categorical")), max_string_length=5)
V = Validators(SCHEMA)


def test_a_valid_batch_parses_to_plain_dicts() -> None:
    out = V.parse(V.records, b'[{"features": {"a": 1, "c": "x"}, "label": 2, "id": "r1"}]')
    assert out == [{"features": {"a": 1.0, "c": "x"}, "label": 2, "id": "r1"}]
    assert isinstance(out[0]["features"]["a"], float)


@pytest.mark.parametrize(
    ("body", "field", "kind"),
    [
        (b'[{"features": {"a": true, "c": "x"}}]', "features.a", "float_type"),
        (b'[{"features": {"a": NaN, "c": "x"}}]', "features.a", "finite_number"),
        (b'[{"features": {"a": 1e999, "c": "x"}}]', "features.a", "finite_number"),
        (b'[{"features": {"a": 1, "c": "xxxxxx"}}]', "features.c", "string_too_long"),
        (b'[{"features": {"a": 1}}]', "features.c", "missing"),
        (b'[{"features": {"a": 1, "c": "x", "d": 1}}]', "features.d", "extra_forbidden"),
        (b'[{"features": {"a": 1, "c": "x"}, "label": 1.5}]', "label", "label_type"),
        (b'[{"features": {"a": 1, "c": "x"}, "id": ""}]', "id", "string_too_short"),
    ],
)
def test_each_bad_value_is_named(body: bytes, field: str, kind: str) -> None:
    with pytest.raises(InvalidInput) as err:
        V.parse(V.records, body)
    e = err.value.errors[0]
    assert (e.index, e.field, e.type) == (0, field, kind)
    assert not err.value.malformed


def test_union_label_errors_collapse_to_one_per_record() -> None:
    with pytest.raises(InvalidInput) as err:
        V.parse(V.records, b'[{"features": {"a": 1, "c": "x"}, "label": false}]')
    assert [e.field for e in err.value.errors] == ["label"]


def test_malformed_json_is_flagged() -> None:
    with pytest.raises(InvalidInput) as err:
        V.parse(V.records, b"[{")
    assert err.value.malformed
    assert err.value.reason == "malformed_json"


def test_ndjson_errors_carry_the_line_index() -> None:
    body = b'{"features": {"a": 1, "c": "x"}}\n\n{"features": {"a": "no", "c": "x"}}\n'
    with pytest.raises(InvalidInput) as err:
        V.parse_ndjson(V.record, body)
    assert (err.value.errors[0].index, err.value.errors[0].field) == (1, "features.a")


def test_regression_labels_are_finite_numbers() -> None:
    v = Validators(Schema(features=(Feature("a"),), task="regression"))
    assert v.parse(v.records, b'[{"features": {"a": 1}, "label": 2}]')[0]["label"] == 2.0
    with pytest.raises(InvalidInput):
        v.parse(v.records, b'[{"features": {"a": 1}, "label": "x"}]')


def test_history_rows_are_coerced_or_refused_with_line_and_column() -> None:
    feats, label, ident, ts = coerce_row(SCHEMA, {"a": "1.5", "c": "x", "label": "1"}, line=3)
    assert (feats, label, ident, ts) == ({"a": 1.5, "c": "x"}, 1, None, None)
    with pytest.raises(ValueError, match="line 7, column 'a': expected a finite number"):
        coerce_row(SCHEMA, {"a": "inf", "c": "x"}, line=7)
    with pytest.raises(ValueError, match="line 8, column 'c': missing value"):
        coerce_row(SCHEMA, {"a": "1"}, line=8)
