"""The NATS JetStream source: records and labels pulled from a durable consumer into the engine.

Messages on ``<prefix>.<model>.records`` and ``<prefix>.<model>.labels`` carry the bodies
``POST /v1/records`` and ``POST /v1/labels`` take, and go through the same parsing, the same
caps and the same engine calls, on the engine's worker. A message is acknowledged only once
that call has returned, so once the store has committed it; bad input (what HTTP answers
with a 4xx) is terminated, counted in ``driftd_records_rejected_total{reason}`` and logged,
never delivered again; a store failure is negatively acknowledged and delivered again later.
Every record from the stream must carry its ``id``: a message delivered again after a crash
between the commit and the acknowledgement is then a duplicate by id and changes nothing
(at-least-once delivery plus idempotent ids: each record stored once).

The asyncio client runs on a thread and an event loop of its own, never the daemon's. A
broker that is away or refuses is tried again with exponential backoff, forever: the source
must never stop the daemon, and its state (connected or not, the last error, the next try,
the consumer's lag) is in ``/v1/status`` and ``/readyz``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
import urllib.parse
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from driftd.config import SourceConfig
from driftd.errors import ConfigError
from driftd.metrics import SOURCE_OUTCOMES, Metrics
from driftd.service.body import Bodies
from driftd.service.engine import Engine
from driftd.service.http import ApiError
from driftd.service.intake import KINDS, Intake

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.aio.msg import Msg
    from nats.js import JetStreamContext

__all__ = ["NAME", "JetStreamSource", "covers"]

NAME = "nats"  # the source's name in metrics, status and the store's records
FETCH_SECONDS = 1.0  # a fetch waits this long for messages: also how soon a close is seen
CONNECT_SECONDS = 2.0
DRAIN_SECONDS = 2.0

log = logging.getLogger(__name__)


class JetStreamSource:
    """Consumes ``config``'s subjects into ``engine`` from :meth:`start` until :meth:`close`.

    ``bodies`` parses and caps the messages as the HTTP routes do (``[server]``'s body and
    batch caps apply to each message).
    """

    def __init__(
        self,
        config: SourceConfig,
        engine: Engine,
        bodies: Bodies,
        metrics: Metrics,
        *,
        clock: Callable[[], float] = time.time,
        close_timeout: float = 10.0,
    ) -> None:
        try:
            import nats  # noqa: F401 - optional: only a daemon with [source] kind = "nats" needs it
        except ImportError:
            raise ConfigError(
                ["source.kind: 'nats' needs nats-py (pip install 'driftd[nats]')"]
            ) from None
        self.config = config
        self.intake = Intake(engine, bodies, source=NAME)
        self.metrics = metrics
        self.clock = clock
        self.close_timeout = close_timeout
        self._lock = threading.Lock()
        self._state: dict[str, Any] = {
            "state": "connecting",
            "connected": False,
            "since": clock(),
            "last_error": None,
            "next_retry": None,
            "failures": 0,
        }
        self._lag: dict[str, Any] | None = None
        self._counts = dict.fromkeys(SOURCE_OUTCOMES, 0)
        self._redeliveries = 0
        self._delay = config.backoff_min_seconds
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        metrics.declare_source(NAME, KINDS)

    # -- lifecycle (from the daemon's threads) -------------------------------------------------
    def start(self) -> None:
        running = threading.Event()
        self._thread = threading.Thread(
            target=self._main, args=(running,), name="driftd-nats", daemon=True
        )
        self._thread.start()
        running.wait(5.0)  # the loop exists: close() can reach it from now on

    def drain(self) -> None:
        """Fetch nothing more; the messages in hand are still finished (thread-safe)."""
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None:
            with contextlib.suppress(RuntimeError):  # the loop ended already
                loop.call_soon_threadsafe(stop.set)

    def close(self) -> None:
        """Stop fetching, finish the messages in hand (each stored and acknowledged, or
        refused), hand the acknowledgements to the broker and disconnect; within
        ``close_timeout`` (the daemon's shutdown timeout)."""
        self.drain()
        if self._thread is not None:
            self._thread.join(self.close_timeout)
            if self._thread.is_alive():
                log.warning(
                    "NATS source: still busy after %.1f s at shutdown; its unacknowledged"
                    " messages will be delivered again",
                    self.close_timeout,
                )

    def status(self) -> dict[str, Any]:
        """The source's state for ``/v1/status`` and ``/readyz`` (thread-safe)."""
        cfg = self.config
        with self._lock:
            return {
                "kind": NAME,
                "servers": [_without_credentials(u) for u in cfg.servers],
                "stream": cfg.stream,
                "consumer": cfg.consumer,
                "subjects": list(cfg.subjects),
                **self._state,
                "lag": self._lag,
                "messages": dict(self._counts),
                "redeliveries": self._redeliveries,
            }

    # -- the source's own thread and loop ------------------------------------------------------
    def _main(self, running: threading.Event) -> None:
        try:
            asyncio.run(self._serve(running))
        finally:
            running.set()
            self.metrics.source_connected.labels(NAME).set(0)

    async def _serve(self, running: threading.Event) -> None:
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        running.set()
        stop = self._stop
        while not stop.is_set():
            try:
                await self._session(stop)
            except Exception as exc:  # noqa: BLE001 - a broker away or refusing is retried, never fatal
                self._failed(exc)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self._delay)
                self._delay = min(self._delay * 2, self.config.backoff_max_seconds)
        self._set(state="stopped", connected=False, next_retry=None)
        log.info("NATS source stopped")

    async def _session(self, stop: asyncio.Event) -> None:
        """One connection: set up the stream and the consumer, consume until ``stop``."""
        import nats

        seen: list[Exception] = []

        async def quiet(exc: Exception) -> None:  # failures surface as exceptions below
            seen.append(exc)
            log.debug("NATS client: %s", exc)

        try:
            nc = await nats.connect(
                servers=self.config.servers,
                name=f"driftd-{self.config.model}",
                connect_timeout=int(CONNECT_SECONDS),
                # Reconnects are ours, with backoff and shown in status; the client tries each
                # server once (0 would mean forever, 2 s apart).
                allow_reconnect=False,
                max_reconnect_attempts=1,
                reconnect_time_wait=0.0,
                error_cb=quiet,
            )
        except nats.errors.NoServersError:
            raise seen[-1] if seen else ConnectionError("no server reachable") from None
        try:
            js = nc.jetstream()
            await self._ensure_stream(js)
            sub = await self._subscribe(js)
            self._connected()
            await self._consume(nc, sub, stop)
        finally:
            try:
                await asyncio.wait_for(nc.drain(), DRAIN_SECONDS)  # the last acks go out first
            except Exception:  # noqa: BLE001 - a connection already lost has nothing to drain
                await nc.close()

    async def _ensure_stream(self, js: JetStreamContext) -> None:
        """Create the stream when missing; add this model's subjects to one lacking them."""
        from nats.js.api import RetentionPolicy, StorageType
        from nats.js.errors import NotFoundError

        cfg, wanted = self.config, list(self.config.subjects)
        try:
            info = await js.stream_info(cfg.stream)
        except NotFoundError:
            # Interest retention: a message is kept until every consumer on its subject has
            # acknowledged it (the store holds it from then on), so the stream stays bounded.
            await js.add_stream(
                name=cfg.stream,
                subjects=wanted,
                storage=StorageType.FILE,
                retention=RetentionPolicy.INTEREST,
            )
            log.info("NATS source: created stream %s for %s", cfg.stream, ", ".join(wanted))
            return
        held = list(info.config.subjects or [])
        missing = [s for s in wanted if not any(covers(p, s) for p in held)]
        if missing:
            await js.update_stream(info.config, subjects=held + missing)
            log.info("NATS source: added %s to stream %s", ", ".join(missing), cfg.stream)

    async def _subscribe(self, js: JetStreamContext) -> JetStreamContext.PullSubscription:
        from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

        cfg = self.config
        consumer = ConsumerConfig(
            durable_name=cfg.consumer,
            name=cfg.consumer,
            filter_subject=f"{cfg.subject_prefix}.{cfg.model}.*",
            deliver_policy=DeliverPolicy.ALL,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=cfg.ack_wait_seconds,
            max_deliver=-1,  # a message the store could not take is never given up on
        )
        # Creates the durable, or finds it (its place kept since the last run).
        await js.add_consumer(cfg.stream, consumer)
        return await js.pull_subscribe_bind(durable=cfg.consumer, stream=cfg.stream)

    async def _consume(
        self, nc: Client, sub: JetStreamContext.PullSubscription, stop: asyncio.Event
    ) -> None:
        from nats.errors import TimeoutError as FetchTimeout

        next_lag = 0.0
        while not stop.is_set():
            if nc.is_closed:
                raise ConnectionError("the connection to the broker was lost")
            if time.monotonic() >= next_lag:
                next_lag = time.monotonic() + self.config.lag_interval_seconds
                await self._read_lag(sub)
            try:
                msgs = await sub.fetch(self.config.batch, timeout=FETCH_SECONDS)
            except FetchTimeout:
                continue
            for msg in msgs:  # the batch in hand is finished even when asked to stop
                await self._handle(msg)
            await nc.flush(timeout=int(CONNECT_SECONDS))

    async def _read_lag(self, sub: JetStreamContext.PullSubscription) -> None:
        info = await sub.consumer_info()
        undelivered, unacked = info.num_pending or 0, info.num_ack_pending or 0
        self.metrics.source_pending.labels(NAME, "undelivered").set(undelivered)
        self.metrics.source_pending.labels(NAME, "unacked").set(unacked)
        with self._lock:
            self._lag = {"undelivered": undelivered, "unacked": unacked, "at": self.clock()}

    # -- one message ---------------------------------------------------------------------------
    async def _handle(self, msg: Msg) -> None:
        kind = msg.subject.rsplit(".", 1)[-1]
        delivered = msg.metadata.num_delivered
        if kind in KINDS and delivered > 1:
            self.metrics.source_redeliveries.labels(NAME, kind).inc()
            with self._lock:
                self._redeliveries += 1
        try:
            await self.intake.store(kind, msg.data, msg.headers, self.clock())
        except ApiError as exc:
            await msg.term()
            self._count(kind, "termed")
            self.metrics.rejected.labels(exc.code).inc()
            first = exc.errors[0] if exc.errors else None
            log.warning(
                "NATS source: refused message %d on %s for good (%s): %s%s",
                msg.metadata.sequence.stream,
                msg.subject,
                exc.code,
                f"{first.field}: " if first is not None else "",
                first.message if first is not None else exc.message,
            )
        except Exception as exc:  # noqa: BLE001 - not stored this time: delivered again later
            await msg.nak(delay=self.config.nak_delay_seconds)
            self._count(kind, "naked")
            log.error(
                "NATS source: could not store message %d on %s, delivered again in %.1f s: %s",
                msg.metadata.sequence.stream,
                msg.subject,
                self.config.nak_delay_seconds,
                _describe(exc),
            )
        else:
            await msg.ack()
            self._count(kind, "acked")

    # -- state ---------------------------------------------------------------------------------
    def _count(self, kind: str, outcome: str) -> None:
        self.metrics.source_messages.labels(NAME, kind if kind in KINDS else "other", outcome).inc()
        with self._lock:
            self._counts[outcome] += 1

    def _set(self, **changes: Any) -> None:
        with self._lock:
            if changes.get("state", self._state["state"]) != self._state["state"]:
                changes.setdefault("since", self.clock())
            self._state.update(changes)

    def _connected(self) -> None:
        self._delay = self.config.backoff_min_seconds
        self.metrics.source_connected.labels(NAME).set(1)
        self._set(state="connected", connected=True, next_retry=None, failures=0)
        cfg = self.config
        log.info(
            "NATS source: consuming %s from stream %s (consumer %s)",
            ", ".join(cfg.subjects),
            cfg.stream,
            cfg.consumer,
        )

    def _failed(self, exc: Exception) -> None:
        self.metrics.source_connected.labels(NAME).set(0)
        self.metrics.source_connect_failures.labels(NAME).inc()
        why = _describe(exc)
        with self._lock:
            failures = self._state["failures"] + 1
        self._set(
            state="reconnecting",
            connected=False,
            last_error=why,
            next_retry=self.clock() + self._delay,
            failures=failures,
        )
        log.warning("NATS source: %s; trying again in %.1f s", why, self._delay)


def covers(pattern: str, subject: str) -> bool:
    """Whether a NATS subject ``pattern`` (``*`` one token, ``>`` the rest) holds ``subject``.

    >>> covers("driftd.>", "driftd.fraud.records"), covers("driftd.*", "driftd.fraud.records")
    (True, False)
    >>> covers("driftd.*.labels", "driftd.fraud.labels")
    True
    """
    want, have = pattern.split("."), subject.split(".")
    for i, part in enumerate(want):
        if part == ">":
            return len(have) > i
        if i >= len(have) or part not in ("*", have[i]):
            return False
    return len(want) == len(have)


def _without_credentials(url: str) -> str:
    """A server URL without the user, password or token it may carry.

    >>> _without_credentials("nats://app:s3cret@broker:4222")
    'nats://broker:4222'
    """
    parts = urllib.parse.urlsplit(url)
    return parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl()


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
