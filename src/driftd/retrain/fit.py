"""Building, fitting, scoring and evaluating candidate models, in whatever process runs it.

The estimator comes from the config (an import path plus params, or a user callable returning an
unfitted estimator) and is wrapped in a pipeline whose preprocessing is built from the schema:
numeric columns pass through, categorical columns are one-hot encoded with unknown categories
ignored. :func:`fit_and_dump` is the one fitting code path: the training worker
(:mod:`driftd.retrain.worker`) and replay's inline fit both call it, so a model is the same
whichever ran it. It also evaluates the candidate for the gate: it loads the dumped artifact
back with the trusted types, warms it up and scores it on the holdout, decides on the same
holdout whether isotonic maps calibrate its probabilities (:mod:`driftd.models.calibration`),
and sends the loaded object back pickled, to be unpickled only if the candidate deploys.

A job with a holdout fits a pool (:mod:`driftd.retrain.pool`): one batch candidate per member,
each on the most recent rows of the training window, and the online learner, which continues
from the state the job brings, learns the rows it has not seen, is scored as it stood before the
holdout, then learns the holdout too for the next job. The best candidate is the one dumped and
evaluated; every candidate's score goes back for the audit log.
"""

from __future__ import annotations

import hashlib
import logging
import math
import pickle
import platform
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from driftd._imports import import_object
from driftd._unpickle import restricted_loads
from driftd.errors import IntegrityError
from driftd.ingest.schema import Label, Schema
from driftd.models.calibration import FOLDS, Calibration, Rows, calibrate
from driftd.models.online import RiverModel
from driftd.models.registry import load_artifact
from driftd.models.serving import LiveModel, WarmupError
from driftd.retrain.config import ModelConfig
from driftd.retrain.pool import Entry, choose

__all__ = [
    "Evaluation",
    "FitJob",
    "FitResult",
    "OnlineFit",
    "build_pipeline",
    "evaluate",
    "fit_and_dump",
    "library_versions",
    "score",
]

log = logging.getLogger(__name__)


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
class OnlineFit:
    """The online learner's part of a job: its family (an import path and its parameters),
    its ``state`` from the last job (``None``: a new learner), ``learn_from``, the first
    training row it learns (the newest it has not learned, up to ``[pool] online_max_rows``),
    and ``max_rows``, how many of the holdout's newest rows it learns after its score."""

    estimator: str
    params: dict[str, Any]
    state: bytes | None
    learn_from: int = 0
    max_rows: int = 0


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
    #: The batch candidates as (name, most recent rows); empty: one, on every row.
    members: tuple[tuple[str, int], ...] = ()
    online: OnlineFit | None = None
    tie_margin: float = 0.0
    #: Deploy the chosen candidate refitted on its window moved to the newest row (see
    #: :func:`_refit`); it is judged on its score before, on rows it had not seen.
    refit: bool = False
    #: Lend a small holdout's correctness model the training rows, out of fold (see
    #: :func:`out_of_fold`); a drift regime's retrains do without, being in a race.
    cross_fit: bool = False


@dataclass(frozen=True, slots=True)
class Evaluation:
    """The candidate as the gate needs it: whether its artifact loads (and why not), its
    single-row latency in ms (the fastest warm-up call), and its scores on the holdout, of its
    raw probabilities (its calibration is fitted on that same holdout: scored there, it would
    flatter the candidate against the champion); ``pickled``, the artifact as it loaded here,
    for a deploy to serve (:meth:`model`); and ``calibration``, what the holdout decided about
    its probabilities (``None`` for a model without any). A skops load of a 500-tree model
    costs 0.2 s of the GIL; unpickling the loaded object costs 6 ms, and only a deploy pays it
    (a rejected candidate's bytes are never unpickled)."""

    loads: bool
    load_error: str | None = None
    latency_ms: float | None = None
    scores: dict[str, float] | None = None
    pickled: bytes | None = field(default=None, repr=False)
    calibration: Calibration | None = None

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
    cancelled: bool = False  # cut short by a shutdown: nothing failed, the job runs again
    preempted: bool = False  # stopped between two steps for a job that matters more
    seconds: float = 0.0
    logs: list[str] = field(default_factory=list)
    #: Every candidate of the pool: name, rows, holdout score (None: failed), seconds, error.
    pool: list[dict[str, Any]] = field(default_factory=list)
    chosen: str | None = None
    why: str | None = None
    #: The online learner after this job (it learned the holdout too), for the next one.
    online_state: bytes | None = field(default=None, repr=False)
    refitted: bool = False


