"""The registry: immutable versions, atomic aliases, integrity and trusted-type checks."""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import skops.io as sio
from sklearn.linear_model import LogisticRegression

from driftd.errors import IntegrityError
from driftd.ingest.schema import Feature, Schema
from driftd.models.calibration import Calibrator, IsotonicMap
from driftd.models.registry import ModelRegistry, Registry, load_artifact
from driftd.models.registry_pg import PostgresRegistry
from driftd.store import PostgresStore, SQLiteStore


@pytest.fixture
def artifact() -> bytes:
    X = np.array([[0.0], [1.0], [2.0], [3.0]])
    return sio.dumps(LogisticRegression().fit(X, [0, 0, 1, 1]))


def test_publish_writes_an_immutable_version_with_its_sha256(
    tmp_path: Path, artifact: bytes
) -> None:
    reg = Registry(tmp_path)
    v1 = reg.publish(artifact, {"reason": "test"})
    v2 = reg.publish(artifact, {"reason": "again"})
    assert (v1.number, v2.number) == (1, 2)
    manifest = json.loads((tmp_path / "v000001" / "manifest.json").read_text())
    assert manifest["reason"] == "test" and len(manifest["sha256"]) == 64
    _, model = reg.load(1)
    assert model.predict(np.array([[3.0]]))[0] == 1


def test_aliases_move_atomically_and_keep_the_previous(tmp_path: Path, artifact: bytes) -> None:
    reg = Registry(tmp_path)
    for _ in range(3):
        reg.publish(artifact, {})
    reg.set_champion(1)
    reg.set_champion(3)
    assert reg.aliases().as_dict() == {"champion": 3, "previous": 1}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]


def test_sweep_removes_leftovers_of_interrupted_writes(tmp_path: Path, artifact: bytes) -> None:
    reg = Registry(tmp_path)
    reg.publish(artifact, {})
    (tmp_path / ".tmp-v000002.abc").mkdir()
    (tmp_path / ".tmp-v000002.abc" / "model.skops").write_bytes(b"half")
    (tmp_path / ".tmp-aliases.json.xyz").write_bytes(b"{")
    assert sorted(reg.sweep()) == [".tmp-aliases.json.xyz", ".tmp-v000002.abc"]
    assert reg.numbers() == [1]


def test_a_tampered_artifact_is_refused(tmp_path: Path, artifact: bytes) -> None:
    reg = Registry(tmp_path)
    v = reg.publish(artifact, {})
    path = v.path / "model.skops"
    os.chmod(path, 0o600)
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="sha256 mismatch"):
        reg.load(1)


class _Payload:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, ("touch /nonexistent-driftd-marker",))


def test_a_pickle_payload_is_not_a_loadable_artifact(tmp_path: Path) -> None:
    with pytest.raises(IntegrityError, match="not a readable skops artifact"):
        load_artifact(pickle.dumps(_Payload()))


def test_a_skops_file_naming_an_untrusted_callable_is_refused(
    tmp_path: Path, artifact: bytes
) -> None:
    """Rewrite a real artifact's schema so that a node names os.system: it must be refused
    before anything is constructed."""
    src = zipfile.ZipFile(io.BytesIO(artifact))
    schema = json.loads(src.read("schema.json"))
    schema["__module__"], schema["__class__"] = "os", "system"
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as dst:
        for name in src.namelist():
            dst.writestr(name, json.dumps(schema) if name == "schema.json" else src.read(name))
    with pytest.raises(IntegrityError, match="untrusted types"):
        load_artifact(out.getvalue())


def test_a_retired_version_is_neither_listed_nor_loadable_and_is_swept(
    tmp_path: Path, artifact: bytes
) -> None:
    """Deletion renames first: from that instant the version is gone for every reader, and
    what is left of it is a temporary leftover that the start-up sweep removes."""
    reg = Registry(tmp_path)
    for _ in range(3):
        reg.publish(artifact, {})
    events: list[tuple[str, dict[str, object]]] = []

    def record(kind: str, data: dict[str, object]) -> None:
        events.append((kind, data))

    retired = reg.retire(2, event=("model_deleted", {"version": 2}), record=record)
    assert events == [("model_deleted", {"version": 2})]
    assert reg.numbers() == [1, 3] and [v.number for v in reg.versions()] == [1, 3]
    assert reg.retired() == [2]
    with pytest.raises(IntegrityError, match="v000002: manifest unreadable"):
        reg.load(2)
    assert reg.sweep() == [retired.name] and reg.retired() == []
    reg.purge(reg.retire(1, event=("model_deleted", {"version": 1}), record=record))
    assert reg.numbers() == [3] and [p.name for p in tmp_path.iterdir()] == ["v000003"]


