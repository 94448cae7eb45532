"""The daemon's lifecycle: startup, main loop, shutdown; signals; sd_notify.

Shaped like uvicorn's server, on which it runs: ``startup`` opens the store and loads the model
(the FastAPI lifespan), ``on_tick`` does the periodic chores (watchdog, checkpoint, retention,
bootstrap), ``shutdown`` drains requests within a bounded time and closes the store. SIGTERM
and SIGINT ask for a graceful exit and a second SIGINT forces it; SIGHUP re-reads the config
and reports what needs a restart. No business logic lives here: it is in the engine.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import signal
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from types import FrameType
from typing import Any, Protocol

import uvicorn
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger
from fastapi import FastAPI

from driftd.alerts import Alerter
from driftd.config import Config, load
from driftd.errors import ConfigError
from driftd.metrics import Metrics
from driftd.retrain.policy import Job
from driftd.retrain.retrainer import Retrainer
from driftd.retrain.worker import TrainingWorker
from driftd.service import logs
from driftd.service.app import create_app
from driftd.service.engine import Engine
from driftd.service.header_timeout import HeaderTimeout
from driftd.service.sdnotify import Notifier, Watchdog

__all__ = ["LIVE_SECTIONS", "Daemon", "Source"]

#: Config sections a SIGHUP applies without a restart.
LIVE_SECTIONS = frozenset({"log", "gate", "guard", "alerts", "retrain"})

log = logging.getLogger(__name__)


class Source(Protocol):
    """Traffic fed into the engine from inside the process (the demo stream; later, brokers)."""

    def start(self) -> None: ...

    def close(self) -> None: ...


class _Server(uvicorn.Server):
    """uvicorn's server with our signal handling and our chores in its tick."""

    def __init__(self, config: uvicorn.Config, daemon: Daemon) -> None:
        super().__init__(config)
        self.daemon = daemon

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        handlers = {
            signal.SIGINT: self.handle_exit,
            signal.SIGTERM: self.handle_exit,
            signal.SIGHUP: self.daemon.handle_reload,
        }
        original = {sig: signal.signal(sig, h) for sig, h in handlers.items()}
        try:
            yield
        finally:
            for sig, handler in original.items():
                signal.signal(sig, handler)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.should_exit and sig == signal.SIGINT:
            self.force_exit = True
            log.warning("second interrupt: exiting without waiting for requests")
        else:
            log.info("received %s: shutting down gracefully", signal.Signals(sig).name)
            self.should_exit = True

    async def on_tick(self, counter: int) -> bool:
        should_exit = await super().on_tick(counter)
        if self.started:
            now = time.monotonic()
            self.daemon.header_timeout.check(self.server_state.connections, now)
            self.daemon.on_tick(now)
        return should_exit or self.daemon.should_exit


