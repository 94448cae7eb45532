"""The training process: a spawned worker, kept warm between jobs, that fits and loads models.

The fit runs in a ``spawn``ed child with a wall-clock timeout and a memory cap, so the serving
process never trains and never shares a GIL with training. The child also loads artifacts for
the serving process when idle (a rollback to a version that is no longer loaded): unpickling
its answer costs the serving process a fraction of a skops load.

A job the parent gives up on (its timeout, or the daemon stopping) gets the child SIGTERM at once:
the fit's result is no longer wanted, and the child, which never answers a parent that stopped
listening with a traceback, simply ends.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing as mp
import os
import signal
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from driftd.errors import IntegrityError
from driftd.models.registry import load_artifact
from driftd.retrain.fit import FitJob, FitResult, fit_and_dump

__all__ = ["LoadJob", "TrainingWorker", "fit_isolated"]

log = logging.getLogger(__name__)

STOP = "stop"  # (STOP, n): the parent asks its n-th fit to end at its next step


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
    try:
        return _Loaded(load_artifact(job.artifact, extra_trusted=job.extra_trusted))
    except IntegrityError as exc:
        return _Loaded(refused=str(exc))
    except Exception as exc:  # noqa: BLE001 - reported to the caller, who loads in process
        return _Loaded(error=f"{type(exc).__name__}: {exc}")


def _reply(conn: Any, answer: Any) -> bool:
    """Send ``answer``; False when the parent has closed its end (it gave up on the job), so
    that the worker ends quietly rather than on a ``BrokenPipeError`` traceback."""
    try:
        conn.send(answer)
    except OSError:
        return False
    return True


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

    if not _reply(conn, "ready"):
        return
    fits = 0
    while True:
        try:
            job = conn.recv()
        except (EOFError, OSError):
            return
        if job is None:
            return
        if isinstance(job, tuple):  # a stop that came after its fit had ended
            continue
        if isinstance(job, LoadJob):
            answer = _load(job)
            try:
                sent = _reply(conn, answer)
            except Exception:  # noqa: BLE001 - a model that will not pickle: load it there
                why = f"the loaded model could not be sent back ({answer})"
                sent = _reply(conn, _Loaded(error=why))
        else:
            fits += 1
            sent = _reply(conn, fit_and_dump(job, stop=_stop_asked(conn, fits)))
        if not sent:
            return


def _stop_asked(conn: Any, fit: int) -> Callable[[], bool]:
    """Whether the parent asked the ``fit``-th fit to stop (:meth:`TrainingWorker.preempt`):
    read from the pipe without waiting; a stop meant for an earlier fit is dropped."""
    asked = False

    def check() -> bool:
        nonlocal asked
        while not asked and conn.poll():
            message = conn.recv()
            asked = message == (STOP, fit)
        return asked

    return check


class TrainingWorker:
    """A spawned training process kept warm between jobs.

    Spawning a Python process and importing scikit-learn costs over a second, more than most
    fits: the worker pays it once, ahead of the first job. A job that overruns its timeout (or
    is cancelled) gets the process SIGTERM at once, then SIGKILL after ``kill_grace``, and the
    next job starts a fresh one;
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
        self._send = threading.Lock()  # the pipe's sending end: a job's thread and preempt()
        self._fits = 0  # fits sent to the current process
        self._fitting = 0  # the one running now (0: none)

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
        self._fits = self._fitting = 0

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
                self._stop(kill_grace, abandon=True)
                if cancel is not None and cancel.is_set():
                    return _cancelled(0.0)
                how = "still importing" if code is None else f"exit code {code}"
                return FitResult(False, error=f"the training worker did not start ({how})")
            start = time.monotonic()  # the job's timeout covers the fit, not the worker's start
            try:
                with self._send:
                    self._conn.send(job)
                    self._fits += 1
                    self._fitting = self._fits
            except (OSError, ValueError) as exc:
                self._stop(kill_grace)
                return FitResult(False, error=f"could not hand the job to the worker ({exc})")
            try:
                result: FitResult | None = _wait(self._conn, self._proc, start + timeout, cancel)
            finally:
                with self._send:
                    self._fitting = 0
            elapsed = time.monotonic() - start
            if result is None:
                code = self._proc.exitcode
                self._stop(kill_grace, abandon=True)
                return _no_result(cancel, elapsed, timeout, code)
            self._done += 1
            if self._done >= self.max_jobs:
                self._stop(kill_grace)
            result.seconds = elapsed
            return result

    @property
    def pid(self) -> int | None:
        """The training process's id (``None`` before it starts)."""
        proc = self._proc
        return None if proc is None else int(proc.pid)

    def preempt(self) -> bool:
        """Ask the fit running now to end at its next step (between two candidates, or two
        chunks of the online learner's rows), with a ``preempted`` result; the process stays
        warm for the job that preempts it. Thread-safe, never blocks on the fit. False when
        no fit runs."""
        with self._send:
            if not self._fitting:
                return False
            try:
                self._conn.send((STOP, self._fitting))
            except (OSError, ValueError):
                return False
            return True

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
        if not self._lock.acquire(blocking=False):
            return None
        try:
            if self._proc is None or not self._proc.is_alive():
                return None
            if not self._ready and not (self._conn.poll() and self._await_ready(1.0, None)):
                return None
            start = time.monotonic()
            try:
                with self._send:
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

    def _stop(self, kill_grace: float, *, abandon: bool = False) -> None:
        """Stop the process: an idle one is asked to exit and given ``kill_grace``; one that is
        abandoned mid-job (it would not read the request before its job ends) gets SIGTERM at
        once. SIGKILL follows for either after ``kill_grace``."""
        proc, conn = self._proc, self._conn
        self._proc = self._conn = None
        if conn is not None:
            with contextlib.suppress(OSError, ValueError):
                conn.send(None)
            conn.close()
        if proc is not None:
            proc.join(kill_grace if proc.is_alive() and not abandon else 0)
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
        return _cancelled(elapsed)
    if elapsed >= timeout:
        why = f"training timed out after {timeout:g} s"
        return FitResult(False, error=why, timed_out=True, seconds=elapsed)
    how = f"signal {-code}" if code is not None and code < 0 else f"exit code {code}"
    return FitResult(False, error=f"the training process died ({how})", seconds=elapsed)


def _cancelled(elapsed: float) -> FitResult:
    why = "training cancelled: the daemon is stopping"
    return FitResult(False, error=why, cancelled=True, seconds=elapsed)


def fit_isolated(
    job: FitJob, *, timeout: float, kill_grace: float = 5.0, cancel: threading.Event | None = None
) -> FitResult:
    """Fit ``job`` in a fresh spawned process, used once (see :class:`TrainingWorker`)."""
    worker = TrainingWorker(memory_limit_bytes=job.memory_limit_bytes, max_jobs=1)
    try:
        return worker(job, timeout=timeout, cancel=cancel, kill_grace=kill_grace)
    finally:
        worker.close(kill_grace)
