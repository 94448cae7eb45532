"""The model registry: immutable version directories, champion/previous aliases, integrity checks.

A version is published by writing ``model.skops``, its calibrator ``calibration.json`` when it
has one (:mod:`driftd.models.calibration`), and then ``manifest.json`` (holding the sha256 of
each) into a temporary directory beside the others, fsyncing each, and renaming the
directory into place: a version is either whole or absent. The aliases live in one small
file replaced atomically (temp file in the same directory, fsync, ``os.replace``, fsync the
directory). A version is deleted the same way backwards: its directory is first renamed to a
temporary name, the one step a reader can see, and only then removed. A crash at any instant
therefore leaves a registry whose champion loads and whose listed versions are whole; temporary
leftovers, a half-removed version among them, are swept at start.

Artifacts are loaded with skops and a trusted-type list pinned here: a model file is never a
way to run code. A calibrator is plain JSON, checked field by field: it needs no trusted type.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from driftd._fs import TMP_PREFIX, atomic_write, fsync_dir
from driftd.errors import IntegrityError
from driftd.models.calibration import Calibrator
from driftd.models.online import RIVER_MODEL

__all__ = [
    "TRUSTED_TYPES",
    "Aliases",
    "Audit",
    "ModelRegistry",
    "Registry",
    "Version",
    "checked",
    "load_artifact",
    "manifest_of",
    "verified_calibrator",
]

log = logging.getLogger(__name__)

ARTIFACT = "model.skops"
CALIBRATION = "calibration.json"
MANIFEST = "manifest.json"
ALIASES = "aliases.json"
_VERSION_DIR = re.compile(r"^v(\d{6})$")
_RETIRED = "deleted-"
_RETIRED_DIR = re.compile(rf"^{re.escape(TMP_PREFIX + _RETIRED)}v(\d{{6}})$")

#: Types beyond skops' own defaults that a driftd model may contain. skops trusts scikit-learn's
#: public estimators and numpy containers by default; these are the compiled internals of
#: estimators driftd builds. Anything else in an artifact refuses to load unless the operator
#: lists it in ``model.trusted_types``.
TRUSTED_TYPES: frozenset[str] = frozenset(
    {
        "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
        "sklearn.ensemble._hist_gradient_boosting.binning._BinMapper",
        "sklearn._loss.link.LogitLink",
        "sklearn._loss.link.MultinomialLogit",
        "sklearn._loss.link.IdentityLink",
        "sklearn._loss.loss.HalfBinomialLoss",
        "sklearn._loss.loss.HalfMultinomialLoss",
        "sklearn._loss.loss.HalfSquaredError",
        "sklearn.tree._tree.Tree",
        "sklearn.utils._bunch.Bunch",
        # The online learner's adapter; the river model inside it is unpickled by the
        # restricted loader, which resolves river's classes only (driftd.models.online).
        RIVER_MODEL,
    }
)


@dataclass(frozen=True, slots=True)
class Version:
    """A published version: its number, its manifest, and its directory (``None`` for a
    version held in a database)."""

    number: int
    path: Path | None
    manifest: dict[str, Any]

    @property
    def name(self) -> str:
        return f"v{self.number:06d}"


@dataclass(frozen=True, slots=True)
class Aliases:
    champion: int | None = None
    previous: int | None = None

    def as_dict(self) -> dict[str, int | None]:
        return {"champion": self.champion, "previous": self.previous}


#: An audit event for the registry to record with a change: ``(kind, data)``.
Audit = tuple[str, dict[str, Any]]
#: Records an audit event in the store (the lifecycle's, bound to its clock).
Record = Callable[[str, dict[str, Any]], object]


class ModelRegistry(Protocol):
    """Versions and aliases, on files (:class:`Registry`) or in the shared database
    (:class:`~driftd.models.registry_pg.PostgresRegistry`). A change's audit event is recorded
    with it: in the same transaction where the registry shares the store's database, right
    after it otherwise (the lifecycle completes the log after a crash between the two)."""

    extra_trusted: tuple[str, ...]

    @property
    def where(self) -> str: ...

    def sweep(self) -> list[str]: ...

    def retired(self) -> list[int]: ...

    def numbers(self) -> list[int]: ...

    def get(self, number: int) -> Version: ...

    def versions(self) -> list[Version]: ...

    def publish(
        self, artifact: bytes, manifest: dict[str, Any], *, calibration: bytes | None = None
    ) -> Version: ...

    def retire(self, number: int, *, event: Audit, record: Record) -> Any: ...

    def purge(self, retired: Any) -> None: ...

    def read(self, number: int) -> tuple[Version, bytes]: ...

    def loads(self, version: Version, data: bytes) -> Any: ...

    def calibrator(self, version: Version) -> Calibrator | None: ...

    def aliases(self) -> Aliases: ...

    def changed_at(self) -> float | None: ...

    def set_champion(
        self, number: int, *, event: Audit | None = None, record: Record | None = None
    ) -> Aliases: ...


def load_artifact(data: bytes, *, extra_trusted: Iterable[str] = ()) -> Any:
    """Load skops bytes, refusing any type outside the pinned list (and ``extra_trusted``)."""
    import skops.io as sio

    allowed = TRUSTED_TYPES | frozenset(extra_trusted)
    try:
        untrusted = sio.get_untrusted_types(data=data)
    except Exception as exc:  # a corrupt or foreign file: skops raises many kinds
        raise IntegrityError(
            f"not a readable skops artifact ({type(exc).__name__}: {exc})"
        ) from exc
    refused = sorted(set(untrusted) - allowed)
    if refused:
        raise IntegrityError(
            "artifact contains untrusted types: "
            + ", ".join(refused[:10])
            + (" ..." if len(refused) > 10 else "")
            + " (list them in model.trusted_types only if you trust where the file came from)"
        )
    try:
        return sio.loads(data, trusted=list(untrusted))
    except Exception as exc:
        raise IntegrityError(
            f"skops could not load the artifact ({type(exc).__name__}: {exc})"
        ) from exc


class Registry:
    """Versions under ``root`` (``models/`` in the state dir)."""

    def __init__(self, root: Path, *, extra_trusted: Iterable[str] = ()) -> None:
        self.root = root
        self.extra_trusted = tuple(extra_trusted)
        self.root.mkdir(parents=True, exist_ok=True)

    @property
    def where(self) -> str:
        return str(self.root)

    def sweep(self) -> list[str]:
        """Remove temporary leftovers of interrupted writes and deletions; returns their names."""
        removed = []
        for entry in self.root.iterdir():
            if entry.name.startswith(TMP_PREFIX):
                if entry.is_dir():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    entry.unlink(missing_ok=True)
                removed.append(entry.name)
        if removed:
            fsync_dir(self.root)
            log.info("swept %d temporary file(s) left by an interrupted write", len(removed))
        return removed

    def retired(self) -> list[int]:
        """Versions whose deletion a crash cut short after :meth:`retire` (until :meth:`sweep`)."""
        found = (_RETIRED_DIR.match(entry.name) for entry in self.root.iterdir())
        return sorted(int(m.group(1)) for m in found if m)

    # -- versions --------------------------------------------------------------------------
    def numbers(self) -> list[int]:
        out = []
        for entry in self.root.iterdir():
            m = _VERSION_DIR.match(entry.name)
            if m and entry.is_dir():
                out.append(int(m.group(1)))
        return sorted(out)

    def get(self, number: int) -> Version:
        path = self.root / f"v{number:06d}"
        try:
            manifest = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise IntegrityError(f"v{number:06d}: manifest unreadable ({exc})") from exc
        return Version(number, path, manifest)

    def versions(self) -> list[Version]:
        out = []
        for n in self.numbers():
            try:
                out.append(self.get(n))
            except IntegrityError as exc:
                if (self.root / f"v{n:06d}").exists():  # not one retired since it was listed
                    log.warning("skipping a version with an unreadable manifest: %s", exc)
        return out

    def publish(
        self, artifact: bytes, manifest: dict[str, Any], *, calibration: bytes | None = None
    ) -> Version:
        """Write a new immutable version; the manifest (with the sha256 of the artifact and of
        the calibrator, ``None`` for a version without one) goes last."""
        numbers = self.numbers()
        number = (numbers[-1] if numbers else 0) + 1
        final = self.root / f"v{number:06d}"
        tmp = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{final.name}.", dir=self.root))
        try:
            full = manifest_of(number, manifest, artifact, calibration)
            _write_synced(tmp / ARTIFACT, artifact)
            if calibration is not None:
                _write_synced(tmp / CALIBRATION, calibration)
            _write_synced(tmp / MANIFEST, json.dumps(full, indent=2, sort_keys=True).encode())
            fsync_dir(tmp)
            os.rename(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        fsync_dir(self.root)
        return Version(number, final, full)

    def retire(self, number: int, *, event: Audit, record: Record) -> Path:
        """Take a version out of the registry in one rename (to a temporary name, fsynced):
        before it the version is listed and whole, after it absent; then record ``event``.
        Returns the renamed directory for :meth:`purge`; a crash before that leaves it to
        :meth:`sweep`, and the lifecycle records the event a crash may have lost."""
        name = f"v{number:06d}"
        retired = self.root / f"{TMP_PREFIX}{_RETIRED}{name}"
        os.rename(self.root / name, retired)
        fsync_dir(self.root)
        record(*event)
        return retired

    def purge(self, retired: Path) -> None:
        """Remove a directory :meth:`retire` returned."""
        shutil.rmtree(retired)
        fsync_dir(self.root)

    def load(self, number: int) -> tuple[Version, Any]:
        """Verify and load a version: manifest readable, sha256 matching, types trusted."""
        version, data = self.read(number)
        return version, self.loads(version, data)

    def loads(self, version: Version, data: bytes) -> Any:
        """Load a version's artifact bytes (from :meth:`read`), refusing untrusted types."""
        try:
            return load_artifact(data, extra_trusted=self.extra_trusted)
        except IntegrityError as exc:
            raise IntegrityError(f"{version.name}: {exc}") from exc

    def read(self, number: int) -> tuple[Version, bytes]:
        """A version's artifact bytes, verified against the sha256 in its manifest."""
        version = self.get(number)
        return version, _verified(version, ARTIFACT, version.manifest.get("sha256"))

    def calibrator(self, version: Version) -> Calibrator | None:
        """A version's calibrator, verified against the sha256 in its manifest like the
        artifact; ``None`` for a version published without one (or before calibration)."""
        digest = version.manifest.get("calibration_sha256")
        if digest is None:
            return None
        return verified_calibrator(version, _verified(version, CALIBRATION, digest))

    # -- aliases ---------------------------------------------------------------------------
    def aliases(self) -> Aliases:
        path = self.root / ALIASES
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return Aliases()
        except (OSError, ValueError) as exc:
            # Written atomically, so this is damage from outside; the versions still stand.
            log.error("aliases file unreadable (%s); falling back to the newest valid version", exc)
            return Aliases()
        return Aliases(data.get("champion"), data.get("previous"))

    def changed_at(self) -> float | None:
        """When the aliases last changed (the file is replaced at every change), if ever."""
        try:
            return (self.root / ALIASES).stat().st_mtime
        except FileNotFoundError:
            return None

    def set_champion(
        self, number: int, *, event: Audit | None = None, record: Record | None = None
    ) -> Aliases:
        """Make ``number`` the champion and the current champion the previous one, atomically;
        then record ``event``, its data with the new champion's ``version`` and ``previous``."""
        current = self.aliases()
        previous = current.champion if current.champion != number else current.previous
        new = Aliases(champion=number, previous=previous)
        atomic_write(self.root / ALIASES, json.dumps(new.as_dict()).encode())
        if event is not None and record is not None:
            kind, data = event
            record(kind, {**data, "version": number, "previous": previous})
        return new


