"""Building, fitting and scoring candidate models, and running the fit in a separate process.

The estimator comes from the config (an import path plus params, or a user callable returning an
unfitted estimator) and is wrapped in a pipeline whose preprocessing is built from the schema:
numeric columns pass through, categorical columns are one-hot encoded with unknown categories
ignored. The fit runs in a ``spawn``ed child with a wall-clock timeout and a memory cap, so the
serving process never trains and never shares a GIL with training.
"""

from __future__ import annotations

import logging
import math
import multiprocessing as mp
import platform
import signal
import threading
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from driftd.config import ModelConfig, import_object
from driftd.schema import Label, Schema
from driftd.store import Snapshot

__all__ = [
    "FitJob",
    "FitResult",
    "build_pipeline",
    "fit_isolated",
    "matrix",
    "score",
]

log = logging.getLogger(__name__)

HIGHER_IS_BETTER = {
    "accuracy": True,
    "balanced_accuracy": True,
    "f1": True,
    "roc_auc": True,
    "log_loss": False,
    "mae": False,
    "rmse": False,
    "r2": True,
}


def matrix(
    schema: Schema, numeric: npt.NDArray[np.float64], categorical: Sequence[Sequence[Any]]
) -> npt.NDArray[Any]:
    """The model's input: numeric columns first, then categorical ones, in schema order."""
    if not schema.categorical:
        return numeric
    X = np.empty((numeric.shape[0], numeric.shape[1] + len(schema.categorical)), dtype=object)
    X[:, : numeric.shape[1]] = numeric
    X[:, numeric.shape[1] :] = np.asarray(categorical, dtype=object).reshape(numeric.shape[0], -1)
    return X


def rows_to_matrix(schema: Schema, rows: Sequence[dict[str, float | str]]) -> npt.NDArray[Any]:
    """Feature dicts (as validated by the schema) to the model's input matrix."""
    num = np.array([[r[c] for c in schema.numeric] for r in rows], dtype=np.float64).reshape(
        len(rows), len(schema.numeric)
    )
    cat = [[r[c] for c in schema.categorical] for r in rows] if schema.categorical else []
    return matrix(schema, num, cat)


def build_pipeline(config: ModelConfig, schema: Schema) -> Any:
    """An unfitted scikit-learn pipeline for the configured estimator."""
    from sklearn.base import clone, is_classifier, is_regressor
    from sklearn.compose import ColumnTransformer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder

    if config.factory is not None:
        estimator = import_object(config.factory)()
    else:
        estimator = import_object(config.estimator)(**config.params)
    estimator = clone(estimator)
    if schema.task == "classification" and not is_classifier(estimator):
        raise ValueError(
            f"model: {type(estimator).__name__} is not a classifier,"
            " expected one for task 'classification'"
        )
    if schema.task == "regression" and not is_regressor(estimator):
        raise ValueError(
            f"model: {type(estimator).__name__} is not a regressor,"
            " expected one for task 'regression'"
        )
    if not schema.categorical:
        return Pipeline([("model", estimator)])
    n_num = len(schema.numeric)
    pre = ColumnTransformer(
        [
            ("numeric", "passthrough", list(range(n_num))),
            (
                "categorical",
                OneHotEncoder(handle_unknown="ignore", sparse_output=False),
                list(range(n_num, n_num + len(schema.categorical))),
            ),
        ],
        sparse_threshold=0.0,
    )
    return Pipeline([("pre", pre), ("model", estimator)])


def score(metric: str, model: Any, X: npt.NDArray[Any], y: Sequence[Label]) -> float:
    """The configured metric of ``model`` on ``(X, y)``; NaN when it cannot be computed."""
    from sklearn import metrics as m

    y_true = np.asarray(y)
    try:
        if metric in ("roc_auc", "log_loss"):
            proba = model.predict_proba(X)
            classes = list(model.classes_)
            if metric == "log_loss":
                return float(m.log_loss(y_true, proba, labels=classes))
            if len(classes) == 2:
                return float(m.roc_auc_score(y_true, proba[:, 1]))
            return float(m.roc_auc_score(y_true, proba, multi_class="ovr", labels=classes))
        pred = model.predict(X)
        if metric == "accuracy":
            return float(m.accuracy_score(y_true, pred))
        if metric == "balanced_accuracy":
            return float(m.balanced_accuracy_score(y_true, pred))
        if metric == "f1":
            average = "binary" if len(set(y_true.tolist()) | set(pred.tolist())) <= 2 else "macro"
            if average == "binary":
                pos = max(set(y_true.tolist()) | set(pred.tolist()), key=str)
                return float(m.f1_score(y_true, pred, pos_label=pos, zero_division=0.0))
            return float(m.f1_score(y_true, pred, average="macro", zero_division=0.0))
        if metric == "mae":
            return float(m.mean_absolute_error(y_true, pred))
        if metric == "rmse":
            return float(math.sqrt(m.mean_squared_error(y_true, pred)))
        if metric == "r2":
            return float(m.r2_score(y_true, pred))
    except ValueError as exc:  # e.g. a single class in the holdout for ROC AUC
        log.warning("metric %s could not be computed: %s", metric, exc)
        return math.nan
    raise ValueError(f"unknown metric {metric!r}")


