"""Properties over generated input, no daemon: record validation, config loading, label joins.

- Validation: whatever the validators accept is complete, finite and well-typed, with no key
  unknown or given twice; whatever breaks one of those rules is refused, in any JSON layout.
  The column decoder (the fast path for all-numeric schemas) takes only batches the validators
  accept, as the very same records.
- Config: any TOML document (and any ``DRIFTD_*`` override) either loads or raises
  ``ConfigError`` listing its problems; never another exception.
- Label joins: however records and their delayed labels interleave, the store ends with the same
  labelled records and pending labels, and each prediction meets its label exactly once.
"""

from __future__ import annotations

import dataclasses
import json
import math
import tempfile
import typing
import unicodedata
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from driftd.config import Config, load_text
from driftd.errors import ConfigError
from driftd.ingest.batch import Batch
from driftd.ingest.columns import ColumnDecoder
from driftd.ingest.schema import Feature, Schema
from driftd.ingest.validation import InvalidInput, Validators, may_repeat_keys
from driftd.store import SQLiteStore
from driftd.store.batch_insert import BatchWriter

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# -- record validation -------------------------------------------------------------------------
MAX_STRING = 8
_NUMERIC = (Feature("x0"), Feature("x:1"))
SCHEMAS = {
    task: Schema(
        features=(*_NUMERIC, Feature("color", "categorical")),
        task=task,
        max_string_length=MAX_STRING,
        max_id_length=12,
    )
    for task in ("classification", "regression")
}
# All-numeric records may take the column decoder; the contract is the same.
SCHEMAS["numeric"] = Schema(features=_NUMERIC, max_string_length=MAX_STRING, max_id_length=12)
SCHEMAS["numeric regression"] = dataclasses.replace(SCHEMAS["numeric"], task="regression")
VALIDATORS = {task: Validators(schema) for task, schema in SCHEMAS.items()}
RECORD_KEYS = ("id", "timestamp", "features", "prediction", "label")


class Obj:
    """A JSON object as written on the wire: its pairs in order, a key may come twice."""

    def __init__(self, pairs: list[tuple[str, Any]]) -> None:
        self.pairs = pairs


def render(value: Any, space: str = "") -> str:
    """JSON text with the pairs as given; ``space`` goes around colons and commas."""
    if isinstance(value, Obj):
        items = [f"{json.dumps(k)}{space}:{space}{render(v, space)}" for k, v in value.pairs]
        return "{" + f"{space},{space}".join(items) + "}"
    if isinstance(value, list):
        return "[" + f"{space},{space}".join(render(v, space) for v in value) + "]"
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    return json.dumps(value)


# Strings with colons, quotes and backslashes, which the repeated-key counter must not trust.
texts = st.text(alphabet=st.sampled_from('ab:"\\ é{}x1'), max_size=10)
numbers = st.one_of(
    st.integers(-(10**15), 10**15),
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(-1e6, 1e6),
)
scalars = st.one_of(st.none(), st.booleans(), numbers, texts)
anything = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.lists(st.tuples(texts, inner), max_size=3).map(Obj),
    ),
    max_leaves=6,
)


def good_value(name: str) -> st.SearchStrategy[Any]:
    if name == "color":
        return st.text(max_size=MAX_STRING)
    # Integers past 2**53 and 2**64 too: both parsers must round them to the same float.
    return st.one_of(
        st.integers(-(10**12), 10**12), st.integers(-(2**80), 2**80), st.floats(-1e9, 1e9)
    )