def squash() -> Calibrator:
    """A calibrator that pulls every positive-class probability towards 0.5."""
    return Calibrator(("0", "1"), (IsotonicMap((0.0, 1.0), (0.25, 0.75)),))


def test_a_calibrator_round_trips_through_the_registry_with_its_sha256(
    tmp_path: Path, artifact: bytes
) -> None:
    reg = Registry(tmp_path)
    plain = reg.publish(artifact, {})
    calibrated = reg.publish(artifact, {}, calibration=squash().dumps())
    assert plain.manifest["calibration_sha256"] is None and reg.calibrator(plain) is None
    assert not (plain.path / "calibration.json").exists()
    on_disk = (calibrated.path / "calibration.json").read_bytes()
    assert calibrated.manifest["calibration_sha256"] == hashlib.sha256(on_disk).hexdigest()
    assert reg.calibrator(reg.get(calibrated.number)) == squash()


def test_a_version_from_before_calibration_has_none(tmp_path: Path, artifact: bytes) -> None:
    reg = Registry(tmp_path)
    v = reg.publish(artifact, {})
    manifest = json.loads((v.path / "manifest.json").read_text())
    del manifest["calibration_sha256"]
    (v.path / "manifest.json").write_text(json.dumps(manifest))
    assert reg.calibrator(reg.get(v.number)) is None


def test_a_tampered_or_missing_calibrator_is_refused_like_a_tampered_artifact(
    tmp_path: Path, artifact: bytes
) -> None:
    reg = Registry(tmp_path)
    v = reg.publish(artifact, {}, calibration=squash().dumps())
    path = v.path / "calibration.json"
    path.write_bytes(path.read_bytes().replace(b"0.75", b"0.95"))  # still a valid calibrator
    with pytest.raises(IntegrityError, match="v000001: calibration sha256 mismatch"):
        reg.calibrator(v)
    path.unlink()
    with pytest.raises(IntegrityError, match="v000001: calibration unreadable"):
        reg.calibrator(v)


def test_a_calibrator_that_matches_its_sha256_but_is_not_one_is_refused(
    tmp_path: Path, artifact: bytes
) -> None:
    """A manifest rewritten to vouch for a foreign file still only gets a JSON parse: the
    bytes are checked field by field, never unpickled or imported."""
    reg = Registry(tmp_path)
    bad = pickle.dumps(_Payload())
    v = reg.publish(artifact, {}, calibration=bad)
    with pytest.raises(IntegrityError, match="v000001: calibration refused \\(not JSON"):
        reg.calibrator(v)


# -- the same registry over both backends ------------------------------------------------------
@pytest.fixture(params=["files", "postgres"])
def any_registry(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[ModelRegistry, SQLiteStore | PostgresStore]]:
    """A registry and the store its audit events go to: on files beside SQLite, or both in
    one PostgreSQL schema."""
    schema = Schema(features=(Feature("x"),))
    store: SQLiteStore | PostgresStore
    registry: ModelRegistry
    if request.param == "files":
        store = SQLiteStore(tmp_path / "s.sqlite3", schema).open()
        registry = Registry(tmp_path / "models")
    else:
        server = request.getfixturevalue("postgres")
        namespace = request.getfixturevalue("pg_namespace")
        store = PostgresStore(server.url(), schema, namespace=namespace).open()
        registry = PostgresRegistry(store, clock=lambda: 5.0)
    yield registry, store
    store.close()


def tamper(registry: ModelRegistry, number: int, part: str, data: bytes) -> None:
    """Change a published version's bytes behind the registry's back."""
    if isinstance(registry, Registry):
        name = "model.skops" if part == "artifact" else "calibration.json"
        (registry.root / f"v{number:06d}" / name).write_bytes(data)
        return
    import psycopg

    assert isinstance(registry, PostgresRegistry)
    store = registry.store
    with psycopg.connect(store.url, autocommit=True) as db:
        db.execute(
            f"UPDATE {store.namespace}.versions SET {part} = %s WHERE number = %s",  # noqa: S608
            (data, number),
        )


