"""The demo source: a drifting synthetic stream played into the daemon through the real path.

Each batch of records is predicted over HTTP (``POST /v1/predict`` on the daemon's own
loopback port, so the predict latency and ingest metrics see it like any client), and the
true labels are sent ``label_delay_seconds`` later (``POST /v1/labels``). The stream switches
concept every ``segment`` records, so the monitor sees real drift; an optional burst of random
labels plays a data-quality incident that a retrain must not ship.

On a terminal, :class:`LiveView` redraws a compact view (progress, live accuracy, model
version, last events); otherwise progress goes to the log. :func:`summary` renders the table
printed at the end.
"""

from __future__ import annotations

import collections
import http.client
import json
import logging
import random
import ssl
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TextIO

from driftd.config import DemoConfig
from driftd.ingest.streams import SyntheticStream
from driftd.service.parts import Parts

__all__ = ["DemoSource", "DemoStats", "LiveView", "summary"]

log = logging.getLogger(__name__)


@dataclass(slots=True)
class DemoStats:
    sent: int = 0
    labelled: int = 0
    correct: int = 0
    corrupted: int = 0
    # Accuracy of the served predictions per concept segment: segment -> [correct, labelled].
    segments: dict[int, list[int]] = field(default_factory=dict)


class DemoSource:
    """Plays the configured stream at ``rate`` records/s until closed."""

    def __init__(
        self,
        parts: Parts,
        config: DemoConfig,
        *,
        url: str,
        tokens: Mapping[str, str | None] | None = None,
        cafile: str | None = None,
        report: Callable[[str], None] | None = None,
        report_every: float = 5.0,
    ) -> None:
        self.parts = parts
        self.client = _Client(url, tokens or {}, cafile)
        self.config = config
        self.stream = SyntheticStream(
            config.stream, tuple(config.concepts), config.segment, config.seed
        )
        self.stats = DemoStats()
        self.report = report
        self.report_every = report_every
        self.stop = threading.Event()
        self.started = time.monotonic()
        self._rng = random.Random(config.seed)
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self.started = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="driftd-demo", daemon=True)
        self._thread.start()

    def drain(self) -> None:
        """Send nothing more (the daemon is shutting down)."""
        self.stop.set()

    def close(self, timeout: float = 5.0) -> None:
        """Stop sending and wait for the thread (called by the daemon before the engine closes)."""
        self.stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self.client.close()

    def corrupt(self, index: int) -> bool:
        """Whether record ``index`` falls in the incident's burst of random labels."""
        start = self.config.corrupt_start
        return start is not None and start <= index < start + self.config.corrupt_rows

    def _run(self) -> None:
        cfg = self.config
        Pending = tuple[float, list[str], list[int], list[int], int]
        pending: collections.deque[Pending] = collections.deque()
        records = iter(self.stream)
        interval = cfg.batch / cfg.rate
        next_send = next_report = time.monotonic()
        while not self.stop.is_set():
            now = time.monotonic()
            while pending and pending[0][0] <= now:
                self._label(*pending.popleft()[1:])
            if now >= next_send:
                batch = [next(records) for _ in range(cfg.batch)]
                status, body = self.client.post("/v1/predict", {"instances": [x for x, _ in batch]})
                if status != 200:
                    # No model yet (503), or the daemon is going away: wait and try again.
                    self.stop.wait(0.5)
                    next_send = time.monotonic()
                    continue
                first = self.stats.sent
                self.stats.sent += len(batch)
                labels = [y for _, y in batch]
                preds = [int(p) for p in body["predictions"]]
                due = now + cfg.label_delay_seconds
                pending.append((due, body["ids"], labels, preds, first))
                next_send += interval
            if self.report is not None and now >= next_report:
                next_report = now + self.report_every
                self.report(self.progress())
            wait = min(next_send, pending[0][0] if pending else next_send) - time.monotonic()
            self.stop.wait(max(0.0, min(wait, 0.1)))

    def _label(self, ids: list[str], labels: list[int], preds: list[int], first: int) -> None:
        sent = []
        for k, (rid, truth, p) in enumerate(zip(ids, labels, preds, strict=True)):
            index = first + k
            y = truth
            if self.corrupt(index):
                y = self._rng.randint(0, 1)
                self.stats.corrupted += 1
            sent.append({"id": rid, "label": y})
            # The served model's real accuracy: against the true label, not the corrupted one.
            seg = self.stats.segments.setdefault(index // self.config.segment, [0, 0])
            seg[0] += p == truth
            seg[1] += 1
            self.stats.correct += p == truth
        status, _ = self.client.post("/v1/labels", sent)
        if status == 200:
            self.stats.labelled += len(sent)

    def progress(self) -> str:
        live = self.parts.models.current
        metric, value = self.parts.engine.live_score
        score = "n/a" if value is None else f"{value:.3f}"
        concept = self.stream.concept_at(max(0, self.stats.sent - 1))
        version = f"v{live.version:06d}" if live else "none"
        return (
            f"demo: {self.stats.sent} records sent (concept {concept}),"
            f" {self.stats.labelled} labelled, model {version}, live {metric} {score}"
        )


_SCOPES = {"/v1/predict": "predict", "/v1/labels": "ingest"}  # the routes the demo posts to


class _Client:
    """A keep-alive JSON client for the daemon's own loopback port (standard library only).

    ``tokens`` maps a scope to the token the demo sends for it; ``cafile``, when the daemon
    serves TLS, is its own certificate, trusted for this loopback connection alone (the name
    in it need not be 127.0.0.1)."""

    def __init__(self, url: str, tokens: Mapping[str, str | None], cafile: str | None) -> None:
        parts = urllib.parse.urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.tokens = tokens
        self.tls: ssl.SSLContext | None = None
        if parts.scheme == "https":
            self.tls = ssl.create_default_context(cafile=cafile)
            self.tls.check_hostname = False
        self.conn: http.client.HTTPConnection | None = None

    def _headers(self, path: str) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        token = self.tokens.get(_SCOPES.get(path, ""))
        if token:
            headers["Authorization"] = f"Bearer {token}"
        return headers

    def _connect(self) -> http.client.HTTPConnection:
        if self.tls is not None:
            return http.client.HTTPSConnection(self.host, self.port, timeout=30, context=self.tls)
        return http.client.HTTPConnection(self.host, self.port, timeout=30)

    def post(self, path: str, payload: Any) -> tuple[int, Any]:
        """POST JSON; returns (status, decoded body), or (0, None) when the daemon is away."""
        body = json.dumps(payload).encode()
        for _ in range(2):  # one retry on a connection the server closed while idle
            if self.conn is None:
                self.conn = self._connect()
            try:
                self.conn.request("POST", path, body, self._headers(path))
                resp = self.conn.getresponse()
                data = resp.read()
            except (OSError, http.client.HTTPException):
                self.close()
                continue
            if resp.getheader("connection", "").lower() == "close":
                self.close()
            return resp.status, json.loads(data) if data else None
        return 0, None

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


_SHOWN = {
    "deploy": "deployed",
    "rollback": "rolled back",
    "drift_alarm": "DRIFT",
    "retrain_requested": "retrain asked",
    "retrain_finished": "retrain done",
    "model_load_failed": "load failed",
}


def _event_line(e: dict[str, Any]) -> str:
    kind = e["kind"]
    stamp = time.strftime("%H:%M:%S", time.localtime(e["time"]))
    if kind == "drift_alarm":
        what = f"{e.get('alarm')} at record {e.get('record_index')},"
        what += f" change point {e.get('change_point')}"
    elif kind == "deploy":
        what = f"v{e.get('version')} now serving ({e.get('reason')})"
    elif kind == "retrain_finished":
        verdict = e.get("verdict") or {}
        failed = [r["reason"] for r in verdict.get("rules", []) if not r["passed"]]
        what = f"{e.get('job')} ({', '.join(e.get('reasons', []))}): {e.get('outcome')}"
        if failed:
            what += f": {failed[0]}"
    elif kind == "retrain_requested":
        what = f"{e.get('reason')}: {e.get('outcome')}" + (
            f" ({e['skipped']})" if e.get("skipped") else ""
        )
    else:
        what = ", ".join(f"{k}={v}" for k, v in e.items() if k not in ("id", "time", "kind"))[:80]
    return f"{stamp} {_SHOWN.get(kind, kind):<14} {what}"


class LiveView:
    """A compact view redrawn in place on a terminal."""

    def __init__(self, source: DemoSource, out: TextIO = sys.stderr, every: float = 0.5) -> None:
        self.source = source
        self.out = out
        self.every = every
        self.stop = threading.Event()
        self._lines = 0
        self._thread = threading.Thread(target=self._run, name="driftd-view", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self.stop.set()
        self._thread.join(2)

    def _run(self) -> None:
        while not self.stop.wait(self.every):
            try:
                self.draw()
            except Exception:
                log.debug("live view redraw failed", exc_info=True)

    def render(self) -> list[str]:
        src, parts = self.source, self.source.parts
        stats = src.stats
        live = parts.models.current
        metric, value = parts.engine.live_score
        elapsed = time.monotonic() - src.started
        seg = src.config.segment
        into = stats.sent % seg
        bar = "#" * int(20 * into / seg) + "." * (20 - int(20 * into / seg))
        concept = src.stream.concept_at(max(0, stats.sent - 1))
        incident = " | LABELS CORRUPTED" if src.corrupt(max(0, stats.labelled)) else ""
        lines = [
            f"driftd demo  {elapsed:5.0f} s  {stats.sent:>7} records"
            f"  concept {concept} [{bar}]{incident}",
            f"  model {f'v{live.version}' if live else 'none':<6} live {metric} "
            + ("n/a" if value is None else f"{value:.3f}")
            + f"   labelled {stats.labelled}",
            "  recent events:",
        ]
        shown = [e.as_dict() for e in parts.store.events(limit=30) if e.kind in _SHOWN][:6]
        lines += [f"    {_event_line(e)}" for e in shown] or ["    (none yet)"]
        return lines

    def draw(self) -> None:
        lines = self.render()
        width = 110
        text = ""
        if self._lines:
            text += f"\x1b[{self._lines}F"
        text += "".join(f"\x1b[2K{line[:width]}\n" for line in lines)
        self.out.write(text)
        self.out.flush()
        self._lines = len(lines)


def summary(parts: Parts, source: DemoSource) -> str:
    """The table printed when the demo ends."""
    stats = source.stats
    finished = [e.as_dict() for e in parts.store.events(kind="retrain_finished", limit=1000)][::-1]
    alarms = parts.store.events(kind="drift_alarm", limit=1000)
    rollbacks = parts.store.events(kind="rollback", limit=1000)
    live = parts.models.current
    rows = [
        ("records sent / labelled", f"{stats.sent} / {stats.labelled}"),
        ("labels corrupted (incident)", str(stats.corrupted)),
        ("drift alarms", str(len(alarms))),
        ("retrains", str(len(finished))),
        ("serving model", f"v{live.version}" if live else "none"),
        ("rollbacks", str(len(rollbacks))),
    ]
    out = ["", "driftd demo summary", "-" * 64]
    out += [f"  {k:<30} {v}" for k, v in rows]
    out.append("")
    out.append(
        f"  {'job':<16} {'trigger':<14} {'outcome':<9} {'candidate':>9} {'champion':>9}  version"
    )
    for e in finished:
        scores = e.get("scores") or {}
        metric = (e.get("verdict") or {}).get("metric", "accuracy")
        cand = (scores.get("candidate") or {}).get(metric)
        champ = (scores.get("champion") or {}).get(metric)
        out.append(
            f"  {e.get('job', ''):<16} {','.join(e.get('reasons', [])):<14}"
            f" {e.get('outcome', ''):<9}"
            f" {_num(cand):>9} {_num(champ):>9}  {e.get('version', '')}"
        )
    out.append("")
    out.append(f"  {'segment':<8} {'concept':<8} {'served accuracy':>16}")
    for seg, (correct, n) in sorted(stats.segments.items()):
        concept = source.stream.concept_at(seg * source.config.segment)
        out.append(f"  {seg:<8} {concept:<8} {correct / n if n else 0:>16.3f}")
    return "\n".join(out)


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"
