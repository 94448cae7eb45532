"""Telling the team: alerts to a JSON webhook and to Alertmanager's v2 API, de-duplicated.

This module owns the alert payloads, their de-duplication, the background delivery with
retries and backoff, and the ``driftd_alerts_*`` counters. It must never block or raise into
its caller (the retraining loop, the ingest path): :meth:`Alerter.send` only queues, a single
sender thread does the HTTP, and a receiver that is down, slow or refusing is logged, retried
and counted, never fatal. Only the standard library speaks HTTP here.

The de-duplication state is in memory: a restart forgets it, so an alert sent just before a
restart may be sent again just after.

Examples
--------
>>> alertname("candidate_rejected")
'DriftdCandidateRejected'
>>> from prometheus_client import CollectorRegistry
>>> from driftd.alerts import AlertsConfig
>>> from driftd.metrics import Metrics
>>> alerter = Alerter(AlertsConfig(), Metrics(CollectorRegistry(), process=False))
>>> alerter.enabled, alerter.send("training_failed", "the child exited with 1")
(False, False)
>>> alerter.close()
"""

from __future__ import annotations

import collections
import http.client
import json
import logging
import math
import re
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.message import Message
from typing import IO, Any

from typing_extensions import override

from driftd import __version__
from driftd.metrics import Metrics

__all__ = ["MAX_QUEUE", "RUNBOOK", "Alerter", "AlertsConfig", "alertname"]

log = logging.getLogger(__name__)

MAX_QUEUE = 1000
_MAX_BACKOFF = 300.0
_KIND = re.compile(r"[a-z][a-z0-9_]*\Z")
_NOT_LABEL = re.compile(r"[^A-Za-z0-9_]")
_RESERVED = ("alertname", "severity", "instance", "service")

RUNBOOK: dict[str, str] = {
    "candidate_rejected": "The champion keeps serving. Read the gate verdict (driftd models, "
    "GET /v1/models): which rule failed, the holdout size, the drift that triggered it.",
    "training_failed": "The champion keeps serving. Read the training child's error in the "
    "daemon log; check [model] estimator/params and the training snapshot.",
    "training_timeout": "The champion keeps serving. Raise training.timeout_seconds or lower "
    "training.window_rows; check the host's CPU and memory.",
    "model_load_failed": "A version was refused at load (integrity, trusted types or warm-up). "
    "Check its manifest sha256 and model.trusted_types; driftd rollback if serving is affected.",
    "rolled_back": "The champion moved back to the previous version. Read the registry history "
    "(driftd models) for why, and whether the rolled-back version should be removed.",
    "consecutive_rejections": "Retraining keeps failing the gate: the data may have moved beyond "
    "what the model can learn. Review the features, the labels and the gate thresholds.",
}


@dataclass(frozen=True, slots=True)
class AlertsConfig:
    webhook_url: str | None = None
    alertmanager_url: str | None = None
    labels: dict[str, str] = field(default_factory=dict)
    dedupe_seconds: float = field(default=600.0, metadata={"min": 0})
    timeout_seconds: float = field(default=5.0, metadata={"min": 0.1})
    retries: int = field(default=3, metadata={"min": 0, "max": 20})
    backoff_seconds: float = field(default=1.0, metadata={"min": 0})
    resolve_after_seconds: float = field(default=3600.0, metadata={"min": 60})
    escalate_after: int = field(default=3, metadata={"min": 1})

    def validate(self) -> list[str]:
        errors = []
        for key in ("webhook_url", "alertmanager_url"):
            url = getattr(self, key)
            if url is not None and not url.startswith(("http://", "https://")):
                errors.append(f"{key}: got {url!r}, expected an http:// or https:// URL")
        return errors


def alertname(kind: str) -> str:
    """The Alertmanager ``alertname`` for an alert kind: ``Driftd`` + the kind in CamelCase."""
    return "Driftd" + "".join(part.capitalize() for part in kind.split("_"))


@dataclass(frozen=True, slots=True)
class _Receiver:
    name: str
    url: str