class _ListHandler(logging.Handler):
    def __init__(self, sink: list[str]) -> None:
        super().__init__(logging.INFO)
        self.sink = sink

    def emit(self, record: logging.LogRecord) -> None:
        if len(self.sink) < 200:
            self.sink.append(self.format(record))


#: Rows the online learner learns between two looks at ``stop`` (ARF: about 0.2 s).
ONLINE_CHUNK = 200
#: A holdout this small gives its correctness model too few mistakes to learn from: the job
#: lends it the training rows' out-of-fold predictions (:func:`out_of_fold`), from at most
#: :data:`CROSS_FIT_ROWS` of the newest, at the cost of ``FOLDS`` more fits of at most
#: that many rows (a boosted model at 4,000 rows: 0.2 s each, on 2 cores). A 4,000-row
#: holdout (the default window's) alone keeps the benchmark's covariate cells within 0.014.
CROSS_FIT_BELOW = 2_000
CROSS_FIT_ROWS = 8_000


class Preempted(Exception):
    """Raised between two steps of a fit whose ``stop`` said so."""


def _go_on(stop: Callable[[], bool]) -> None:
    """Raise :class:`Preempted` if ``stop`` says so: asked between every two steps of a job
    that take more than a few milliseconds, so that a drift alarm gets the training process
    within one step (one candidate's fit, one chunk of the online learner's rows)."""
    if stop():
        raise Preempted


