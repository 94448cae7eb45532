"""Building, fitting and scoring candidate models, and running the fit in a separate process.

The estimator comes from the config (an import path plus params, or a user callable returning an
unfitted estimator) and is wrapped in a pipeline whose preprocessing is built from the schema:
numeric columns pass through, categorical columns are one-hot encoded with unknown categories
ignored. The fit runs in a ``spawn``ed child with a wall-clock timeout and a memory cap, so the
serving process never trains and never shares a GIL with training. The child also loads
artifacts for the serving process: it loads each candidate back to evaluate it (the loaded
object returns pickled with the result, unpickled only if the candidate deploys) and, when idle,
loads a registry version for a rollback; unpickling costs the serving process a fraction of a
skops load.
"""

from __future__ import annotations

import contextlib
import logging
import math
import multiprocessing as mp
import os
import pickle
import platform
import signal
import threading
import time
import traceback
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from driftd.config import ModelConfig, import_object
from driftd.schema import Label, Schema

__all__ = [
    "Evaluation",
    "FitJob",
    "FitResult",
    "LoadJob",
    "TrainingWorker",
    "build_pipeline",
    "evaluate",
    "fit_and_dump",
    "fit_inline",
    "fit_isolated",
    "matrix",
    "score",
]

log = logging.getLogger(__name__)


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
    """Everything the child needs: plain data, picklable under ``spawn``.

    With a ``holdout``, the child also evaluates the candidate for the gate, so that the
    serving process never loads or scores a model it may not deploy: it loads the dumped
    artifact back (with the trusted types), measures its warm-up latency on ``warmup`` rows and
    scores it on the holdout for each of ``metrics``. That work counts against the timeout.
    """

    model: ModelConfig
    schema: Schema
    X: npt.NDArray[Any]
    y: list[Label]
    memory_limit_bytes: int | None = None
    threads: int | None = None  # OpenMP/BLAS threads of the fit; None: the libraries' default
    holdout: tuple[npt.NDArray[Any], list[Label]] | None = None
    warmup: npt.NDArray[Any] | None = None
    metrics: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Evaluation:
    """The candidate as the gate needs it: whether its artifact loads (and why not), its median
    single-row latency in ms, and its scores on the holdout; and ``pickled``, the artifact as
    it loaded here, for a deploy to serve (:meth:`model`). A skops load of a 500-tree model
    costs 0.2 s of the GIL; unpickling the loaded object costs 6 ms, and only a deploy pays
    it (a rejected candidate's bytes are never unpickled)."""

    loads: bool
    load_error: str | None = None
    latency_ms: float | None = None
    scores: dict[str, float] | None = None
    pickled: bytes | None = field(default=None, repr=False)

    def model(self) -> Any:
        """The loaded candidate, or ``None`` if it could not be pickled: the deploy then loads
        the artifact. Only ever bytes this daemon's own training process pickled."""
        return None if self.pickled is None else pickle.loads(self.pickled)  # noqa: S301


@dataclass(slots=True)
class FitResult:
    ok: bool
    artifact: bytes = b""
    evaluation: Evaluation | None = None
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


def fit_and_dump(job: FitJob) -> FitResult:
    """Build, fit and serialise with skops, in this process; every failure becomes a result.

    The one fitting code path: the warm worker, the one-shot child and replay's inline fit all
    call it, so a model is the same whichever ran it.
    """
    import warnings

    logs: list[str] = []
    handler = _ListHandler(logs)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    start = time.monotonic()
    try:
        import skops.io as sio
        from threadpoolctl import threadpool_limits

        with warnings.catch_warnings(record=True) as caught, threadpool_limits(job.threads):
            warnings.simplefilter("always")
            pipe = build_pipeline(job.model, job.schema)
            pipe.fit(job.X, np.asarray(job.y))
        logs.extend(f"WARNING {w.category.__name__}: {w.message}" for w in caught[:50])
        artifact = sio.dumps(pipe)
        evaluation = evaluate(job, artifact) if job.holdout is not None else None
        return FitResult(True, artifact, evaluation, seconds=time.monotonic() - start, logs=logs)
    except MemoryError:
        why = "training exceeded the memory limit"
        return FitResult(False, error=why, traceback=traceback.format_exc(), logs=logs)
    except Exception as exc:  # noqa: BLE001 - every failure of user code is reported, not raised
        why = f"{type(exc).__name__}: {exc}"
        return FitResult(False, error=why, traceback=traceback.format_exc(), logs=logs)
    finally:
        root.removeHandler(handler)