@dataclass(frozen=True, slots=True)
class _Alert:
    kind: str
    ident: tuple[str, str]
    queued_at: float
    bodies: tuple[tuple[_Receiver, bytes], ...]


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """urllib turns a redirected POST into a GET without the body; refuse redirects instead."""

    @override
    def redirect_request(
        self,
        req: urllib.request.Request,
        fp: IO[bytes],
        code: int,
        msg: str,
        headers: Message,
        newurl: str,
    ) -> urllib.request.Request | None:
        return None


class Alerter:
    """Queue alerts for a background thread that delivers them to every configured receiver.

    Parameters
    ----------
    config
        Receivers (``webhook_url``, ``alertmanager_url``), extra labels, de-duplication window,
        per-request timeout, retries and backoff, and Alertmanager's ``resolve_after_seconds``.
    metrics
        ``alerts_sent{kind}`` counts each alert once, when at least one receiver accepted it;
        ``alerts_failed`` counts each receiver delivery that failed after every retry, each
        alert dropped from a full queue, and each alert still queued when :meth:`close` ran out
        of time. With one receiver, sent + failed is the number of alerts queued.
    instance
        The ``instance`` label and payload field: which daemon is speaking.
    clock
        Wall-clock seconds; drives de-duplication and the payload timestamps.
    generator_url
        Alertmanager's ``generatorURL`` (e.g. the daemon's ``/v1/status``); omitted when None.
    max_queue
        Alerts waiting for the sender; when full the oldest is dropped, logged and counted.

    Notes
    -----
    Each receiver gets ``1 + retries`` attempts per alert, ``backoff_seconds * 2**i`` apart
    (at most 300 s), each bounded by ``timeout_seconds``. 5xx, 408, 429 and network errors are
    retried; other 4xx and redirects are not (the payload would be refused again). An alert
    that reached no receiver clears its de-duplication entry, so the next identical
    :meth:`send` is queued rather than suppressed. HTTP proxies follow the usual
    ``http_proxy``/``https_proxy``/``no_proxy`` environment variables.
    """

    def __init__(
        self,
        config: AlertsConfig,
        metrics: Metrics,
        *,
        instance: str = "driftd",
        clock: Callable[[], float] = time.time,
        generator_url: str | None = None,
        max_queue: int = MAX_QUEUE,
    ) -> None:
        self.config = config
        self.instance = instance
        self.generator_url = generator_url
        self._metrics = metrics
        self._clock = clock
        self._max_queue = max(1, max_queue)
        self._receivers = tuple(
            _Receiver(name, url)
            for name, url in (
                ("webhook", config.webhook_url),
                ("alertmanager", _alertmanager_endpoint(config.alertmanager_url)),
            )
            if url and _http_url(name, url)
        )
        self._opener = urllib.request.build_opener(_NoRedirect())
        self._cond = threading.Condition()
        self._queue: collections.deque[_Alert] = collections.deque()
        self._inflight = 0
        self._sent: dict[tuple[str, str], float] = {}
        self._closed = False
        self._deadline: float | None = None
        self._abort = threading.Event()
        self._thread: threading.Thread | None = None
        if self._receivers:
            self._thread = threading.Thread(target=self._run, name="driftd-alerts", daemon=True)
            self._thread.start()

    @property
    def enabled(self) -> bool:
        """Whether any receiver is configured."""
        return bool(self._receivers)

    def send(
        self,
        kind: str,
        summary: str,
        *,
        severity: str = "warning",
        labels: Mapping[str, str] | None = None,
        details: Mapping[str, Any] | None = None,
        key: str | None = None,
    ) -> bool:
        """Queue an alert; never blocks on the network and never raises.

        Returns True when queued; False when de-duplicated (same ``kind`` and ``key``, which
        defaults to ``kind``, within ``dedupe_seconds``), when no receiver is configured (the
        alert is still logged at warning level), after :meth:`close`, or for a kind that is
        not ``snake_case``.
        """
        try:
            return self._send(
                kind,
                summary,
                severity=severity,
                labels=labels or {},
                details=details or {},
                key=key,
            )
        except Exception:
            log.exception("alert %s could not be queued", kind)
            return False

    def pending(self) -> int:
        """Alerts queued or being delivered, not yet delivered or given up on."""
        with self._cond:
            return len(self._queue) + self._inflight

    def close(self, timeout: float = 5.0) -> None:
        """Deliver what is queued within ``timeout`` seconds, then stop the sender thread.

        At the deadline, retries and backoff stop and whatever is still queued is counted as
        failed; a request already on the wire cannot be interrupted and ends within its own
        ``timeout_seconds``, so this returns within ``timeout + timeout_seconds`` (plus a
        little). Requests started after this call are capped at the deadline. Calling it
        again does nothing.
        """
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._deadline = time.monotonic() + max(0.0, timeout)
            self._cond.notify_all()
        if self._thread is None:
            return
        self._thread.join(max(0.0, timeout))
        if self._thread.is_alive():
            self._abort.set()
            self._thread.join(self.config.timeout_seconds + 0.5)
        if self._thread.is_alive():  # pragma: no cover - a request ignoring its socket timeout
            log.warning("the alert sender is still running after close(%.1f)", timeout)

    def _send(
        self,
        kind: str,
        summary: str,
        *,
        severity: str,
        labels: Mapping[str, str],
        details: Mapping[str, Any],
        key: str | None,
    ) -> bool:
        if not _KIND.match(kind):
            log.error("alert kind %r dropped: expected snake_case such as 'rolled_back'", kind)
            return False
        if not self._receivers:
            log.warning("alert %s (%s, no receiver configured): %s", kind, severity, summary)
            return False
        now = self._clock()
        ident = (kind, kind if key is None else key)
        bodies = self._bodies(
            kind, summary, severity=severity, labels=labels, details=details, now=now
        )
        with self._cond:
            if self._closed:
                log.warning("alert %s dropped, the alerter is closed: %s", kind, summary)
                return False
            last = self._sent.get(ident)
            if last is not None and now - last < self.config.dedupe_seconds:
                log.debug("alert %s (key %r) de-duplicated: %s", kind, ident[1], summary)
                return False
            window = self.config.dedupe_seconds
            self._sent = {k: t for k, t in self._sent.items() if now - t < window}
            self._sent[ident] = now
            if len(self._queue) >= self._max_queue:
                dropped = self._queue.popleft()
                log.error(
                    "alert queue full (%d): dropped the oldest, %s", self._max_queue, dropped.kind
                )
                self._metrics.alerts_failed.inc()
            self._queue.append(_Alert(kind, ident, now, bodies))
            self._cond.notify_all()
        log.warning("alert %s (%s): %s", kind, severity, summary)
        return True

    def _bodies(
        self,
        kind: str,
        summary: str,
        *,
        severity: str,
        labels: Mapping[str, str],
        details: Mapping[str, Any],
        now: float,
    ) -> tuple[tuple[_Receiver, bytes], ...]:
        common = {_label_name(k): str(v) for k, v in {**self.config.labels, **labels}.items()}
        plain = _plain(details)
        out = []
        for receiver in self._receivers:
            if receiver.name == "webhook":
                payload: Any = {
                    "kind": kind,
                    "summary": summary,
                    "severity": severity,
                    "labels": common,
                    "details": plain,
                    "time": _rfc3339(now),
                    "instance": self.instance,
                }
            else:
                am_labels = {k: v for k, v in common.items() if v and k not in _RESERVED}
                am_labels |= {
                    "alertname": alertname(kind),
                    "severity": severity,
                    "instance": self.instance,
                    "service": "driftd",
                }
                alert: dict[str, Any] = {
                    "labels": am_labels,
                    "annotations": {
                        "summary": summary,
                        "description": "\n".join(f"{k}: {_text(v)}" for k, v in plain.items())
                        or summary,
                        "runbook": RUNBOOK.get(kind, "See driftd's docs/alerts.md."),
                    },
                    "startsAt": _rfc3339(now),
                    "endsAt": _rfc3339(now + self.config.resolve_after_seconds),
                }
                if self.generator_url:
                    alert["generatorURL"] = self.generator_url
                payload = [alert]
            out.append((receiver, json.dumps(payload, sort_keys=False).encode()))
        return tuple(out)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    self._cond.wait()
                if self._abort.is_set() and self._queue:
                    log.error("%d queued alert(s) not delivered before close", len(self._queue))
                    self._metrics.alerts_failed.inc(len(self._queue))
                    self._queue.clear()
                if not self._queue:
                    return
                alert = self._queue.popleft()
                self._inflight = 1
            try:
                self._deliver(alert)
            except Exception:  # the sender thread must outlive any one alert
                log.exception("alert %s could not be delivered", alert.kind)
                self._metrics.alerts_failed.inc()
            finally:
                with self._cond:
                    self._inflight = 0

    def _deliver(self, alert: _Alert) -> None:
        delivered = [self._post_with_retries(r, body, alert.kind) for r, body in alert.bodies]
        if any(delivered):
            self._metrics.alerts_sent.labels(alert.kind).inc()
            return
        with self._cond:
            if self._sent.get(alert.ident) == alert.queued_at:
                del self._sent[alert.ident]

    def _post_with_retries(self, receiver: _Receiver, body: bytes, kind: str) -> bool:
        attempts = 1 + self.config.retries
        error = "not attempted before close"
        for attempt in range(1, attempts + 1):
            if self._abort.is_set():
                break
            error, retryable = self._post(receiver.url, body)
            if not error:
                log.info("alert %s delivered to %s", kind, receiver.name)
                return True
            if not retryable or attempt == attempts:
                break
            delay = min(self.config.backoff_seconds * 2 ** (attempt - 1), _MAX_BACKOFF)
            log.warning(
                "alert %s to %s failed (attempt %d of %d): %s; retrying in %.2f s",
                kind,
                receiver.name,
                attempt,
                attempts,
                error,
                delay,
            )
            if self._abort.wait(delay):
                break
        log.error(
            "alert %s to %s (%s) failed after every retry: %s",
            kind,
            receiver.name,
            receiver.url,
            error,
        )
        self._metrics.alerts_failed.inc()
        return False

    def _post(self, url: str, body: bytes) -> tuple[str, bool]:
        """POST ``body``; return ``("", False)`` on 2xx, else the error and whether to retry."""
        timeout = self.config.timeout_seconds
        if self._deadline is not None:
            timeout = max(0.1, min(timeout, self._deadline - time.monotonic()))
        request = urllib.request.Request(  # noqa: S310 - http(s) only, checked in __init__
            url,
            data=body,
            method="POST",
            headers={"Content-Type": "application/json", "User-Agent": f"driftd/{__version__}"},
        )
        try:
            with self._opener.open(request, timeout=timeout) as response:
                response.read()
        except urllib.error.HTTPError as exc:
            try:
                text = exc.read(200).decode("utf-8", "replace").strip()
            finally:
                exc.close()
            return f"HTTP {exc.code} {text!r}", exc.code >= 500 or exc.code in (408, 429)
        except (OSError, http.client.HTTPException, ValueError) as exc:
            return f"{type(exc).__name__}: {exc}", True
        return "", False


def _http_url(name: str, url: str) -> bool:
    if url.startswith(("http://", "https://")):
        return True
    log.error("alerts: %s %r ignored, expected an http:// or https:// URL", name, url)
    return False


def _alertmanager_endpoint(url: str | None) -> str | None:
    return url.rstrip("/") + "/api/v2/alerts" if url else None


def _label_name(name: str) -> str:
    """A valid Prometheus label name: invalid characters become ``_``, no leading digit."""
    name = _NOT_LABEL.sub("_", str(name)) or "_"
    return "_" + name if name[0].isdigit() else name


def _rfc3339(seconds: float) -> str:
    stamp = datetime.fromtimestamp(seconds, UTC).isoformat(timespec="milliseconds")
    return stamp.replace("+00:00", "Z")


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _plain(value: Any) -> Any:
    """A JSON-safe copy: mappings and sequences recursed, NaN/inf and other objects as text."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if value is None or isinstance(value, str | int | float):
        return value
    return str(value)
