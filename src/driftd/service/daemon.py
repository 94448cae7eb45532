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
import functools
import logging
import signal
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from types import FrameType
from typing import Any, Protocol

import uvicorn
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from fastapi import FastAPI

from driftd.alerts import Alerter
from driftd.config import Config, load
from driftd.errors import ConfigError, StoreUnavailable
from driftd.metrics import Metrics
from driftd.retrain.policy import Job
from driftd.retrain.schedule import make_trigger
from driftd.retrain.worker import TrainingWorker
from driftd.service import logs
from driftd.service.app import create_app
from driftd.service.auth import Authorizer
from driftd.service.body import Bodies
from driftd.service.cluster import Cluster
from driftd.service.header_timeout import HeaderTimeout
from driftd.service.parts import Parts, assemble
from driftd.service.sdnotify import Notifier, Watchdog

__all__ = ["LIVE_SECTIONS", "Daemon", "Source"]

#: Config sections a SIGHUP applies without a restart.
LIVE_SECTIONS = frozenset({"log", "gate", "guard", "alerts", "retrain"})

log = logging.getLogger(__name__)


class Source(Protocol):
    """Traffic fed into the engine from inside the process (the demo stream, a broker).

    ``drain`` is called as the shutdown begins (with uvicorn's, before requests are drained):
    take nothing new. ``close`` comes after, before the engine closes: finish what is in hand
    and stop."""

    def start(self) -> None: ...

    def drain(self) -> None: ...

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

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        for source in self.daemon.sources:
            source.drain()  # no new broker messages while requests drain
        await super().shutdown(sockets=sockets)

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
        self.parts: Parts | None = None  # built at startup
        self.cancel = threading.Event()  # set at shutdown: a fit or a load in progress stops
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
        self.cluster: Cluster | None = None
        self._follow: Future[Any] | None = None
        self._poll_failing = False  # the store was away at the training thread's last check

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
        trigger = make_trigger(cfg, now=time.time())
        if trigger is None:
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
        if self.parts is not None and self.parts.role.leading:
            await asyncio.to_thread(self.parts.retrainer.request, "schedule")

    def startup(self) -> None:
        _serve_single_threaded()
        self.trainer.start()  # spawns and imports in the background, ahead of the first job
        cfg = self.config
        fit = functools.partial(
            self.trainer, timeout=cfg.training.timeout_seconds, cancel=self.cancel
        )
        self.parts = assemble(
            cfg,
            self.metrics,
            state_dir=cfg.state_dir,
            fit=fit,
            loader=self.trainer.load,  # rollbacks load there, not beside requests
            alerter=self.alerter,
            cancel=self.cancel,
            preempt=self.trainer.preempt,
        )
        if self.parts.leadership is not None:
            self.cluster = Cluster(
                self.parts.leadership,
                self.parts.role,
                take_over=self.parts.take_over,
                refresh=self.parts.models.refresh,
                on_lost=self._lost_leadership,
                clock=time.time,
            )
            self.cluster.start()
            log.info("on a shared store: %s", self.parts.role.status()["role"])
        if cfg.source.kind == "nats":
            self._attach_jetstream(self.parts)
        now = time.monotonic()
        self._next_checkpoint = now + cfg.monitor.checkpoint_interval_seconds
        self._next_trim = now
        live = self.parts.models.current
        log.info(
            "driftd started: state %s, %s",
            cfg.state_dir,
            f"serving model v{live.version:06d}" if live else "no model yet",
        )

    def _attach_jetstream(self, parts: Parts) -> None:
        """Consume ``[source]``'s JetStream subjects beside HTTP ingest; its state shows in
        status and readiness. Connecting happens on the source's thread, with retries."""
        from driftd.service.jetstream import NAME, JetStreamSource

        cfg = self.config
        source = JetStreamSource(
            cfg.source,
            parts.engine,
            Bodies(cfg.schema_obj(), cfg.server),
            self.metrics,
            close_timeout=max(cfg.server.shutdown_timeout_seconds, 1.0),
        )
        parts.report_source(NAME, source.status)
        self.attach(source)

    def request_exit(self) -> None:
        """Ask for a graceful shutdown, as SIGTERM does (thread-safe)."""
        self.should_exit = True

    def attach(self, source: Source) -> None:
        """Start a traffic source (the demo stream, a broker) that feeds the engine until
        shutdown, when it is closed before the engine."""
        self.sources.append(source)
        source.start()

    @staticmethod
    def _follow_store(parts: Parts) -> None:
        """Monitor what the model's daemons stored (the leader, on the engine's worker)."""
        try:
            parts.engine.follow()
        except StoreUnavailable as exc:  # the next tick tries again
            log.warning("could not follow the store: %s", exc)
        except Exception:  # never silently: the monitor would stop with no word
            log.exception("following the store failed; the next tick tries again")

    def _lost_leadership(self) -> None:
        """Another daemon may lead already: what only the leader does stops with the role (the
        tick, the lifecycle), and the cluster's thread tries the lock again."""
        self.notifier.status(f"{self.status_line()}; standing by (lost the leader lock)")

    def shutdown(self) -> None:
        for source in self.sources:
            source.close()
        if self.cluster is not None:
            self.cluster.close()
        self.cancel.set()
        self.training.shutdown(wait=True, cancel_futures=True)
        self.trainer.close()
        self.chores.shutdown(wait=True, cancel_futures=True)
        if self.parts is not None:
            self.parts.close()
        self.alerter.close(timeout=2.0)
        log.info("driftd stopped")

    def run(self) -> int:
        cfg = self.config
        tls = cfg.server.tls_certfile, cfg.server.tls_keyfile
        certfile, keyfile = (str(cfg.resolve(p)) if p is not None else None for p in tls)
        config = uvicorn.Config(
            create_app(
                cfg.schema_obj(),
                cfg.server,
                self.metrics,
                lambda: self.parts,
                auth=Authorizer(cfg.scope_tokens()),  # token files are read here, at start-up
                open_probes=cfg.auth.open_probes,
                lifespan=self.lifespan,
            ),
            host=cfg.server.host,
            port=cfg.server.port,
            lifespan="on",
            log_config=None,
            access_log=False,
            timeout_graceful_shutdown=int(cfg.server.shutdown_timeout_seconds) or None,
            server_header=False,
            ssl_certfile=certfile,
            ssl_keyfile=keyfile,
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
            scheme = "https" if self.config.server.tls_certfile else "http"
            log.info("listening on %s://%s:%s", scheme, self.config.server.host, self.port)
            if self.on_started is not None:
                self.on_started(self)
        if not self._ready_sent:
            self._notify_ready(now)
        self.watchdog.tick(now, healthy=self._healthy())
        if self._reload_requested:
            self._reload_requested = False
            self.reload()
        if self.parts is not None:
            self.parts.engine.monitor_soon(batch=1)  # predictions answered since the last tick
        if self.parts is None or not self.parts.role.leading:
            return  # a standby leaves training and the chores to its model's leader
        if self.parts.role.shared and (self._follow is None or self._follow.done()):
            self._follow = self.parts.engine.submit(self._follow_store, self.parts)
        if self._train is None or self._train.done():
            self._train = self.training.submit(self._train_if_due, self.parts)
        if self._chore is None or self._chore.done():
            if now >= self._next_checkpoint or self.parts.engine.checkpoint_due:
                self._next_checkpoint = now + self.config.monitor.checkpoint_interval_seconds
                self._chore = self.chores.submit(self.parts.engine.checkpoint)
            elif now >= self._next_trim:
                self._next_trim = now + self.config.store.retention_interval_seconds
                self._chore = self.chores.submit(self.parts.engine.trim)

    def _train_if_due(self, parts: Parts) -> None:
        """On the training thread, asked at every tick while it is free: run the bootstrap or
        the retrain the policy says is due. Its questions read the store (a count of labelled
        rows at every tick while a drift regime is open, 0.3 ms on a large store), which on the
        event loop held up the requests behind it."""
        try:
            due = parts.bootstrap.due()
            job = None if due or parts.models.current is None else parts.retrainer.poll()
        except Exception as exc:  # the next tick asks again; the daemon lives on
            if not self._poll_failing:  # said once, not ten times a second
                if isinstance(exc, StoreUnavailable):
                    log.warning("could not check whether to train: %s", exc)
                else:
                    log.exception("could not check whether to train")
            self._poll_failing = True
            return
        self._poll_failing = False
        if due:
            self._bootstrap(parts)
        elif job is not None:
            self.notifier.status(f"{self.status_line()}; retraining ({', '.join(job.reasons)})")
            self._retrain(parts, job)

    def _retrain(self, parts: Parts, job: Job) -> None:
        parts.retrainer.run(job)
        self.notifier.status(self.status_line())

    def _notify_ready(self, now: float) -> None:
        """READY=1 once the port listens and a model serves. A first model made from traffic
        cannot exist before traffic, and a failed bootstrap is retried: in both cases the daemon
        is ready to take requests, so it says so (STATUS tells why there is no model). While a
        first model trains, ask systemd for more start time instead."""
        parts = self.parts
        if parts is None:
            return
        bootstrap = parts.bootstrap
        if (
            parts.models.current is not None
            or bootstrap.from_traffic
            or bootstrap.state == "failed"
        ):
            self._ready_sent = True
            self.notifier.ready(self.status_line())
        elif now >= self._next_extend:
            self._next_extend = now + 10.0
            self.notifier.extend_timeout(30.0)
            self.notifier.status("training the first model")

    def _healthy(self) -> bool:
        return self.parts is not None and self.parts.engine.healthy

    def _bootstrap(self, parts: Parts) -> None:
        self.notifier.status("training the first model")
        parts.bootstrap.run()
        self.notifier.status(self.status_line())

    def status_line(self) -> str:
        if self.parts is None:
            return "starting"
        live = self.parts.models.current
        if live is None:
            return "no model yet: " + self.parts.no_model_reason()
        return f"serving model v{live.version:06d}"

    # -- signals ---------------------------------------------------------------------------
    def handle_reload(self, sig: int, frame: FrameType | None) -> None:
        self._reload_requested = True

    def _apply(self, sections: list[str]) -> None:
        """Put reloaded sections to work: log level, gate, guard, alert receivers, retrain policy
        and schedule. Everything else is read once at start."""
        cfg = self.config
        if "log" in sections:
            logs.configure(cfg.log.level, cfg.log.format)
        if "alerts" in sections:
            old, self.alerter = (
                self.alerter,
                Alerter(cfg.alerts, self.metrics, instance=self._instance()),
            )
            threading.Thread(target=old.close, name="driftd-alerts-close", daemon=True).start()
        if self.parts is not None:
            self.parts.retrainer.reconfigure(cfg.retrain_settings(), alerter=self.alerter)
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
            new = load(self.config.file)
        except ConfigError as exc:
            log.error(
                "reload refused, keeping the running configuration:\n%s", "\n".join(exc.errors)
            )
            self.notifier.ready(self.status_line())
            return
        changed = [
            f.name
            for f in dataclasses.fields(new)
            if f.name != "file" and getattr(new, f.name) != getattr(self.config, f.name)
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
        if self.parts is not None:
            self.parts.store.add_event(
                "config_reloaded", {"applied": applied, "needs_restart": restart}, ts=time.time()
            )
        self.notifier.ready(self.status_line())


def _serve_single_threaded() -> None:
    """Limit OpenMP and BLAS to one thread in the serving process.

    Predictions here are a few rows at a time, where a thread pool only adds wake-up latency,
    and on a busy host its spinning threads compete with the request path (a single-row
    HistGradientBoosting predict was measured at over 400 ms under load with the default
    pools). Training runs in its own process and keeps every core.
    """
    import sklearn.ensemble  # noqa: F401 - loads the OpenMP runtime so that the limit reaches it
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=1)
