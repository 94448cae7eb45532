"""The registry: immutable versions, atomic aliases, integrity and trusted-type checks."""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
import skops.io as sio
from sklearn.linear_model import LogisticRegression

from driftd.errors import IntegrityError
from driftd.models.calibration import Calibrator, IsotonicMap
from driftd.models.registry import Registry, load_artifact


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
    retired = reg.retire(2)
    assert reg.numbers() == [1, 3] and [v.number for v in reg.versions()] == [1, 3]
    assert reg.retired() == [2]
    with pytest.raises(IntegrityError, match="v000002: manifest unreadable"):
        reg.load(2)
    assert reg.sweep() == [retired.name] and reg.retired() == []
    reg.purge(reg.retire(1))
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
