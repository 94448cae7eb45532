"""The daemon's parts, built and wired in one place: store, engine, lifecycle, retrainer, bootstrap.

The daemon and replay both assemble their parts here, so that a replay runs the very components
a daemon runs, only with another clock, another fit and another state directory. Each part
gets its own settings section and its collaborators; nothing here reaches into a part after.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from driftd._fs import TMP_PREFIX, FileBlob
from driftd.alerts import Alerter
from driftd.config import Config, StoreConfig
from driftd.ingest.schema import Schema
from driftd.metrics import Metrics
from driftd.models.lifecycle import Lifecycle, Loader
from driftd.models.registry import ModelRegistry, Registry
from driftd.models.registry_pg import PostgresRegistry
from driftd.models.retention import Retention
from driftd.models.serving import Serving
from driftd.retrain.bootstrap import Bootstrap
from driftd.retrain.retrainer import Fit, Retrainer, on_a_thread
from driftd.service.cluster import Role
from driftd.service.engine import CHECKPOINT, Engine
from driftd.store import PostgresStore, RecordStore, SQLiteStore
from driftd.store.postgres import Leadership

__all__ = ["STORE_FILE", "Parts", "assemble", "open_store"]

STORE_FILE = "driftd.sqlite3"
#: The online learner between retrains (only the training process unpickles it, restricted).
ONLINE_LEARNER = "online-learner.pkl"
WAL_CHECKPOINT_SECONDS = 0.5


@dataclass(frozen=True, slots=True)
class Parts:
    """One daemon's working parts, open. :meth:`close` when done."""

    store: RecordStore
    engine: Engine
    models: Lifecycle
    retrainer: Retrainer
    bootstrap: Bootstrap
    started: float
    clock: Callable[[], float]
    role: Role
    leadership: Leadership | None = None  # the lock, on a shared store
    #: Traffic sources beside HTTP (a broker consumer): name -> its state, read on each status.
    sources: dict[str, Callable[[], dict[str, Any]]] = field(default_factory=dict)

    def report_source(self, name: str, state: Callable[[], dict[str, Any]]) -> None:
        """Show a source's state (``connected`` and why not) in status and readiness."""
        self.sources[name] = state

    def source_states(self) -> dict[str, dict[str, Any]]:
        return {name: state() for name, state in self.sources.items()}

    def status(self) -> dict[str, Any]:
        """What ``GET /v1/status`` answers."""
        return {
            "ready": self.models.current is not None,
            "sources": self.source_states(),
            "uptime_seconds": round(self.clock() - self.started, 3),
            "cluster": self.role.status(),
            "model": self.models.status(),
            "bootstrap": self.bootstrap.status(),
            **self.engine.status(),
            "retrain": self.retrainer.status(),
            "recent_events": [e.as_dict() for e in self.store.events(limit=10)],
        }

    def no_model_reason(self) -> str:
        return self.bootstrap.no_model_reason()

    def take_over(self) -> None:
        """A standby became its model's leader: the monitor from the shared checkpoint, the
        champion and the audit log, the retrain policy (on the cluster's thread)."""
        self.engine.take_over()
        self.models.take_over()
        self.retrainer.take_over()

    def close(self) -> None:
        """Checkpoint the monitor (a leader's), drain the engine's worker, close the store."""
        try:
            self.engine.close(checkpoint=self.role.leading)
        finally:
            if self.leadership is not None:
                self.leadership.release()
            self.store.close()


def open_store(settings: StoreConfig, schema: Schema, state_dir: Path) -> RecordStore:
    """The store the settings name, open: SQLite in ``state_dir`` unless a PostgreSQL URL."""
    if settings.url is not None:
        return PostgresStore(settings.url, schema, namespace=settings.namespace).open()
    # The WAL is copied back by a thread of its own, not by whichever write crosses SQLite's
    # 1,000-page mark (10+ ms every few batches; docs/benchmarks.md).
    return SQLiteStore(
        state_dir / STORE_FILE, schema, checkpoint_every=WAL_CHECKPOINT_SECONDS
    ).open()


def assemble(
    config: Config,
    metrics: Metrics,
    *,
    state_dir: Path,
    fit: Fit,
    loader: Loader | None = None,
    alerter: Alerter | None = None,
    cancel: threading.Event | None = None,
    clock: Callable[[], float] = time.time,
    defer: Callable[[Callable[[], None]], None] = on_a_thread,
    preempt: Callable[[], bool] | None = None,
) -> Parts:
    """Open the state directory and build the parts on it: the monitor restored from its
    checkpoint, the champion loaded, the retrain policy restored. ``preempt`` stops the fit
    that runs now at its next step (the training process's; none inline)."""
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(state_dir, 0o700)
    for leftover in state_dir.glob(f"{TMP_PREFIX}*"):  # a checkpoint write cut short by a crash
        leftover.unlink(missing_ok=True)
    schema = config.schema_obj()
    store = open_store(config.store, schema, state_dir)
    # On a shared store, the first daemon to take the lock leads; the others stand by.
    leadership = store.leadership() if isinstance(store, PostgresStore) else None
    role = Role(
        leading=leadership is None or leadership.try_acquire(), shared=leadership is not None
    )
    if role.leading:
        role.lead(clock())
    standby = not role.leading
    checkpoint, online = (
        (store.blob(CHECKPOINT), store.blob(ONLINE_LEARNER))
        if isinstance(store, PostgresStore)
        else (FileBlob(state_dir / CHECKPOINT), FileBlob(state_dir / ONLINE_LEARNER))
    )
    serving = Serving()
    engine = Engine(
        schema,
        store,
        serving,
        metrics,
        monitor=config.monitor,
        retention=config.store,
        checkpoint=checkpoint,
        shared=role.shared,
        clock=clock,
    )
    registry: ModelRegistry = (
        PostgresRegistry(store, extra_trusted=config.model.trusted_types, clock=clock)
        if isinstance(store, PostgresStore)
        else Registry(state_dir / "models", extra_trusted=config.model.trusted_types)
    )
    models = Lifecycle(
        registry,
        serving,
        store,
        metrics,
        schema,
        loader=loader,
        keep_previous=config.model.keep_previous,
        retention=Retention(config.model.keep_versions, frozenset(config.model.pinned)),
        in_order=engine.run,
        on_swap=engine.rebaseline,
        cancel=cancel,
        clock=clock,
        leading=lambda: role.leading,
    )
    engine.open(monitor=not standby)
    models.open(standby=standby)
    settings = config.retrain_settings()
    retrainer = Retrainer(
        store,
        models,
        metrics,
        settings,
        schema=schema,
        rejected_dir=state_dir / "rejected",
        fit=fit,
        alerter=alerter,
        clock=clock,
        defer=defer,
        standby=standby,
        online=online,
        preempt=preempt,
    )
    engine.subscribe(on_alarm=retrainer.on_alarm, on_joined=retrainer.on_joined)
    data = config.bootstrap.data
    bootstrap = Bootstrap(
        config.bootstrap,
        retrainer,
        store,
        serving,
        metrics,
        schema=schema,
        history=config.resolve(data) if data not in (None, "synth") else None,
        synthetic=(config.demo.stream, config.demo.concepts[0]) if data == "synth" else None,
        retry=config.bootstrap.retry_seconds,
        backoff_max=settings.retrain.backoff_max_seconds,
        clock=clock,
    )
    return Parts(store, engine, models, retrainer, bootstrap, clock(), clock, role, leadership)
