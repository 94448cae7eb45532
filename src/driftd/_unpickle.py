"""A restricted unpickler for state driftd writes itself: loading it must not run code.

It resolves only classes under the given module prefixes (river's, driftd's own), builtin
containers and numbers, a few standard-library value classes that river's models hold, and
numpy's array reconstruction. A function (other than :func:`functools.partial`, which can only
wrap what this same rule allowed, and two named static methods of river's regression trees) or
a dotted name is refused, so a pickle cannot reach ``os.system``, ``builtins.eval`` or a river
function that reads files.
"""

from __future__ import annotations

import io
import pickle
from collections.abc import Iterable
from typing import Any

__all__ = ["RefusedPickle", "restricted_loads"]

_BUILTINS = frozenset(
    {"dict", "list", "tuple", "set", "frozenset", "bytes", "bytearray", "int", "float", "complex"}
)
_EXACT = frozenset(
    {
        ("collections", "deque"),
        ("collections", "defaultdict"),
        ("collections", "OrderedDict"),
        ("collections", "Counter"),
        ("functools", "partial"),
        ("random", "Random"),
        ("statistics", "NormalDist"),
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
# The only functions allowed: the regression trees' nodes keep one of these two static methods
# (they update a node's running statistics) as an attribute, so river's pickles name them.
_METHODS = frozenset(
    {
        ("river.tree.splitter.ebst_splitter", "EBSTNode._update_estimator_univariate"),
        ("river.tree.splitter.ebst_splitter", "EBSTNode._update_estimator_multivariate"),
    }
)


class RefusedPickle(pickle.UnpicklingError):
    """The pickle names something outside the allowed classes."""


class _Unpickler(pickle.Unpickler):
    def __init__(self, data: bytes, prefixes: tuple[str, ...]) -> None:
        super().__init__(io.BytesIO(data))
        self.prefixes = prefixes

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _METHODS:
            return super().find_class(module, name)
        if "." in name:
            raise RefusedPickle(f"refusing dotted name {module}.{name}")
        if module == "builtins" and name in _BUILTINS:
            return super().find_class(module, name)
        if (module, name) in _EXACT or module.startswith("numpy.dtypes"):
            return super().find_class(module, name)
        if module.startswith(self.prefixes):
            found = super().find_class(module, name)
            if isinstance(found, type):
                return found
        raise RefusedPickle(f"refusing to load {module}.{name}")


def restricted_loads(data: bytes, class_prefixes: Iterable[str]) -> Any:
    """Unpickle ``data``, resolving only the classes described in the module docstring, with
    ``class_prefixes`` (e.g. ``("river.",)``) naming the packages whose classes are allowed.

    >>> import pickle
    >>> from collections import deque
    >>> restricted_loads(pickle.dumps(deque([1, 2])), ("river.",))
    deque([1, 2])
    >>> import os
    >>> restricted_loads(pickle.dumps(os.getcwd), ("river.",))
    Traceback (most recent call last):
    ...
    driftd._unpickle.RefusedPickle: refusing to load posix.getcwd
    """
    return _Unpickler(data, tuple(class_prefixes)).load()