def evaluate(job: FitJob, artifact: bytes) -> Evaluation:
    """Load ``artifact`` as the serving process would, warm it up and score it on the job's
    holdout (see :class:`FitJob`)."""
    from driftd.errors import IntegrityError
    from driftd.registry import load_artifact
    from driftd.serving import LiveModel, WarmupError

    assert job.holdout is not None
    X_hold, y_hold = job.holdout
    try:
        model = load_artifact(artifact, extra_trusted=job.model.trusted_types)
        warm = job.warmup if job.warmup is not None else X_hold[:1]
        latency = LiveModel(0, model, {}, 0.0).warm_up(warm)
    except (IntegrityError, WarmupError) as exc:
        return Evaluation(False, str(exc))
    scores = {metric: score(metric, model, X_hold, y_hold) for metric in job.metrics}
    try:
        pickled: bytes | None = pickle.dumps(model, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:  # noqa: BLE001 - a custom trusted type may not pickle: deploy loads it
        pickled = None
    return Evaluation(True, None, 1000 * latency, scores, pickled)


@dataclass(frozen=True, slots=True)
class LoadJob:
    """Load a skops artifact in the training process and send the object back (see
    :meth:`TrainingWorker.load`)."""

    artifact: bytes
    extra_trusted: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class _Loaded:
    model: Any = None
    refused: str | None = None  # the artifact is not one to load (IntegrityError)
    error: str | None = None  # the load failed otherwise: the caller loads it itself


def _load(job: LoadJob) -> _Loaded:
    from driftd.errors import IntegrityError
    from driftd.registry import load_artifact

    try:
        return _Loaded(load_artifact(job.artifact, extra_trusted=job.extra_trusted))
    except IntegrityError as exc:
        return _Loaded(refused=str(exc))
    except Exception as exc:  # noqa: BLE001 - reported to the caller, who loads in process
        return _Loaded(error=f"{type(exc).__name__}: {exc}")


def fit_inline(job: FitJob, *, timeout: float, cancel: threading.Event | None = None) -> FitResult:
    """Fit in this process (replay): no memory cap and no timeout, same code and result."""
    del timeout, cancel  # nothing to interrupt: the caller waits for the fit anyway
    return fit_and_dump(job)


def _serve_jobs(conn: Any, memory_limit_bytes: int | None, nice: int = 0) -> None:
    """The worker process: cap memory, lower its CPU priority by ``nice``, import the libraries
    once, then fit (or load) jobs until told to stop (``None``) or the parent goes away."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when training stops
    logging.getLogger().setLevel(logging.INFO)
    if nice:
        try:
            os.nice(nice)
        except OSError as exc:  # a seccomp filter or a container that refuses it: train anyway
            logging.getLogger(__name__).warning("could not lower the training priority: %s", exc)
    if memory_limit_bytes:
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (memory_limit_bytes, memory_limit_bytes))
    import sklearn.ensemble  # noqa: F401 - paid once here, not in every retrain
    import skops.io  # noqa: F401

    conn.send("ready")
    while True:
        try:
            job = conn.recv()
        except (EOFError, OSError):
            return
        if job is None:
            return
        if isinstance(job, LoadJob):
            answer = _load(job)
            try:
                conn.send(answer)
            except Exception:  # noqa: BLE001 - a model that will not pickle: load it there
                conn.send(_Loaded(error=f"the loaded model could not be sent back ({answer})"))
            continue
        conn.send(fit_and_dump(job))


class TrainingWorker:
    """A spawned training process kept warm between jobs.

    Spawning a Python process and importing scikit-learn costs over a second, more than most
    fits: the worker pays it once, ahead of the first job. A job that overruns its timeout (or
    is cancelled) gets the process SIGTERM then SIGKILL, and the next job starts a fresh one;
    so does a job after ``max_jobs``, which bounds what one process can accumulate.

    Blocking: call it from a worker thread, never from the event loop. Thread-safe.
    """

    def __init__(
        self, *, memory_limit_bytes: int | None = None, nice: int = 0, max_jobs: int = 50
    ) -> None:
        self.memory_limit_bytes = memory_limit_bytes
        self.nice = nice
        self.max_jobs = max_jobs
        self._lock = threading.Lock()
        self._proc: Any = None
        self._conn: Any = None
        self._done = 0
        self._ready = False

    def start(self) -> None:
        """Spawn the process now (it warms up in the background)."""
        with self._lock:
            self._ensure()

    def _ensure(self) -> None:
        if self._proc is not None and self._proc.is_alive():
            return
        self._stop(kill_grace=0.0)
        ctx = mp.get_context("spawn")
        parent, child = ctx.Pipe(duplex=True)
        self._proc = ctx.Process(
            target=_serve_jobs,
            args=(child, self.memory_limit_bytes, self.nice),
            name="driftd-train",
            daemon=True,
        )
        self._proc.start()
        child.close()
        self._conn = parent
        self._done = 0
        self._ready = False

    def __call__(
        self,
        job: FitJob,
        *,
        timeout: float,
        cancel: threading.Event | None = None,
        kill_grace: float = 5.0,
    ) -> FitResult:
        """Fit ``job`` in the worker; the same contract as :func:`fit_isolated`."""
        with self._lock:
            self._ensure()
            if not self._ready and not self._await_ready(max(60.0, timeout), cancel):
                code = self._proc.exitcode
                self._stop(kill_grace)
                how = "still importing" if code is None else f"exit code {code}"
                return FitResult(False, error=f"the training worker did not start ({how})")
            start = time.monotonic()  # the job's timeout covers the fit, not the worker's start
            try:
                self._conn.send(job)
            except (OSError, ValueError) as exc:
                self._stop(kill_grace)
                return FitResult(False, error=f"could not hand the job to the worker ({exc})")
            result: FitResult | None = _wait(self._conn, self._proc, start + timeout, cancel)
            elapsed = time.monotonic() - start
            if result is None:
                code = self._proc.exitcode
                self._stop(kill_grace)
                return _no_result(cancel, elapsed, timeout, code)
            self._done += 1
            if self._done >= self.max_jobs:
                self._stop(kill_grace)
            result.seconds = elapsed
            return result

    def load(
        self,
        artifact: bytes,
        *,
        extra_trusted: Iterable[str] = (),
        timeout: float = 30.0,
        cancel: threading.Event | None = None,
    ) -> Any:
        """Load a skops artifact here and return the object, or ``None`` if the worker cannot
        now (fitting, still starting, or the load failed there): the caller then loads it
        itself. Raises :class:`IntegrityError` for an artifact the worker refused.

        A skops load is Python-heavy (0.2 s for a 500-tree model); unpickling its result as it
        comes over the pipe takes 6 ms, so a rollback to a version that is no longer loaded
        holds the serving process's GIL for that instead. A worker that overruns ``timeout``
        or dies is replaced (in the background) and the caller loads the artifact itself."""
        from driftd.errors import IntegrityError

        if not self._lock.acquire(blocking=False):
            return None
        try:
            if self._proc is None or not self._proc.is_alive():
                return None
            if not self._ready and not (self._conn.poll() and self._await_ready(1.0, None)):
                return None
            start = time.monotonic()
            try:
                self._conn.send(LoadJob(artifact, tuple(extra_trusted)))
                answer = _wait(self._conn, self._proc, start + timeout, cancel)
            except (OSError, ValueError):
                answer = None
            if answer is None:
                log.warning("the training worker did not load the artifact; loading it here")
                self._stop(kill_grace=1.0)
                if not (cancel and cancel.is_set()):
                    self._ensure()
                return None
            self._done += 1
            if answer.refused is not None:
                raise IntegrityError(answer.refused)
            if answer.error is not None:
                log.warning("the training worker could not load the artifact: %s", answer.error)
            return answer.model
        finally:
            self._lock.release()

    def _await_ready(self, limit: float, cancel: threading.Event | None) -> bool:
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline and not (cancel and cancel.is_set()):
            if self._conn.poll(0.2):
                try:
                    self._ready = self._conn.recv() == "ready"
                except (EOFError, OSError):
                    return False
                return self._ready
            if not self._proc.is_alive():
                return False
        return False

    def close(self, kill_grace: float = 5.0) -> None:
        with self._lock:
            self._stop(kill_grace)

    def _stop(self, kill_grace: float) -> None:
        proc, conn = self._proc, self._conn
        self._proc = self._conn = None
        if conn is not None:
            with contextlib.suppress(OSError, ValueError):
                conn.send(None)
            conn.close()
        if proc is not None:
            proc.join(kill_grace if proc.is_alive() else 0)
            if proc.is_alive():
                proc.terminate()
                proc.join(kill_grace)
            if proc.is_alive():
                proc.kill()
                proc.join()


def _wait(conn: Any, proc: Any, deadline: float, cancel: threading.Event | None) -> Any:
    """The worker's answer, or None on timeout, cancellation or the worker's death."""
    while (left := deadline - time.monotonic()) > 0 and not (cancel and cancel.is_set()):
        if conn.poll(min(left, 0.2)):
            try:
                result = conn.recv()
            except (EOFError, OSError):
                return None
            return result
        if not proc.is_alive() and not conn.poll():
            return None
    return None


def _no_result(
    cancel: threading.Event | None, elapsed: float, timeout: float, code: int | None
) -> FitResult:
    if cancel is not None and cancel.is_set():
        return FitResult(False, error="training cancelled: the daemon is stopping", seconds=elapsed)
    if elapsed >= timeout:
        why = f"training timed out after {timeout:g} s"
        return FitResult(False, error=why, timed_out=True, seconds=elapsed)
    how = f"signal {-code}" if code is not None and code < 0 else f"exit code {code}"
    return FitResult(False, error=f"the training process died ({how})", seconds=elapsed)


def fit_isolated(
    job: FitJob, *, timeout: float, kill_grace: float = 5.0, cancel: threading.Event | None = None
) -> FitResult:
    """Fit ``job`` in a fresh spawned process, used once (see :class:`TrainingWorker`)."""
    worker = TrainingWorker(memory_limit_bytes=job.memory_limit_bytes, max_jobs=1)
    try:
        return worker(job, timeout=timeout, cancel=cancel, kill_grace=kill_grace)
    finally:
        worker.close(kill_grace)


def library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for name in ("driftd", "scikit-learn", "numpy", "river", "skops"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "unknown"
    return out