@st.composite
def wire_records(draw: st.DrawFn, task: str) -> Obj:
    """A record that is usually nearly valid: each part is a good value or anything at all;
    a part is sometimes left out, sometimes given twice, sometimes joined by an unknown key."""
    schema = SCHEMAS[task]
    mess = st.integers(0, 19)

    def value(good: st.SearchStrategy[Any]) -> Any:
        return draw(anything) if draw(mess) == 0 else draw(good)

    feats = [(f.name, value(good_value(f.name))) for f in schema.features if draw(mess) > 0]
    if draw(mess) == 0:
        name = draw(st.sampled_from(["x0", "color", "x2", "x:1"]))
        feats.append((name, value(good_value(name))))
    label = (
        st.one_of(st.integers(-5, 5), st.text(min_size=1, max_size=MAX_STRING))
        if schema.task == "classification"
        else st.floats(-1e6, 1e6)
    )
    parts: list[tuple[str, Any]] = [("features", Obj(draw(st.permutations(feats))))]
    if draw(st.booleans()):
        parts.append(("id", value(st.text(min_size=1, max_size=12))))
    if draw(st.booleans()):
        parts.append(("timestamp", value(st.floats(-10, 2e9))))
    parts += [
        (key, value(st.one_of(st.none(), label)))
        for key in ("prediction", "label")
        if draw(st.booleans())
    ]
    if draw(mess) == 0:
        key = draw(st.sampled_from(["id", "label", "features", "weight"]))
        again = {"id": st.text(min_size=1, max_size=12), "label": label}.get(key, anything)
        parts.append((key, value(again)))
    return Obj(draw(st.permutations(parts)))


def attempt(parse: Callable[..., Any], *args: Any) -> tuple[Any, InvalidInput | None]:
    """The parsed value, or the refusal."""
    try:
        return parse(*args), None
    except InvalidInput as exc:
        return None, exc


def finite_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def valid_label(v: Any, task: str) -> bool:
    if task == "regression":
        return finite_number(v)
    if isinstance(v, str):
        return 1 <= len(v) <= MAX_STRING
    return isinstance(v, int) and not isinstance(v, bool)


def valid_id(v: Any) -> bool:
    """1 to 12 characters (the schema's cap here), none of them a control character."""
    return (
        isinstance(v, str)
        and 1 <= len(v) <= 12
        and not any(unicodedata.category(c) == "Cc" for c in v)
    )


def acceptable(record: Obj, task: str) -> bool:
    """The contract, restated independently of pydantic."""
    keys = [k for k, _ in record.pairs]
    if len(set(keys)) != len(keys) or not set(keys) <= set(RECORD_KEYS) or "features" not in keys:
        return False
    fields = dict(record.pairs)
    feats = fields["features"]
    if not isinstance(feats, Obj):
        return False
    names = [k for k, _ in feats.pairs]
    if sorted(names) != sorted(SCHEMAS[task].names):
        return False
    for name, v in feats.pairs:
        if name == "color":
            if not isinstance(v, str) or len(v) > MAX_STRING:
                return False
        elif not finite_number(v):
            return False
    if "id" in fields and not valid_id(fields["id"]):
        return False
    if "timestamp" in fields and not (
        finite_number(fields["timestamp"]) and fields["timestamp"] >= 0
    ):
        return False
    return all(
        fields[key] is None or valid_label(fields[key], SCHEMAS[task].task)
        for key in ("prediction", "label")
        if key in fields
    )


@pytest.mark.parametrize("task", ["classification", "regression", "numeric"])
@FAST
@given(data=st.data())
def test_validation_accepts_exactly_the_complete_finite_well_typed_records(
    task: str, data: st.DataObject
) -> None:
    records = data.draw(st.lists(wire_records(task), min_size=1, max_size=4))
    body = render(records, data.draw(st.sampled_from(["", " ", "\n", "\t "]))).encode()
    v = VALIDATORS[task]
    expected = all(acceptable(r, task) for r in records)
    event("valid" if expected else "invalid")
    out, refused = attempt(v.parse, v.records, body)
    if refused is not None:
        event(f"refused: {refused.errors[0].type}")
        assert not expected, f"refused a valid batch: {refused} {body!r}"
        assert refused.errors and not refused.malformed
        assert all(e.field and e.message and e.type for e in refused.errors)
        return
    assert expected, f"accepted an invalid batch: {body!r} -> {out!r}"
    names = set(SCHEMAS[task].names)
    for rec in out:
        assert set(rec) <= set(RECORD_KEYS)
        assert set(rec["features"]) == names
        for name, value in rec["features"].items():
            if name == "color":
                assert isinstance(value, str) and len(value) <= MAX_STRING
            else:
                assert type(value) is float and math.isfinite(value)
        for key in ("prediction", "label"):
            if rec.get(key) is not None:
                assert valid_label(rec[key], SCHEMAS[task].task)


