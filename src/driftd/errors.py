"""Domain exceptions. Each carries a message that names what was wrong and what was expected."""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "DriftdError",
    "IntegrityError",
    "NotLeader",
    "StoreUnavailable",
    "StoreVersionError",
]


class DriftdError(Exception):
    """Base class for errors raised by driftd itself."""


class ConfigError(DriftdError):
    """The configuration is invalid; ``errors`` lists every problem found, one per line."""

    def __init__(self, errors: list[str]) -> None:
        self.errors = list(errors)
        super().__init__("invalid configuration:\n" + "\n".join(f"  {e}" for e in self.errors))


class StoreVersionError(DriftdError):
    """The store on disk was written by a newer (or unknown) version of driftd."""


class StoreUnavailable(DriftdError):
    """The store's database cannot be reached now; nothing of the operation was committed."""


class NotLeader(DriftdError):
    """A change only the leader of a model may make, asked of a daemon that does not lead."""


class IntegrityError(DriftdError):
    """A registry artifact failed verification (checksum, trusted types, or load)."""
