"""Checkpoint framing and a restricted unpickler for the monitor's state file.

The file lives in the state directory, so loading it must not be a way to run code: the
unpickler resolves only classes of river and of ``driftd.monitor``, builtin containers,
``collections.deque`` and numpy's array reconstruction. The header names the schema and
detector configuration the state was written under; a mismatch is refused before unpickling.
"""

from __future__ import annotations

import io
import json
import pickle
from typing import Any

from driftd.errors import DriftdError

__all__ = ["MAGIC", "CheckpointMismatch", "frame", "unframe"]

MAGIC = b"DRIFTD-MONITOR\n"
VERSION = 1

_BUILTINS = frozenset({"dict", "list", "tuple", "set", "frozenset", "bytes", "bytearray"})
_EXACT = frozenset(
    {
        ("collections", "deque"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy._core.numeric", "_frombuffer"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
    }
)
_CLASS_PREFIXES = ("river.", "driftd.monitor.")


class CheckpointMismatch(DriftdError):
    """The checkpoint was written under another schema or detector configuration, or is not one."""


class _Unpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if "." in name:
            raise pickle.UnpicklingError(f"refusing dotted name {module}.{name}")
        if module == "builtins" and name in _BUILTINS:
            return super().find_class(module, name)
        if (module, name) in _EXACT or module.startswith("numpy.dtypes"):
            return super().find_class(module, name)
        if module.startswith(_CLASS_PREFIXES):
            found = super().find_class(module, name)
            if isinstance(found, type):
                return found
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a checkpoint")


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
        return _Unpickler(io.BytesIO(data[end + 1 :])).load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as exc:
        raise CheckpointMismatch(f"checkpoint cannot be loaded: {exc}") from None