@pytest.mark.parametrize("task", ["numeric", "numeric regression"])
@FAST
@given(data=st.data())
def test_the_column_decoder_takes_only_valid_batches_as_the_same_records(
    task: str, data: st.DataObject
) -> None:
    records = data.draw(st.lists(wire_records(task), min_size=1, max_size=4))
    body = render(records, data.draw(st.sampled_from(["", " ", "\n"]))).encode()
    decoder = ColumnDecoder(SCHEMAS[task])
    columns = decoder.decode(body)
    v = VALIDATORS[task]
    out, refused = attempt(v.parse, v.records, body)
    valid = "valid" if refused is None else "invalid"
    event(f"{valid}, {'decoded' if columns is not None else 'left to the validators'}")
    if columns is None:
        # What the validators accept, the decoder takes, unless a key may have come twice
        # (the colon count cannot tell; the validators look).
        keys = sum(len(r) + len(r["features"]) for r in out) if refused is None else 0
        assert refused is not None or may_repeat_keys(body, keys), f"not decoded: {body!r}"
        return
    assert refused is None, f"decoded a batch the validators refuse ({refused}): {body!r}"
    assert len(columns) == len(out)
    names = SCHEMAS[task].names
    for i, rec in enumerate(out):
        assert dict(columns.rows[i]) == rec["features"]
        assert list(columns.rows[i]) == list(names)  # the block is in the schema's order
        for key, column in [
            ("id", columns.ids),
            ("timestamp", columns.timestamps),
            ("prediction", columns.predictions),
            ("label", columns.labels),
        ]:
            got = None if column is None else column[i]
            assert got == rec.get(key) and type(got) is type(rec.get(key)), key
    given_keys = set().union(*out)
    for key, column in [("id", columns.ids), ("prediction", columns.predictions)]:
        assert (column is not None) == (key in given_keys)


@FAST
@given(
    records=st.lists(wire_records("classification"), min_size=1, max_size=3),
    space=st.sampled_from(["", " ", "\n"]),
)
def test_ndjson_lines_follow_the_same_contract(records: list[Obj], space: str) -> None:
    v = VALIDATORS["classification"]
    body = "\n".join(render(r, space).replace("\n", " ") for r in records).encode()
    expected = all(acceptable(r, "classification") for r in records)
    out, refused = attempt(v.parse_ndjson, v.record, body)
    if refused is not None:
        assert not expected, f"refused valid lines: {refused} {body!r}"
        return
    assert expected, f"accepted an invalid line: {body!r}"
    assert len(out) == len(records)


@FAST
@given(
    instances=st.lists(
        st.fixed_dictionaries({"x0": st.floats(-1, 1), "x:1": st.integers(0, 9), "color": texts}),
        min_size=1,
        max_size=3,
    ),
    twice=st.sampled_from(["x0", "x:1", "color", "instances", None]),
    where=st.integers(0, 2),
)
def test_a_key_given_twice_in_a_predict_request_is_refused_by_name(
    instances: list[dict[str, Any]], twice: str | None, where: int
) -> None:
    v = VALIDATORS["classification"]
    objs = [Obj(list(i.items())) for i in instances]
    pairs: list[tuple[str, Any]] = [("instances", objs)]
    if twice == "instances":
        pairs.append(("instances", objs))
    elif twice is not None:
        target = objs[where % len(objs)]
        target.pairs.append((twice, dict(target.pairs)[twice]))
    body = render(Obj(pairs), " ").encode()
    valid = all(len(i["color"]) <= MAX_STRING for i in instances)
    _, refused = attempt(v.parse, v.predict, body)
    if refused is None:
        assert twice is None and valid
        return
    assert twice is not None or not valid, str(refused)
    if valid:
        field = "instances" if twice == "instances" else f"features.{twice}"
        assert {(e.field, e.type) for e in refused.errors} == {(field, "duplicate_key")}