def manifest_of(
    number: int, manifest: dict[str, Any], artifact: bytes, calibration: bytes | None
) -> dict[str, Any]:
    """A version's full manifest: the given one with the number, and the sha256 and size of
    its bytes (``calibration_sha256`` ``None`` for a version without a calibrator)."""
    return {
        **manifest,
        "version": number,
        "sha256": hashlib.sha256(artifact).hexdigest(),
        "size": len(artifact),
        "calibration_sha256": None
        if calibration is None
        else hashlib.sha256(calibration).hexdigest(),
    }


def checked(version: Version, what: str, data: bytes | None, digest: object) -> bytes:
    """``data``, refused unless it exists and its sha256 is ``digest``."""
    if data is None:
        raise IntegrityError(f"{version.name}: {what} missing")
    if hashlib.sha256(data).hexdigest() != digest:
        raise IntegrityError(f"{version.name}: {what} sha256 mismatch (changed after publish)")
    return data


def verified_calibrator(version: Version, data: bytes) -> Calibrator:
    """A version's calibrator from its verified bytes, checked field by field."""
    try:
        return Calibrator.loads(data)
    except ValueError as exc:
        raise IntegrityError(f"{version.name}: calibration refused ({exc})") from exc


def _verified(version: Version, name: str, digest: object) -> bytes:
    """The bytes of ``name`` in ``version``, refused unless their sha256 is ``digest``."""
    what = "artifact" if name == ARTIFACT else "calibration"
    assert version.path is not None
    try:
        data = (version.path / name).read_bytes()
    except OSError as exc:
        raise IntegrityError(f"{version.name}: {what} unreadable ({exc.strerror})") from exc
    return checked(version, what, data, digest)


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