def fit_and_dump(job: FitJob, stop: Callable[[], bool] | None = None) -> FitResult:
    """Build, fit and serialise with skops, in this process; every failure becomes a result.

    The one fitting code path: the warm worker, the one-shot child and replay's inline fit all
    call it, so a model is the same whichever ran it. ``stop`` is asked between every two steps
    (the pool's candidates, every few hundred rows of the online learner, the refit, the dump,
    and the evaluation's load, scoring and out-of-fold fits); when it says so, the fit ends
    there with a ``preempted`` result (a drift alarm wants the training process).
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
            stop = stop or _never
            pool = _fit_pool(job, stop)
            _go_on(stop)
            artifact = sio.dumps(pool.model)
            evaluation = None  # its out-of-fold fits are fits too: their threads and warnings
            if job.holdout is not None:
                _go_on(stop)
                evaluation = evaluate(job, artifact, pool.scored, pool.rows, stop=stop)
        logs.extend(f"WARNING {w.category.__name__}: {w.message}" for w in caught[:50])
        return FitResult(
            True,
            artifact,
            evaluation,
            seconds=time.monotonic() - start,
            logs=logs,
            pool=pool.record,
            chosen=pool.chosen,
            why=pool.why,
            online_state=pool.online_state,
            refitted=pool.scored is not None,
        )
    except Preempted:
        why = "preempted: a drift alarm needs the training process"
        return FitResult(False, error=why, preempted=True, logs=logs)
    except MemoryError:
        why = "training exceeded the memory limit"
        return FitResult(False, error=why, traceback=traceback.format_exc(), logs=logs)
    except Exception as exc:  # noqa: BLE001 - every failure of user code is reported, not raised
        why = f"{type(exc).__name__}: {exc}"
        return FitResult(False, error=why, traceback=traceback.format_exc(), logs=logs)
    finally:
        root.removeHandler(handler)


@dataclass(slots=True)
class _Pool:
    model: Any  # what is dumped and deployed
    record: list[dict[str, Any]]
    chosen: str | None = None
    why: str | None = None
    online_state: bytes | None = None
    scored: Any = None  # the chosen candidate as judged, when ``model`` is its refit
    rows: int | None = None  # the most recent training rows the chosen batch candidate fitted


def _never() -> bool:
    return False


def _fit_pool(job: FitJob, stop: Callable[[], bool]) -> _Pool:
    """Fit every candidate of the job, score each on the holdout and keep the best (a job
    without a holdout fits one model on every row); :class:`Preempted` when ``stop`` says so
    before a candidate."""
    y = np.asarray(job.y)
    if job.holdout is None:
        return _Pool(build_pipeline(job.model, job.schema).fit(job.X, y), [], rows=len(y))
    metric = job.metrics[0] if job.metrics else "accuracy"
    models, entries, record, failed = _fit_members(job, metric, stop)
    learner: RiverModel | None = None
    if job.online is not None:
        t = time.monotonic()
        try:
            learner, value = _learn_online(job, metric, stop)
        except Preempted:
            raise
        except Exception as exc:  # noqa: BLE001 - a failing learner leaves the batch candidates
            record.append({"name": "online", "error": f"{type(exc).__name__}: {exc}"})
        else:
            models.append(learner)
            entries.append(Entry("online", learner.learned, value))
            record.append(_entry("online", learner.learned, value, time.monotonic() - t))
    if not entries and failed is not None:
        raise failed
    pick = choose(entries, metric, tie_margin=job.tie_margin)
    chosen = models[pick.index]
    online_state = None
    if learner is not None:
        t = time.monotonic()
        if chosen is learner:  # judged as it stood: a copy, since it goes on learning
            _go_on(stop)
            chosen = _unpickled(pickle.dumps(learner, protocol=pickle.HIGHEST_PROTOCOL))
        online_state = _learn_holdout(job, learner, stop)
        record[-1]["seconds"] = round(record[-1]["seconds"] + time.monotonic() - t, 3)
    name, rows = entries[pick.index].name, entries[pick.index].rows
    _go_on(stop)
    refit = _refit(job, name, rows, chosen, learner) if job.refit else None
    trained = None if name == "online" else rows
    if refit is None:
        return _Pool(chosen, record, name, pick.why, online_state, rows=trained)
    return _Pool(refit, record, name, pick.why, online_state, scored=chosen, rows=trained)


def _fit_members(
    job: FitJob, metric: str, stop: Callable[[], bool]
) -> tuple[list[Any], list[Entry], list[dict[str, Any]], Exception | None]:
    """The batch candidates, each fitted and scored on the holdout: the models, their entries
    for the choice, their records (a member that failed leaves its error there), and the
    first failure (raised when nothing else fits)."""
    assert job.holdout is not None
    X_hold, y_hold = job.holdout
    y = np.asarray(job.y)
    models: list[Any] = []
    entries: list[Entry] = []
    record: list[dict[str, Any]] = []
    first_error: Exception | None = None
    for name, rows in job.members or (("window", len(y)),):
        _go_on(stop)
        t = time.monotonic()
        try:
            model = build_pipeline(job.model, job.schema).fit(job.X[-rows:], y[-rows:])
        except Exception as exc:  # noqa: BLE001 - one member failing leaves the others
            if first_error is None:
                first_error = exc
            record.append({"name": name, "rows": rows, "error": f"{type(exc).__name__}: {exc}"})
            continue
        value = score(metric, model, X_hold, y_hold)
        models.append(model)
        entries.append(Entry(name, rows, value))
        record.append(_entry(name, rows, value, time.monotonic() - t))
    return models, entries, record, first_error


def _refit(job: FitJob, name: str, rows: int, chosen: Any, online: RiverModel | None) -> Any:
    """The chosen candidate brought up to the newest row: a batch candidate fitted again on
    its number of rows ending at the holdout's end, the online learner as it stands after
    learning the holdout. The holdout's rows are the most recent there are, and a fit held
    away from them serves a window that much staler than a periodic refit's. ``None`` when the
    refit would answer for other classes than the candidate judged (its calibration is the
    judged one's)."""
    assert job.holdout is not None
    X_hold, y_hold = job.holdout
    if name == "online":
        if online is None:
            return None
        refit = online
    else:
        X = np.concatenate([job.X, X_hold])[-rows:]
        y = np.asarray([*job.y, *y_hold])[-rows:]
        refit = build_pipeline(job.model, job.schema).fit(X, y)
    before, after = getattr(chosen, "classes_", None), getattr(refit, "classes_", None)
    if (before is None) != (after is None) or (
        before is not None and np.asarray(before).tolist() != np.asarray(after).tolist()
    ):
        return None
    return refit


def _learn_online(job: FitJob, metric: str, stop: Callable[[], bool]) -> tuple[RiverModel, float]:
    """The job's online learner taught the training rows new to it, and its score on the
    holdout. :class:`Preempted` when ``stop`` says so between two chunks of rows."""
    assert job.online is not None
    assert job.holdout is not None
    learner = _learner(job)
    _learn_chunks(learner, job.X[job.online.learn_from :], job.y[job.online.learn_from :], stop)
    X_hold, y_hold = job.holdout
    _go_on(stop)
    return learner, score(metric, learner, X_hold, y_hold) if learner.learned else math.nan


def _learn_holdout(job: FitJob, learner: RiverModel, stop: Callable[[], bool]) -> bytes:
    """Teach the learner the holdout's newest ``max_rows`` rows too, and pickle it for the
    next job (kept in this process as well: :data:`_KEPT`)."""
    assert job.online is not None
    assert job.holdout is not None
    X_hold, y_hold = job.holdout
    tail = -job.online.max_rows if job.online.max_rows else 0
    _learn_chunks(learner, X_hold[tail:], y_hold[tail:], stop)
    _go_on(stop)
    state = pickle.dumps(learner, protocol=pickle.HIGHEST_PROTOCOL)
    _KEPT.keep(state, learner)
    return state


def _learn_chunks(
    learner: RiverModel, X: npt.NDArray[Any], y: Sequence[Label], stop: Callable[[], bool]
) -> None:
    """Teach ``learner`` the rows in order, asking ``stop`` before each chunk of them."""
    for start in range(0, len(y), ONLINE_CHUNK):
        _go_on(stop)
        learner.learn(X[start : start + ONLINE_CHUNK], y[start : start + ONLINE_CHUNK])


def _unpickled(data: bytes) -> Any:
    """An online learner pickled by a training process (restricted all the same)."""
    return restricted_loads(data, ("river.", "driftd.models.online"))


class _Kept:
    """The online learner the last job of this (training) process left, beside the digest of
    the state it was pickled to: the next job that brings that same state goes on with the
    object rather than unpickling it (ARF after 20,000 rows: 15 MB, 0.3 s). Taken, not
    shared: a job that fails or is preempted half way leaves nothing kept."""

    def __init__(self) -> None:
        self._digest = b""
        self._learner: RiverModel | None = None

    def keep(self, state: bytes, learner: RiverModel) -> None:
        self._digest, self._learner = hashlib.blake2b(state).digest(), learner

    def take(self, state: bytes) -> RiverModel | None:
        learner, self._learner = self._learner, None
        if learner is None or hashlib.blake2b(state).digest() != self._digest:
            return None
        return learner


_KEPT = _Kept()


def _learner(job: FitJob) -> RiverModel:
    """The job's online learner: its state from the last job (the object itself when this
    process pickled it, :data:`_KEPT`), or a new one of its family."""
    assert job.online is not None
    if job.online.state is not None:
        learner = _KEPT.take(job.online.state) or _unpickled(job.online.state)
        if isinstance(learner, RiverModel):
            return learner
    family = import_object(job.online.estimator)(**job.online.params)
    return RiverModel(family, numeric=job.schema.numeric, categorical=job.schema.categorical)


def _entry(name: str, rows: int, value: float, seconds: float) -> dict[str, Any]:
    return {
        "name": name,
        "rows": rows,
        "score": value if math.isfinite(value) else None,
        "seconds": round(seconds, 3),
    }


def evaluate(
    job: FitJob,
    artifact: bytes,
    judged: Any = None,
    trained: int | None = None,
    *,
    stop: Callable[[], bool] = _never,
) -> Evaluation:
    """Load ``artifact`` as the serving process would, warm it up and score it on the job's
    holdout (see :class:`FitJob`); with ``judged``, the artifact is that model's refit on the
    holdout too (:func:`_refit`), and the scores and the calibration are the judged one's.
    ``trained``: the most recent training rows the judged model fitted, which a job that
    ``cross_fit`` s lends its calibration (``None``: an online learner's, lent nothing).
    :class:`Preempted` when ``stop`` says so between two of its steps."""
    assert job.holdout is not None
    X_hold, y_hold = job.holdout
    try:
        model = load_artifact(artifact, extra_trusted=job.model.trusted_types)
        warm = job.warmup if job.warmup is not None else X_hold[:1]
        latency = LiveModel(0, model, {}, 0.0).warm_up(warm)
    except (IntegrityError, WarmupError) as exc:
        return Evaluation(False, str(exc))
    judge = model if judged is None else judged
    _go_on(stop)
    scores = {metric: score(metric, judge, X_hold, y_hold) for metric in job.metrics}
    _go_on(stop)
    calibration = (
        _calibration(LiveModel(0, judge, {}, 0.0), job, trained, stop)
        if job.schema.task == "classification"
        else None
    )
    try:
        pickled: bytes | None = pickle.dumps(model, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:  # noqa: BLE001 - a custom trusted type may not pickle: deploy loads it
        pickled = None
    return Evaluation(True, None, 1000 * latency, scores, pickled, calibration)


def _calibration(
    live: LiveModel, job: FitJob, trained: int | None, stop: Callable[[], bool] = _never
) -> Calibration | None:
    """The holdout's calibration of ``live``'s probabilities, by class index, and its
    correctness model of the schema's numeric (first) columns, lent the out-of-fold
    predictions of the ``trained`` rows when the job ``cross_fit`` s and its holdout is
    small (:data:`CROSS_FIT_BELOW`); ``None`` when the model gives no probabilities or
    predicts a class it has none for."""
    assert job.holdout is not None
    X, y = job.holdout
    proba, names = live.raw_probabilities(X), live.class_names()
    if proba is None or names is None:
        return None
    index = {name: i for i, name in enumerate(names)}
    predicted = np.array([index.get(str(p), -1) for p in live.predict(X)], dtype=np.intp)
    if (predicted < 0).any():
        return None
    labels = np.array([index.get(str(label), -1) for label in y], dtype=np.intp)
    numeric = len(job.schema.numeric)
    also = None
    if job.cross_fit and trained and numeric and len(y) < CROSS_FIT_BELOW:
        rows = min(trained, CROSS_FIT_ROWS)
        X_lent, y_lent = job.X[-rows:], job.y[-rows:]
        try:
            confidence, right = out_of_fold(
                lambda: build_pipeline(job.model, job.schema), X_lent, y_lent, stop=stop
            )
        except Preempted:
            raise
        except Exception as exc:  # noqa: BLE001 - a fold the family cannot fit lends nothing
            log.warning("no out-of-fold rows for the correctness model: %s", exc)
        else:
            also = Rows(np.asarray(X_lent[:, :numeric], dtype=np.float64), confidence, right)
    inputs = np.asarray(X[:, :numeric], dtype=np.float64)
    return calibrate(proba, labels, predicted, names, numeric=inputs, also=also)


def out_of_fold(
    build: Callable[[], Any],
    X: npt.NDArray[Any],
    y: Sequence[Label],
    folds: int = FOLDS,
    *,
    stop: Callable[[], bool] = _never,
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Each row of ``X`` predicted by a model of ``build`` fitted on the other ``folds - 1``
    contiguous folds: the probability of its predicted class, and whether that class is
    ``y``'s (1.0 or 0.0). Contiguous, not shuffled: the rows are in time order, and a fold
    of its neighbours' regime is the holdout's case too.

    A holdout of 1,000 rows gives a correctness model about 25 mistakes to learn from at an
    accuracy of 0.975, and its estimate a sampling error of 0.005 that grows wherever it
    extrapolates; the training rows' own predictions cannot stand in (a boosted model is
    right on nearly all of the rows it learned). Measured in ``benchmarks/bench_estimation.py``
    (20 seeds, 5,000 reference rows): 0.025 -> 0.010 mean absolute error for a boosted model
    whose inputs move onto its boundary, 0.020 -> 0.008 for a logistic regression."""
    from sklearn.model_selection import KFold

    labels = np.asarray(y)
    confidence = np.empty(len(labels))
    right = np.empty(len(labels))
    for fit_rows, rows in KFold(folds).split(X):
        _go_on(stop)
        model = build().fit(X[fit_rows], labels[fit_rows])
        proba = np.asarray(model.predict_proba(X[rows]), dtype=np.float64)
        top = proba.argmax(axis=1)
        confidence[rows] = proba[np.arange(len(rows)), top]
        right[rows] = np.asarray(model.classes_)[top] == labels[rows]
    return confidence, right


def library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for name in ("driftd", "scikit-learn", "numpy", "river", "skops"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "unknown"
    return out
