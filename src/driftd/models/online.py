"""An online river learner behind the interface driftd serves and scores every model by.

:class:`RiverModel` adapts a river classifier or regressor to the input matrix (numeric columns,
then categorical ones, :mod:`driftd.models.inputs`): ``learn`` feeds it rows one at a time in
the order given, ``predict_proba`` and ``predict`` answer for a matrix, and ``classes_`` lists
the classes it has seen. So the training process keeps one learning from every labelled row,
and a snapshot of it is a version like any other: dumped with skops, verified, loaded, warmed
up, gated and swapped.

River's models hold compiled detectors that skops cannot take apart, so the adapter's state is
the river model pickled, and it is unpickled by :func:`driftd._unpickle.restricted_loads`,
which resolves only river's classes: an artifact still cannot run code. The adapter itself is
one of the registry's trusted types.

>>> import numpy as np
>>> from river import naive_bayes
>>> m = RiverModel(naive_bayes.GaussianNB(), numeric=("x",), categorical=())
>>> X = np.array([[0.0], [1.0], [0.2], [0.8]] * 100)
>>> m.learn(X, [0, 1, 0, 1] * 100).predict(np.array([[0.1], [0.9]]))
array([0, 1])
>>> m.classes_
array([0, 1])
>>> m.learned
400
"""

from __future__ import annotations

import pickle
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from driftd._unpickle import restricted_loads
from driftd.ingest.schema import Label

__all__ = ["RIVER_MODEL", "RiverModel"]

RIVER_MODEL = "driftd.models.online.RiverModel"
_STATE_VERSION = 1


class RiverModel:
    """A river model learning from and answering for the model's input matrix.

    Parameters
    ----------
    model
        An unfitted (or already learning) river classifier or regressor.
    numeric, categorical
        The feature names of the matrix's columns, in order (see :meth:`_dicts` for how a
        categorical value reaches river).
    """

    def __init__(self, model: Any, *, numeric: Sequence[str], categorical: Sequence[str]) -> None:
        self.model = model
        self.numeric = tuple(numeric)
        self.categorical = tuple(categorical)
        self.learned = 0
        self._classes: list[Label] = []

    @property
    def is_classifier(self) -> bool:
        return hasattr(self.model, "predict_proba_one")

    @property
    def classes_(self) -> npt.NDArray[Any]:
        """The classes seen so far, sorted (absent on a regressor, as on scikit-learn's)."""
        if not self.is_classifier:
            raise AttributeError("a regressor has no classes_")
        return np.asarray(self._classes)

    def learn(self, X: npt.NDArray[Any], y: Sequence[Label]) -> RiverModel:
        """Learn the rows of ``X`` with their labels ``y``, one at a time, in order."""
        for row, label in zip(self._dicts(X), y, strict=True):
            self.model.learn_one(row, label)
        if self.is_classifier:
            seen = set(self._classes).union(y)
            self._classes = sorted(seen, key=lambda c: (str(type(c)), c))
        self.learned += len(y)
        return self

    def predict_proba(self, X: npt.NDArray[Any]) -> npt.NDArray[np.float64]:
        """Each row's probability of each of :attr:`classes_` (a class river gives none: 0;
        a row it gives nothing for: uniform)."""
        classes = self._classes
        out = np.zeros((len(X), len(classes)), dtype=np.float64)
        for i, row in enumerate(self._dicts(X)):
            proba = self.model.predict_proba_one(row)
            total = 0.0
            for j, c in enumerate(classes):
                p = float(proba.get(c, 0.0))
                out[i, j] = p
                total += p
            if total > 0:
                out[i] /= total
            elif classes:
                out[i] = 1.0 / len(classes)
        return out

    def predict(self, X: npt.NDArray[Any]) -> npt.NDArray[Any]:
        """Each row's most probable class (the first of :attr:`classes_` on a tie), or its
        prediction for a regressor."""
        if not self.is_classifier:
            return np.array([float(self.model.predict_one(r)) for r in self._dicts(X)])
        if not self._classes:
            raise ValueError("the online model has not learned any class yet")
        top: npt.NDArray[Any] = self.classes_[self.predict_proba(X).argmax(axis=1)]
        return top

    def _dicts(self, X: npt.NDArray[Any]) -> list[dict[str, Any]]:
        """Rows as river wants them: numeric features by name; a categorical value as a string
        for a classifier (river's trees split on it as a nominal value: as indicators, ARF
        scored 0.67 instead of 0.998 on STAGGER), as the indicator ``name=value`` for a
        regressor (whose linear leaf models take numbers only)."""
        names, n = self.numeric, len(self.numeric)
        rows = np.asarray(X, dtype=object).tolist()
        if not self.categorical:
            return [dict(zip(names, map(float, row), strict=True)) for row in rows]
        out = []
        nominal = self.is_classifier
        for row in rows:
            d: dict[str, Any] = dict(zip(names, map(float, row[:n]), strict=True))
            for name, value in zip(self.categorical, row[n:], strict=True):
                if nominal:
                    d[name] = str(value)
                else:
                    d[f"{name}={value}"] = 1.0
            out.append(d)
        return out

    def __getstate__(self) -> dict[str, Any]:
        return {
            "version": _STATE_VERSION,
            "numeric": list(self.numeric),
            "categorical": list(self.categorical),
            "classes": list(self._classes),
            "learned": self.learned,
            "river": pickle.dumps(self.model, protocol=5),
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        if state.get("version") != _STATE_VERSION:
            raise ValueError(f"online model state version {state.get('version')!r} is unknown")
        self.numeric = tuple(state["numeric"])
        self.categorical = tuple(state["categorical"])
        self._classes = list(state["classes"])
        self.learned = int(state["learned"])
        self.model = restricted_loads(state["river"], ("river.",))

    def __repr__(self) -> str:
        return f"RiverModel({type(self.model).__name__}, learned={self.learned})"
