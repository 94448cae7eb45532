"""The model registry in the shared PostgreSQL database, for every daemon of one model.

The same registry as on files (:mod:`driftd.models.registry`): immutable numbered versions,
their sha256 in the manifest, champion and previous aliases, the same trusted-type checks. What
the files get from renames the database gets from transactions: a version is one row, written
whole or not at all; the alias moves in the same transaction as its audit event, and a version
is deleted in the same transaction as its ``model_deleted`` event. There is nothing to sweep
after a crash. The rows live in the store's tables (:class:`~driftd.store.PostgresStore`
owns them); this class gives them the registry's meaning.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from driftd.errors import IntegrityError
from driftd.models.calibration import Calibrator
from driftd.models.registry import (
    Aliases,
    Audit,
    Record,
    Version,
    checked,
    load_artifact,
    manifest_of,
    verified_calibrator,
)
from driftd.store import PostgresStore

__all__ = ["PostgresRegistry"]


class PostgresRegistry:
    """Versions and aliases in ``store``'s namespace."""

    def __init__(
        self,
        store: PostgresStore,
        *,
        extra_trusted: Iterable[str] = (),
        clock: Callable[[], float],
    ) -> None:
        self.store = store
        self.extra_trusted = tuple(extra_trusted)
        self.clock = clock

    @property
    def where(self) -> str:
        return f"PostgreSQL schema {self.store.namespace!r}"

    def sweep(self) -> list[str]:
        """Nothing to sweep: an interrupted write rolled back."""
        return []

    def retired(self) -> list[int]:
        """None: a version and its deletion's event go in one transaction."""
        return []

    # -- versions --------------------------------------------------------------------------
    def numbers(self) -> list[int]:
        return self.store.version_numbers()

    def get(self, number: int) -> Version:
        manifest = self.store.version_manifest(number)
        if manifest is None:
            raise IntegrityError(f"v{number:06d}: no such version")
        return Version(number, None, manifest)

    def versions(self) -> list[Version]:
        return [self.get(n) for n in self.numbers()]

    def publish(
        self, artifact: bytes, manifest: dict[str, Any], *, calibration: bytes | None = None
    ) -> Version:
        """Write a new immutable version (the store gives it the next number)."""
        full = manifest_of(0, manifest, artifact, calibration)
        number = self.store.add_version(full, artifact, calibration)
        return Version(number, None, {**full, "version": number})

    def retire(self, number: int, *, event: Audit, record: Record) -> None:
        """Delete the version and record ``event`` in one transaction (``record`` is not
        needed: the store writes the event itself)."""
        del record
        self.store.delete_version(number, ts=self.clock(), event=event)

    def purge(self, retired: Any) -> None:
        """Nothing left to remove once :meth:`retire` committed."""

    def read(self, number: int) -> tuple[Version, bytes]:
        """A version's artifact bytes, verified against the sha256 in its manifest."""
        version = self.get(number)
        data = self.store.version_bytes(number, "artifact")
        return version, checked(version, "artifact", data, version.manifest.get("sha256"))

    def loads(self, version: Version, data: bytes) -> Any:
        try:
            return load_artifact(data, extra_trusted=self.extra_trusted)
        except IntegrityError as exc:
            raise IntegrityError(f"{version.name}: {exc}") from exc

    def load(self, number: int) -> tuple[Version, Any]:
        version, data = self.read(number)
        return version, self.loads(version, data)

    def calibrator(self, version: Version) -> Calibrator | None:
        digest = version.manifest.get("calibration_sha256")
        if digest is None:
            return None
        data = self.store.version_bytes(version.number, "calibration")
        return verified_calibrator(version, checked(version, "calibration", data, digest))

    # -- aliases ---------------------------------------------------------------------------
    def aliases(self) -> Aliases:
        champion, previous, _ = self.store.aliases_row()
        return Aliases(champion, previous)

    def changed_at(self) -> float | None:
        return self.store.aliases_row()[2]

    def set_champion(
        self, number: int, *, event: Audit | None = None, record: Record | None = None
    ) -> Aliases:
        """Move the aliases and record ``event`` (its data with the new champion's ``version``
        and ``previous``) in one transaction."""
        del record
        champion, previous = self.store.move_champion(number, ts=self.clock(), event=event)
        return Aliases(champion, previous)