# -- config loading ----------------------------------------------------------------------------
def _sections() -> dict[str, list[str]]:
    hints = typing.get_type_hints(Config)
    out = {}
    for f in dataclasses.fields(Config):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            out[f.name] = [g.name for g in dataclasses.fields(tp)]
    return out


SECTIONS = _sections()
WORDS = [
    "numeric",
    "categorical",
    "classification",
    "regression",
    "accuracy",
    "mae",
    "auto",
    "json",
    "debug",
    "agrawal",
    "sea",
    "adwin",
    "page_hinkley",
    "127.0.0.1",
    "0.0.0.0",
    "*/5 * * * *",
    "61 * * * *",
    "* * * * * *",
    "http://127.0.0.1:9",
    "ftp://x",
    "",
    "none",
]
# Import paths are drawn from this list only: a config names a module and validation imports it,
# so random names must never reach importlib.
IMPORTS = [
    "sklearn.linear_model.LogisticRegression",
    "sklearn.nothing.Here",
    "json:loads",
    "math:pi",
    "nodots",
]
toml_text = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x7f.:"),
    max_size=12,
)
toml_scalars = st.one_of(
    st.booleans(),
    st.integers(-(2**63), 2**63 - 1),
    st.integers(-5, 70000),
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(0, 10_000),
    toml_text,
    st.sampled_from(WORDS),
)
toml_values = st.recursive(
    toml_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(st.sampled_from(["name", "kind", "x", "delta", "a b"]), inner, max_size=3),
    ),
    max_leaves=5,
)
features_value = st.lists(
    st.fixed_dictionaries(
        {"name": st.one_of(st.sampled_from(["a", "b", "label", ""]), toml_text)},
        optional={"kind": st.sampled_from(["numeric", "categorical", "text", 3])},
    ),
    max_size=3,
)


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else repr(value)  # repr: 1e-05, inf, -inf
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return "{" + ", ".join(f"{json.dumps(k)} = {toml_value(v)}" for k, v in value.items()) + "}"


@st.composite
def toml_documents(draw: st.DrawFn) -> str:
    names = st.one_of(st.sampled_from(sorted(SECTIONS)), st.sampled_from(["serve", "x y"]))
    lines = []
    for section in draw(st.lists(names, max_size=6, unique=True)):
        lines.append(f"[{json.dumps(section)}]")
        keys = st.one_of(st.sampled_from(SECTIONS.get(section) or ["k"]), st.just("unknown"))
        for key in draw(st.lists(keys, max_size=6, unique=True)):
            if (section, key) == ("schema", "features"):
                value = draw(features_value)
            elif key in ("estimator", "factory"):
                value = draw(st.sampled_from(IMPORTS))
            else:
                value = draw(toml_values)
            lines.append(f"{json.dumps(key)} = {toml_value(value)}")
    return "\n".join(lines) + "\n"


env_overrides = st.dictionaries(
    st.sampled_from(
        ["DRIFTD_SERVER_PORT", "DRIFTD_SERVER_TOKEN", "DRIFTD_SCHEMA_TASK", "DRIFTD_LOG_LEVEL"]
    ),
    st.one_of(toml_text, st.sampled_from(["[1, 2]", "{a = 1}", "8080", "'x'", "nan"])),
    max_size=2,
)


def load(text: str, env: dict[str, str]) -> tuple[Config | None, ConfigError | None]:
    """The config, or the refusal; any other exception fails the test."""
    try:
        return load_text(text, env=env), None
    except ConfigError as exc:
        return None, exc


