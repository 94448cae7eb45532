"""Checkpoint framing and a restricted unpickler for the monitor's state file.

The file lives in the state directory, so loading it must not be a way to run code: it is
unpickled by :func:`driftd._unpickle.restricted_loads`, allowing the classes of river and of
``driftd.monitor``. The header names the schema and detector configuration the state was
written under; a mismatch is refused before unpickling.
"""

from __future__ import annotations

import json
import pickle
from typing import Any

from driftd._unpickle import restricted_loads
from driftd.errors import DriftdError

__all__ = ["MAGIC", "CheckpointMismatch", "frame", "unframe"]

MAGIC = b"DRIFTD-MONITOR\n"
VERSION = 1

_CLASS_PREFIXES = ("river.", "driftd.monitor.")


class CheckpointMismatch(DriftdError):
    """The checkpoint was written under another schema or detector configuration, or is not one."""


def frame(state: Any, header: dict[str, Any]) -> bytes:
    """The checkpoint bytes: magic, one JSON header line, then the pickled state."""
    head = json.dumps({"version": VERSION, **header}, sort_keys=True).encode()
    return MAGIC + head + b"\n" + pickle.dumps(state, protocol=5)


def unframe(data: bytes, expected: dict[str, Any]) -> Any:
    """Check the header against ``expected`` and unpickle the state with the restricted loader."""
    if not data.startswith(MAGIC):
        raise CheckpointMismatch("not a driftd monitor checkpoint")
    end = data.find(b"\n", len(MAGIC))
    try:
        header = json.loads(data[len(MAGIC) : end])
    except ValueError:
        raise CheckpointMismatch("unreadable checkpoint header") from None
    if header.get("version") != VERSION:
        raise CheckpointMismatch(
            f"checkpoint version {header.get('version')!r}, expected {VERSION}"
        )
    for key, want in expected.items():
        if header.get(key) != want:
            raise CheckpointMismatch(
                f"checkpoint {key}: written under {header.get(key)!r}, running {want!r}"
            )
    try:
        return restricted_loads(data[end + 1 :], _CLASS_PREFIXES)
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as exc:
        raise CheckpointMismatch(f"checkpoint cannot be loaded: {exc}") from None