@dataclass(frozen=True, slots=True)
class FitJob:
    """Everything the child needs: plain data, picklable under ``spawn``."""

    model: ModelConfig
    schema: Schema
    X: npt.NDArray[Any]
    y: list[Label]
    memory_limit_bytes: int | None = None


@dataclass(slots=True)
class FitResult:
    ok: bool
    artifact: bytes = b""
    error: str | None = None
    traceback: str | None = None
    timed_out: bool = False
    seconds: float = 0.0
    logs: list[str] = field(default_factory=list)


class _ListHandler(logging.Handler):
    def __init__(self, sink: list[str]) -> None:
        super().__init__(logging.INFO)
        self.sink = sink

    def emit(self, record: logging.LogRecord) -> None:
        if len(self.sink) < 200:
            self.sink.append(self.format(record))


def _child(job: FitJob, conn: Any) -> None:
    """Runs in the spawned process: cap memory, fit, serialise with skops, send the bytes back."""
    import warnings

    logs: list[str] = []
    handler = _ListHandler(logs)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logging.getLogger().addHandler(handler)
    logging.getLogger().setLevel(logging.INFO)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when training stops
    start = time.monotonic()
    try:
        if job.memory_limit_bytes:
            import resource

            resource.setrlimit(resource.RLIMIT_AS, (job.memory_limit_bytes, job.memory_limit_bytes))
        import skops.io as sio

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            pipe = build_pipeline(job.model, job.schema)
            pipe.fit(job.X, np.asarray(job.y))
        logs.extend(f"WARNING {w.category.__name__}: {w.message}" for w in caught[:50])
        artifact = sio.dumps(pipe)
        conn.send(FitResult(True, artifact, seconds=time.monotonic() - start, logs=logs))
    except MemoryError:
        conn.send(
            FitResult(
                False,
                error="training exceeded the memory limit",
                traceback=traceback.format_exc(),
                logs=logs,
            )
        )
    except BaseException as exc:  # noqa: BLE001 - the child reports every failure to the parent
        conn.send(
            FitResult(
                False,
                error=f"{type(exc).__name__}: {exc}",
                traceback=traceback.format_exc(),
                logs=logs,
            )
        )
    finally:
        conn.close()


def fit_isolated(
    job: FitJob, *, timeout: float, kill_grace: float = 5.0, cancel: threading.Event | None = None
) -> FitResult:
    """Fit ``job`` in a spawned process; SIGTERM at ``timeout`` seconds (or when ``cancel`` is
    set), SIGKILL after the grace.

    Blocking: call it from a worker thread, never from the event loop.
    """
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(job, child), name="driftd-train", daemon=True)
    start = time.monotonic()
    proc.start()
    child.close()
    result: FitResult | None = None
    deadline = start + timeout
    try:
        while (left := deadline - time.monotonic()) > 0 and not (cancel and cancel.is_set()):
            if parent.poll(min(left, 0.2)):
                try:
                    result = parent.recv()
                except EOFError:
                    result = None
                break
            if not proc.is_alive() and not parent.poll():
                break
    finally:
        parent.close()
        if result is None and proc.is_alive():
            proc.terminate()
            proc.join(kill_grace)
            if proc.is_alive():
                proc.kill()
        proc.join(kill_grace)
    elapsed = time.monotonic() - start
    if result is not None:
        result.seconds = elapsed
        return result
    if cancel is not None and cancel.is_set():
        return FitResult(False, error="training cancelled: the daemon is stopping", seconds=elapsed)
    if elapsed >= timeout:
        return FitResult(
            False, error=f"training timed out after {timeout:g} s", timed_out=True, seconds=elapsed
        )
    code = proc.exitcode
    why = f"signal {-code}" if code is not None and code < 0 else f"exit code {code}"
    return FitResult(False, error=f"the training process died ({why})", seconds=elapsed)


def library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for name in ("driftd", "scikit-learn", "numpy", "river", "skops"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "unknown"
    return out


def snapshot_matrix(schema: Schema, snap: Snapshot) -> npt.NDArray[Any]:
    return matrix(schema, snap.numeric, snap.categorical)