class Daemon:
    """One driftd process. ``Daemon(config).run()`` blocks until shutdown, returns an exit code."""

    def __init__(
        self,
        config: Config,
        *,
        metrics: Metrics | None = None,
        on_started: Callable[[Daemon], None] | None = None,
    ) -> None:
        self.config = config
        self.metrics = metrics if metrics is not None else Metrics()
        self.engine = Engine(config, self.metrics)
        self.notifier = Notifier.from_environ()
        self.watchdog = Watchdog.from_environ(self.notifier)
        # Training jobs and the periodic chores (checkpoint, retention) each get a thread, so
        # that a long fit never delays a checkpoint.
        self.training = ThreadPoolExecutor(max_workers=1, thread_name_prefix="driftd-train")
        self.chores = ThreadPoolExecutor(max_workers=1, thread_name_prefix="driftd-chores")
        self.alerter = Alerter(config.alerts, self.metrics, instance=self._instance())
        mem = config.training.memory_limit_mb
        self.trainer = TrainingWorker(
            memory_limit_bytes=mem * 1024 * 1024 if mem else None, nice=config.training.nice
        )
        self.retrainer: Retrainer | None = None
        self.header_timeout = HeaderTimeout(
            config.server.read_timeout_seconds,
            lambda reason: self.metrics.rejected.labels(reason).inc(),
        )
        self.scheduler: AsyncIOScheduler | None = None
        self.on_started = on_started
        self.should_exit = False
        self._ready_sent = False
        self._listening = False
        self._next_extend = 0.0
        self._reload_requested = False
        self._next_checkpoint = 0.0
        self._next_trim = 0.0
        self._train: Future[Any] | None = None
        self._chore: Future[Any] | None = None
        self.server: _Server | None = None
        self.sources: list[Source] = []

    # -- lifecycle -------------------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def lifespan(self, _: FastAPI) -> AsyncIterator[None]:
        await asyncio.to_thread(self.startup)
        self.scheduler = self._schedule()
        try:
            yield
        finally:
            self.notifier.stopping()
            if self.scheduler is not None:
                self.scheduler.shutdown(wait=False)
            await asyncio.to_thread(self.shutdown)

    def _schedule(self) -> AsyncIOScheduler | None:
        """Scheduled retrains (interval or cron) from ``[retrain]``; None when not configured."""
        cfg = self.config.retrain
        trigger: Any
        if cfg.interval_seconds is not None:
            trigger = IntervalTrigger(seconds=cfg.interval_seconds)
        elif cfg.cron is not None:
            trigger = CronTrigger.from_crontab(cfg.cron)
        else:
            return None
        scheduler = AsyncIOScheduler()
        scheduler.add_job(
            self._scheduled_retrain,
            trigger,
            id="retrain",
            max_instances=1,
            coalesce=True,
            misfire_grace_time=int(cfg.misfire_grace_seconds),
        )
        scheduler.start()
        log.info("scheduled retrains: %s", trigger)
        return scheduler

    async def _scheduled_retrain(self) -> None:
        if self.retrainer is not None:
            await asyncio.to_thread(self.retrainer.request, "schedule")

    def startup(self) -> None:
        self.engine.open()
        self.trainer.start()  # spawns and imports in the background, ahead of the first job
        self.engine.loader = self.trainer.load  # rollbacks load there, not beside requests
        self.retrainer = Retrainer(self.engine, alerter=self.alerter, fit=self.trainer)
        now = time.monotonic()
        self._next_checkpoint = now + self.config.monitor.checkpoint_interval_seconds
        self._next_trim = now
        live = self.engine.serving.current
        log.info(
            "driftd started: state %s, %s",
            self.engine.state_dir,
            f"serving model v{live.version:06d}" if live else "no model yet",
        )

    def request_exit(self) -> None:
        """Ask for a graceful shutdown, as SIGTERM does (thread-safe)."""
        self.should_exit = True

    def attach(self, source: Source) -> None:
        """Start a traffic source (the demo stream) that feeds the engine until shutdown."""
        self.sources.append(source)
        source.start()

    def shutdown(self) -> None:
        for source in self.sources:
            source.close()
        self.engine.cancel.set()
        self.training.shutdown(wait=True, cancel_futures=True)
        self.trainer.close()
        self.chores.shutdown(wait=True, cancel_futures=True)
        self.engine.close()
        self.alerter.close(timeout=2.0)
        log.info("driftd stopped")

    def run(self) -> int:
        config = uvicorn.Config(
            create_app(
                self.engine,
                lifespan=self.lifespan,
                retrainer=lambda: self.retrainer,
                read_timeout_seconds=self.config.server.read_timeout_seconds,
                read_idle_seconds=self.config.server.read_idle_seconds,
            ),
            host=self.config.server.host,
            port=self.config.server.port,
            lifespan="on",
            log_config=None,
            access_log=False,
            timeout_graceful_shutdown=int(self.config.server.shutdown_timeout_seconds) or None,
            server_header=False,
        )
        self.server = _Server(config, self)
        try:
            # uvicorn's choice of event loop: uvloop when installed, else asyncio's.
            with asyncio.Runner(loop_factory=config.get_loop_factory()) as runner:
                runner.run(self.server.serve())
        except OSError as exc:
            log.error(
                "cannot serve on %s:%s: %s", self.config.server.host, self.config.server.port, exc
            )
            return 1
        if not self.server.started:
            return 1
        return 0

    @property
    def port(self) -> int | None:
        """The bound port (useful with ``port = 0``)."""
        if self.server is None or not self.server.servers:
            return None
        for srv in self.server.servers:
            for sock in srv.sockets:
                return int(sock.getsockname()[1])
        return None

    # -- the main loop's chores ------------------------------------------------------------
    def on_tick(self, now: float) -> None:
        """Called about every 0.1 s from the event loop: cheap checks only, work goes to threads."""
        if not self._listening:
            self._listening = True
            log.info("listening on http://%s:%s", self.config.server.host, self.port)
            if self.on_started is not None:
                self.on_started(self)
        if not self._ready_sent:
            self._notify_ready(now)
        self.watchdog.tick(now, healthy=self._healthy())
        if self._reload_requested:
            self._reload_requested = False
            self.reload()
        self._start_training()
        if self._chore is None or self._chore.done():
            if now >= self._next_checkpoint:
                self._next_checkpoint = now + self.config.monitor.checkpoint_interval_seconds
                self._chore = self.chores.submit(self.engine.checkpoint)
            elif now >= self._next_trim:
                self._next_trim = now + self.config.store.retention_interval_seconds
                self._chore = self.chores.submit(self.engine.trim)

    def _start_training(self) -> None:
        retrainer = self.retrainer
        if retrainer is None or (self._train is not None and not self._train.done()):
            return
        if self.engine.bootstrap_due():
            self._train = self.training.submit(self._bootstrap)
            return
        if self.engine.serving.current is None:
            return
        job = retrainer.poll()
        if job is not None:
            self.notifier.status(f"{self.status_line()}; retraining ({', '.join(job.reasons)})")
            self._train = self.training.submit(self._retrain, job)

    def _retrain(self, job: Job) -> None:
        assert self.retrainer is not None
        self.retrainer.run(job)
        self.notifier.status(self.status_line())

    def _notify_ready(self, now: float) -> None:
        """READY=1 once the port listens and a model serves. A first model made from traffic
        cannot exist before traffic, and a failed bootstrap is retried: in both cases the daemon
        is ready to take requests, so it says so (STATUS tells why there is no model). While a
        first model trains, ask systemd for more start time instead."""
        engine = self.engine
        waiting_for_traffic = self.config.bootstrap.data is None
        if (
            engine.serving.current is not None
            or waiting_for_traffic
            or engine.bootstrap_state == "failed"
        ):
            self._ready_sent = True
            self.notifier.ready(self.status_line())
        elif now >= self._next_extend:
            self._next_extend = now + 10.0
            self.notifier.extend_timeout(30.0)
            self.notifier.status("training the first model")

    def _healthy(self) -> bool:
        return not self.engine.worker._shutdown

    def _bootstrap(self) -> None:
        assert self.retrainer is not None
        self.notifier.status("training the first model")
        self.retrainer.bootstrap()
        self.notifier.status(self.status_line())

    def status_line(self) -> str:
        live = self.engine.serving.current
        if live is None:
            return "no model yet: " + self.engine._no_model_reason()
        return f"serving model v{live.version:06d}"

    # -- signals ---------------------------------------------------------------------------
    def handle_reload(self, sig: int, frame: FrameType | None) -> None:
        self._reload_requested = True

    def _apply(self, sections: list[str]) -> None:
        """Put reloaded sections to work: log level, gate, guard, alert receivers, retrain policy
        and schedule. Everything else is read once at start."""
        cfg = self.config
        self.engine.config = cfg
        if "log" in sections:
            logs.configure(cfg.log.level, cfg.log.format)
        if "alerts" in sections:
            old, self.alerter = (
                self.alerter,
                Alerter(cfg.alerts, self.metrics, instance=self._instance()),
            )
            threading.Thread(target=old.close, name="driftd-alerts-close", daemon=True).start()
        if self.retrainer is not None:
            self.retrainer.reconfigure(cfg, alerter=self.alerter)
        if "retrain" in sections:
            if self.scheduler is not None:
                self.scheduler.shutdown(wait=False)
            self.scheduler = self._schedule()

    def _instance(self) -> str:
        return f"{self.config.server.host}:{self.config.server.port}"

    def reload(self) -> None:
        """SIGHUP: re-read the config; apply what can change live, report what needs a restart."""
        self.notifier.reloading("reloading configuration")
        try:
            new = load(self.config.source)
        except ConfigError as exc:
            log.error(
                "reload refused, keeping the running configuration:\n%s", "\n".join(exc.errors)
            )
            self.notifier.ready(self.status_line())
            return
        changed = [
            f.name
            for f in dataclasses.fields(new)
            if f.name != "source" and getattr(new, f.name) != getattr(self.config, f.name)
        ]
        applied = [name for name in changed if name in LIVE_SECTIONS]
        restart = [name for name in changed if name not in LIVE_SECTIONS]
        self.config = dataclasses.replace(
            self.config, **{name: getattr(new, name) for name in applied}
        )
        self._apply(applied)
        if restart:
            log.warning(
                "reloaded [%s]; changes to [%s] take effect after a restart",
                ", ".join(applied) or "nothing",
                ", ".join(restart),
            )
        else:
            log.info("configuration reloaded: [%s] applied", ", ".join(applied) or "no changes")
        self.engine.store.add_event(
            "config_reloaded", {"applied": applied, "needs_restart": restart}, ts=time.time()
        )
        self.notifier.ready(self.status_line())


def run_config(path: Path) -> int:
    config = load(path)
    logs.configure(config.log.level, config.log.format)
    return Daemon(config).run()