@settings(max_examples=300, deadline=None)
@given(text=toml_documents(), env=env_overrides)
def test_any_config_either_loads_or_lists_its_errors(text: str, env: dict[str, str]) -> None:
    config, refused = load(text, env)
    if refused is not None:
        event("refused")
        assert refused.errors, "a ConfigError must list at least one problem"
        assert all(isinstance(e, str) and e for e in refused.errors)
        return
    assert config is not None
    assert config.schema.features, "a loaded config has at least one feature"
    assert config.validate() == []


@FAST
@given(st.text(max_size=200))
def test_any_text_either_loads_or_lists_its_errors(text: str) -> None:
    config, refused = load(text, {})
    assert config is not None or (refused is not None and refused.errors)


# -- label joins -------------------------------------------------------------------------------
JOIN_SCHEMA = Schema(features=(Feature("x0"), Feature("c", "categorical")))


@st.composite
def traffic(draw: st.DrawFn) -> tuple[dict[str, dict[str, Any]], dict[str, int]]:
    """Records (some with a prediction, some bringing their own label) and delayed labels, some
    for records that never arrive."""
    n = draw(st.integers(1, 12))
    records = {
        f"r{i}": {
            "prediction": draw(st.one_of(st.none(), st.integers(0, 1))),
            "label": draw(st.one_of(st.none(), st.integers(0, 1))),
        }
        for i in range(n)
    }
    ids = [*records, "ghost-1", "ghost-2"]
    labels = draw(st.dictionaries(st.sampled_from(ids), st.integers(0, 1), max_size=len(ids)))
    return records, labels


def replay(
    path: Path,
    records: dict[str, dict[str, Any]],
    labels: dict[str, int],
    order: list[tuple[str, str]],
    cuts: list[int],
) -> tuple[dict[str, int | None], set[str], list[tuple[str, Any, Any]]]:
    """Send the operations in ``order``, consecutive ones of a kind batched at ``cuts``."""
    store = SQLiteStore(path, JOIN_SCHEMA).open()
    joined = []
    try:
        batches: list[list[tuple[str, str]]] = []
        for i, op in enumerate(order):
            if batches and batches[-1][0][0] == op[0] and i not in cuts:
                batches[-1].append(op)
            else:
                batches.append([op])
        for t, batch in enumerate(batches):
            if batch[0][0] == "record":
                rids = [rid for _, rid in batch]
                rows = Batch(
                    [{"x0": 1.0, "c": "a"}] * len(rids),
                    float(t),
                    ids=rids,
                    predictions=[records[rid]["prediction"] for rid in rids],
                    labels=[records[rid]["label"] for rid in rids],
                )
                joined += store.add_records(rows, source="test", received=float(t)).joined
            else:
                result = store.add_labels([(rid, labels[rid], float(t)) for _, rid in batch])
                joined += result.joined
        with store.reader() as conn:
            stored = {
                rid: None if label is None else json.loads(label)
                for rid, label in conn.execute("SELECT rid, label FROM records")
            }
            pending = {rid for (rid,) in conn.execute("SELECT rid FROM pending_labels")}
            rids = dict(conn.execute("SELECT idx, rid FROM records").fetchall())
    finally:
        store.close()
    return stored, pending, sorted((rids[j.idx], j.prediction, j.label) for j in joined)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(data=st.data(), case=traffic())
