"""Import paths from the config: ``pkg.mod.Name`` or ``pkg.mod:name``, checked, then imported."""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["check_import", "import_object"]


def check_import(path: str) -> str | None:
    """Return what is wrong with an import path ``pkg.mod.Name`` or ``pkg.mod:name``, or None."""
    module, sep, attr = path.partition(":")
    if not sep:
        module, _, attr = path.rpartition(".")
    if not module or not attr:
        return "expected an import path such as 'sklearn.linear_model.LogisticRegression'"
    try:
        mod = importlib.import_module(module)
    except ImportError as exc:
        return f"cannot import module {module!r} ({exc})"
    if not callable(getattr(mod, attr, None)):
        return f"module {module!r} has no callable {attr!r}"
    return None


def import_object(path: str) -> Any:
    """Import ``pkg.mod.Name`` or ``pkg.mod:name`` (already checked by validation)."""
    module, sep, attr = path.partition(":")
    if not sep:
        module, _, attr = path.rpartition(".")
    return getattr(importlib.import_module(module), attr)