def test_both_registries_verify_what_they_load(
    any_registry: tuple[ModelRegistry, SQLiteStore | PostgresStore], artifact: bytes
) -> None:
    registry, _ = any_registry
    v1 = registry.publish(artifact, {"reason": "test"}, calibration=squash().dumps())
    v2 = registry.publish(artifact, {"reason": "again"})
    assert (v1.number, v2.number) == (1, 2) and registry.numbers() == [1, 2]
    assert registry.get(1).manifest["sha256"] == hashlib.sha256(artifact).hexdigest()
    version, data = registry.read(1)
    assert registry.loads(version, data).predict(np.array([[3.0]]))[0] == 1
    assert registry.calibrator(version) == squash()
    assert registry.calibrator(registry.get(2)) is None
    tamper(registry, 1, "artifact", artifact + b"x")
    with pytest.raises(IntegrityError, match="v000001: artifact sha256 mismatch"):
        registry.read(1)
    tamper(registry, 1, "calibration", b"{}")
    with pytest.raises(IntegrityError, match="v000001: calibration sha256 mismatch"):
        registry.calibrator(registry.get(1))


def test_both_registries_move_the_alias_with_its_event(
    any_registry: tuple[ModelRegistry, SQLiteStore | PostgresStore], artifact: bytes
) -> None:
    registry, store = any_registry

    def record(kind: str, data: dict[str, object]) -> None:
        store.add_event(kind, data, ts=5.0)

    for _ in range(3):
        registry.publish(artifact, {})
    registry.set_champion(1, event=("deploy", {"reason": "a"}), record=record)
    moved = registry.set_champion(3, event=("deploy", {"reason": "b"}), record=record)
    assert moved.as_dict() == registry.aliases().as_dict() == {"champion": 3, "previous": 1}
    assert registry.changed_at() is not None
    (last,) = store.events(kind="deploy", limit=1)
    assert last.data == {"reason": "b", "version": 3, "previous": 1}
    registry.retire(2, event=("model_deleted", {"version": 2}), record=record)
    assert registry.numbers() == [1, 3]
    assert [e.data for e in store.events(kind="model_deleted")] == [{"version": 2}]


# -- PostgreSQL: the alias, its event and the standbys' notice are one commit ------------------
@pytest.fixture
def pg_registry(postgres: Any, pg_namespace: str) -> Iterator[PostgresRegistry]:
    store = PostgresStore(postgres.url(), Schema((Feature("x"),)), namespace=pg_namespace).open()
    yield PostgresRegistry(store, clock=lambda: 5.0)
    store.close()


def test_on_postgresql_an_alias_whose_event_fails_does_not_move(
    pg_registry: PostgresRegistry, artifact: bytes
) -> None:
    """The database refuses the deploy event: the alias stays where it was, and no standby is
    told of a move that did not happen."""
    import psycopg

    store = pg_registry.store
    for _ in range(2):
        pg_registry.publish(artifact, {})
    pg_registry.set_champion(1, event=("deploy", {"reason": "a"}))
    leader, standby = store.leadership(), store.leadership()
    assert leader.try_acquire() and not standby.try_acquire()
    with psycopg.connect(store.url, autocommit=True) as db:
        db.execute(f"SET search_path TO {store.namespace}")
        db.execute(
            "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS"
            " $$ BEGIN RAISE EXCEPTION 'no events today'; END $$"
        )
        db.execute("CREATE TRIGGER refuse BEFORE INSERT ON events EXECUTE FUNCTION refuse()")
    with pytest.raises(psycopg.Error, match="no events today"):
        pg_registry.set_champion(2, event=("deploy", {"reason": "b"}))
    assert pg_registry.aliases().as_dict() == {"champion": 1, "previous": None}
    assert [e.data["version"] for e in store.events(kind="deploy")] == [1]
    assert standby.wait_for_move(0.3) is False
    leader.release()
    standby.release()


def test_on_postgresql_a_standby_hears_the_champion_move_when_it_commits(
    pg_registry: PostgresRegistry, artifact: bytes
) -> None:
    """What lets a standby serve a new champion within a second: it is told at the commit,
    without waiting for its next look."""
    store = pg_registry.store
    leader, standby = store.leadership(), store.leadership()
    assert leader.try_acquire() and not standby.try_acquire()
    assert standby.wait_for_move(0.05) is False
    assert leader.wait_for_move(0.05) is None  # the leader moves it; it does not listen
    pg_registry.publish(artifact, {})
    pg_registry.set_champion(1, event=("deploy", {"reason": "a"}))
    start = time.monotonic()
    assert standby.wait_for_move(5.0) is True
    assert time.monotonic() - start < 0.5
    assert standby.wait_for_move(0.05) is False  # told once
    leader.release()
    standby.release()