def test_label_joins_do_not_depend_on_the_order_of_arrival(
    data: st.DataObject, case: tuple[dict[str, dict[str, Any]], dict[str, int]]
) -> None:
    records, labels = case
    ops = [("record", rid) for rid in records] + [("label", rid) for rid in labels]
    expected = {
        rid: rec["label"] if rec["label"] is not None else labels.get(rid)
        for rid, rec in records.items()
    }
    outcomes = []
    with tempfile.TemporaryDirectory() as tmp:
        for k in range(2):
            order = data.draw(st.permutations(ops), label=f"order {k}")
            cuts = data.draw(st.lists(st.integers(0, len(ops)), max_size=4), label=f"cuts {k}")
            stored, pending, joined = replay(Path(tmp) / f"{k}.db", records, labels, order, cuts)
            assert stored == expected
            assert pending == set(labels) - set(records)
            # Each stored prediction meets its label exactly once, whichever came first.
            assert joined == sorted(
                (rid, rec["prediction"], expected[rid])
                for rid, rec in records.items()
                if rec["prediction"] is not None and expected[rid] is not None
            )
            outcomes.append((stored, pending, joined))
    assert outcomes[0] == outcomes[1]


class _RowAtATime(BatchWriter):
    """The general insert path only: the reference for the one-statement batch path."""

    def insert(
        self, db: Any, batch: Batch, ids: Any, source: str, received: float, *, block: bytes
    ) -> Any:
        return self._insert_rows(db, batch, ids, source, received, block=block)


_TEXT = st.text(st.characters(codec="utf-8"), min_size=1, max_size=6)
_FLOAT = st.floats(allow_nan=False, allow_infinity=False)
_LABEL = st.one_of(st.none(), st.integers(-(2**70), 2**70), _TEXT)


@st.composite
def batches(draw: st.DrawFn) -> Batch:
    """Batches as the engine builds them: ids given, made up or mixed (NUL included), one time
    or one per record, predictions (NaN included) and labels of every JSON shape."""
    n = draw(st.integers(1, 8))

    def column(values: st.SearchStrategy[Any]) -> list[Any] | None:
        return draw(st.one_of(st.none(), st.lists(values, min_size=n, max_size=n)))

    features = [{"x0": draw(_FLOAT), "c": draw(_TEXT)} for _ in range(n)]
    ts = draw(st.one_of(_FLOAT, st.lists(_FLOAT, min_size=n, max_size=n)))
    ids = column(st.one_of(st.none(), _TEXT))
    predictions = column(st.one_of(_LABEL, st.floats()))
    return Batch(features, ts, ids=ids, predictions=predictions, labels=column(_LABEL))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.lists(batches(), min_size=1, max_size=4))
def test_a_batch_is_stored_as_row_by_row_inserts_would_store_it(data: list[Batch]) -> None:
    """The one-statement insert (JSON arrays taken apart by SQLite) stores exactly what the
    row-at-a-time insert does: every value, its type, re-sent ids skipped, the same results."""
    with tempfile.TemporaryDirectory() as d:
        fast = SQLiteStore(Path(d) / "fast.sqlite3", JOIN_SCHEMA).open()
        slow = SQLiteStore(Path(d) / "slow.sqlite3", JOIN_SCHEMA).open()
        slow._writer = _RowAtATime(JOIN_SCHEMA)
        slow._id_prefix = fast._id_prefix
        try:
            for batch in data:
                a = fast.add_records(batch, source="s", received=1.0)
                b = slow.add_records(batch, source="s", received=1.0)
                assert (a.inserted_idx, a.duplicates, list(a.ids)) == (
                    b.inserted_idx,
                    b.duplicates,
                    list(b.ids),
                )
                assert [dataclasses.astuple(j) for j in a.joined] == [
                    dataclasses.astuple(j) for j in b.joined
                ]
            assert _stored(fast) == _stored(slow)
        finally:
            fast.close()
            slow.close()


def _stored(store: SQLiteStore) -> list[tuple[Any, ...]]:
    def decoded(text: str | None) -> Any:
        return None if text is None else json.loads(text)

    with store.reader() as conn:
        rows = conn.execute(
            "SELECT idx, rid, ts, received, source, num, cat, prediction, model_version, label,"
            " label_ts, typeof(ts), typeof(num) FROM records ORDER BY idx"
        ).fetchall()
    return [
        (*r[:6], decoded(r[6]), repr(decoded(r[7])), r[8], repr(decoded(r[9])), *r[10:])
        for r in rows
    ]
