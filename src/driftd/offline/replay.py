"""Replay: the daemon's own monitor, trigger policy, training, gate and swap over a history file.

A history file (CSV, JSON lines, Parquet with pyarrow) is played through a real
:class:`~driftd.service.engine.Engine` and :class:`~driftd.retrain.retrainer.Retrainer` in a
temporary state directory, with a simulated clock driven by the records' timestamps. Every
record is predicted by the serving model through ``Engine.predict`` (stored and monitored
exactly as live traffic), its label is delivered through ``Engine.add_labels`` after the label
delay, and the retrainer is polled as simulated time advances; a job it returns is run at once,
synchronously, so a replay is a deterministic function of the file, the config and the seed.

What differs from a live daemon (see docs/replay.md): training takes no simulated time, records
arrive in micro-batches of ``batch`` records that share the batch's last timestamp, the guard's
rollback runs in the replay loop rather than on a thread of its own, and nothing is
checkpointed. It never touches the configured state directory.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import heapq
import logging
import math
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from driftd._imports import import_object
from driftd.config import Config
from driftd.ingest.history import HistoryError, parse_number, read_history
from driftd.ingest.schema import Label, LabelRecord, Schema
from driftd.metrics import Metrics
from driftd.retrain.fit import fit_and_dump
from driftd.retrain.retrainer import Fit
from driftd.retrain.schedule import Schedule, make_trigger
from driftd.retrain.worker import fit_isolated
from driftd.service.parts import assemble
from driftd.store import Event

__all__ = [
    "FORMAT",
    "Progress",
    "ReplayOptions",
    "SimClock",
    "false_alarms",
    "load_history",
    "replay",
]

log = logging.getLogger(__name__)

#: Version of the JSON document :func:`replay` returns; bumped on an incompatible change.
FORMAT = 1


# -- the pieces --------------------------------------------------------------------------------
class SimClock:
    """A clock that only moves when told to, and never backwards.

    >>> clock = SimClock(10.0)
    >>> clock.advance(12.5); clock()
    12.5
    >>> clock.advance(11.0); clock()
    12.5
    """

    def __init__(self, start: float = 0.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, to: float) -> None:
        self.now = max(self.now, to)


class Progress:
    """A one-line progress bar on a terminal (``\\r``-redrawn, at most 5 times a second)."""

    def __init__(self, total: int, stream: TextIO | None = None, *, enabled: bool | None = None):
        self.total = max(1, total)
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self.start = self._last = time.monotonic()

    def update(self, done: int, note: str = "") -> None:
        now = time.monotonic()
        if not self.enabled or (now - self._last < 0.2 and done < self.total):
            return
        self._last = now
        frac = min(1.0, done / self.total)
        bar = "#" * int(30 * frac)
        rate = done / max(now - self.start, 1e-9)
        self.stream.write(
            f"\rreplay [{bar:<30}] {done}/{self.total} {frac:4.0%} {rate:,.0f} rec/s {note}\x1b[K"
        )
        self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self.stream.write("\n")
            self.stream.flush()


@dataclass(frozen=True, slots=True)
class ReplayOptions:
    """How to play a file. ``label_lag`` and ``label_delay_column`` are exclusive.

    Attributes
    ----------
    seed
        When set: the monitor's seed, the synthetic bootstrap's seed and the estimator's
        ``random_state``. When None the config's seeds are used (and an estimator that takes a
        ``random_state`` and has none configured gets 0, so a replay is repeatable anyway).
    label_lag
        Seconds of simulated time between a record and its label (default 0: at once).
    label_delay_column
        A column holding each row's label delay in seconds (empty: never labelled).
    inline
        Fit in this process (default) instead of a spawned child per retrain.
    drift_points, drift_column
        Known change points (0-based record indices); otherwise read from ``drift_column``
        (1 at a change point) when the file has it.
    detection_delay
        Records after a true change point within which an alarm counts as detecting it.
    rate
        Records per simulated second when the file has no timestamps (first record at 0).
    batch
        Records per ``Engine.predict`` call (the demo source sends 20).
    samples
        About how many points of the score and detector series to keep for the report.
    progress
        Draw a progress bar on stderr; None: when stderr is a terminal.
    """

    seed: int | None = None
    label_lag: float | None = None
    label_delay_column: str | None = None
    inline: bool = True
    drift_points: tuple[int, ...] | None = None
    drift_column: str = "drift"
    detection_delay: int = 2000
    rate: float = 1.0
    batch: int = 20
    samples: int = 600
    progress: bool | None = None


@dataclass(frozen=True, slots=True)
class _Item:
    """One row of the file as the replay uses it."""

    line: int
    time: float
    features: dict[str, float | str]
    label: Label | None
    delay: float | None  # None: never delivered


# -- reading the file --------------------------------------------------------------------------
def load_history(
    path: Path, schema: Schema, options: ReplayOptions
) -> tuple[list[_Item], list[int] | None, str]:
    """Read and validate the whole file: its rows, its true drift points, how time is kept.

    Raises :class:`~driftd.ingest.history.HistoryError` naming the line and column of the first
    problem.
    """
    rows = list(read_history(path, schema))
    if not rows:
        raise HistoryError(f"{path}: no records")
    ts_col = schema.timestamp_field
    with_ts = [r for r in rows if r.timestamp is not None]
    if with_ts and len(with_ts) < len(rows):
        bad = next(r for r in rows if r.timestamp is None)
        raise HistoryError(
            f"{path}: line {bad.line}, column {ts_col!r}: missing value"
            " (every row needs a timestamp once one has it)"
        )
    clock = "file" if with_ts else "rate"
    items: list[_Item] = []
    drift: list[int] = []
    has_drift = False
    col = options.label_delay_column
    for i, r in enumerate(rows):
        when = r.timestamp if r.timestamp is not None else i / options.rate
        delay: float | None = options.label_lag or 0.0
        if col is not None:
            if col not in r.extra:
                raise HistoryError(f"{path}: line {r.line}, column {col!r}: missing column")
            delay = _number_or_none(r.extra[col], path, r.line, col)
            if delay is not None and delay < 0:
                raise HistoryError(
                    f"{path}: line {r.line}, column {col!r}: expected a delay >= 0, got {delay}"
                )
        if r.label is None:
            delay = None
        if options.drift_column in r.extra:
            has_drift = True
            mark = _number_or_none(
                r.extra[options.drift_column], path, r.line, options.drift_column
            )
            if mark not in (None, 0.0, 1.0):
                raise HistoryError(
                    f"{path}: line {r.line}, column {options.drift_column!r}:"
                    f" expected 0 or 1, got {r.extra[options.drift_column]!r}"
                )
            if mark == 1.0:
                drift.append(i)
        items.append(_Item(r.line, float(when), r.features, r.label, delay))
    points = (
        sorted(options.drift_points)
        if options.drift_points is not None
        else (drift if has_drift else None)
    )
    return items, points, clock


def _number_or_none(raw: Any, path: Path, line: int, column: str) -> float | None:
    if raw in ("", None):
        return None
    try:
        return parse_number(raw, line=line, column=column)
    except ValueError as exc:
        raise HistoryError(f"{path}: {exc}") from None


# -- pure helpers ------------------------------------------------------------------------------
def false_alarms(
    alarms: Sequence[int], points: Sequence[int], delay: int
) -> tuple[list[int], list[dict[str, int | None]]]:
    """Split alarm indices into false alarms and per-point detections.

    An alarm is *true* when it falls within ``delay`` records after a true change point
    (``point <= alarm <= point + delay``); every other alarm is false. A point is detected by
    the first alarm in its window.

    >>> false, found = false_alarms([50, 1020, 1400, 3100], [1000, 3000], delay=500)
    >>> false
    [50]
    >>> found[1]
    {'point': 3000, 'alarm': 3100, 'delay': 100}
    """
    false = [a for a in alarms if not any(p <= a <= p + delay for p in points)]
    found: list[dict[str, int | None]] = []
    for p in points:
        hit = next((a for a in sorted(alarms) if p <= a <= p + delay), None)
        found.append({"point": p, "alarm": hit, "delay": None if hit is None else hit - p})
    return false, found


def _replay_config(config: Config, seed: int | None) -> Config:
    """The config with the replay's seed in the monitor, the bootstrap and the estimator."""
    changes: dict[str, Any] = {}
    if seed is not None:
        changes["monitor"] = dataclasses.replace(config.monitor, seed=seed)
        changes["bootstrap"] = dataclasses.replace(config.bootstrap, seed=seed)
    model = config.model
    if model.factory is None and (seed is not None or "random_state" not in model.params):
        try:
            takes_seed = "random_state" in import_object(model.estimator)().get_params()
        except (TypeError, ValueError, AttributeError):
            takes_seed = False
        if takes_seed:
            state_seed = seed if seed is not None else 0
            changes["model"] = dataclasses.replace(
                model, params={**model.params, "random_state": state_seed}
            )
    return dataclasses.replace(config, **changes)


# -- the run -----------------------------------------------------------------------------------
def replay(
    path: Path,
    config: Config,
    options: ReplayOptions | None = None,
    *,
    progress_stream: TextIO | None = None,
) -> dict[str, Any]:
    """Replay ``path`` under ``config``; return the result document (see docs/replay.md).

    Raises :class:`~driftd.ingest.history.HistoryError` for a bad file and ``RuntimeError`` when the
    first model cannot be made.
    """
    options = options or ReplayOptions()
    if options.label_lag is not None and options.label_delay_column is not None:
        raise ValueError("label_lag and label_delay_column are exclusive")
    items, points, clock_kind = load_history(path, config.schema_obj(), options)
    wall = time.monotonic()
    cfg = _replay_config(config, options.seed)
    # The state lives in a directory of its own: a replay never writes into a daemon's state
    # (``$STATE_DIRECTORY`` and ``[state] dir`` are not read).
    with tempfile.TemporaryDirectory(prefix="driftd-replay-") as tmp:
        session = _Session(cfg, Path(tmp) / "state", items, options)
        try:
            bar = Progress(len(items), progress_stream, enabled=options.progress)
            try:
                session.play(bar)
            finally:
                bar.close()
            result = session.result(path, points, clock_kind)
        finally:
            session.parts.close()
    result["wall_clock"]["seconds"] = round(time.monotonic() - wall, 3)
    return result


class _Session:
    """One replay: the daemon's parts on a simulated clock, and what the loop saw."""

    def __init__(
        self, cfg: Config, state: Path, items: list[_Item], options: ReplayOptions
    ) -> None:
        self.cfg = cfg
        self.items = items
        self.options = options
        self.clock = SimClock(items[0].time)
        fit: Fit = (
            fit_and_dump
            if options.inline
            else functools.partial(fit_isolated, timeout=cfg.training.timeout_seconds)
        )
        # The guard's rollbacks wait here and run right after the label batch that failed the
        # guard, so that their position in the stream is the same on every run.
        self.rollbacks: list[Callable[[], None]] = []
        self.parts = assemble(
            cfg,
            Metrics(process=False),
            state_dir=state,
            fit=fit,
            clock=self.clock,
            defer=self.rollbacks.append,
        )
        self.engine = self.parts.engine
        self.retrainer = self.parts.retrainer
        self.labels: list[tuple[float, int, Label]] = []  # heap: (due time, record, label)
        self.position = 0  # records stored so far
        self.last_event = 0
        self.events: list[tuple[Event, int]] = []  # (event, position when it was seen)
        self.versions: list[int] = []  # serving version per record (0: none)
        self.outcome: list[float] = []  # 1/0 or |error| per record, NaN without a label
        self.samples: list[dict[str, Any]] = []
        self.jobs: list[dict[str, Any]] = []

    # -- the loop ------------------------------------------------------------------------------
    def play(self, bar: Progress) -> None:
        engine, items, cfg = self.engine, self.items, self.cfg
        start = self.bootstrap() if self.parts.models.current is None else 0
        now = self.clock()
        schedule = Schedule(make_trigger(cfg.retrain, now=now, timezone=UTC), start=now)
        step = max(1, len(items) // max(1, self.options.samples))
        next_sample = start
        trim_rows = cfg.store.retention_rows
        i = start
        while i < len(items):
            batch = items[i : i + self.options.batch]
            now = batch[-1].time
            self.deliver(now)
            self.clock.advance(now)
            ids = [f"r{i + k}" for k in range(len(batch))]
            result = engine.run(engine.predict, [it.features for it in batch], ids, now)
            for k, (it, pred) in enumerate(zip(batch, result.predictions, strict=True)):
                self.versions.append(result.version)
                self.outcome.append(_outcome(engine.schema.task, pred, it.label))
                if it.delay is not None and it.label is not None:
                    heapq.heappush(self.labels, (it.time + it.delay, i + k, it.label))
            i += len(batch)
            self.position = i
            if i >= next_sample:  # before a deploy can reset the detectors
                next_sample = i + step
                self.sample()
            if schedule.due(now):
                self.retrainer.request("schedule")
            self.poll()
            if cfg.store.retention_seconds is not None or (trim_rows is not None and i > trim_rows):
                engine.trim()
            live = self.parts.models.current
            bar.update(i, f"model v{live.version}" if live else "")
        # The stream is over: deliver what is still due so its detections count; no new retrain.
        self.deliver(math.inf)
        self.fetch()
        self.sample()

    def bootstrap(self) -> int:
        """Make the first model: from the config's bootstrap source, or (with none configured)
        from the file's first ``bootstrap.min_rows`` labelled rows, stored as records (as a live
        daemon receives them on ``POST /v1/records``). Returns the first record to predict."""
        engine, items, cfg = self.engine, self.items, self.cfg
        bootstrap = self.parts.bootstrap
        start = 0
        if bootstrap.from_traffic:
            while start < len(items) and not bootstrap.due():
                need = cfg.bootstrap.min_rows - self.parts.store.labelled_count()
                taken: list[_Item] = []
                for it in items[start : start + 500]:
                    taken.append(it)
                    need -= it.label is not None
                    if need <= 0:
                        break
                self.clock.advance(taken[-1].time)
                records: list[Any] = [
                    {
                        "id": f"r{start + k}",
                        "timestamp": it.time,
                        "features": it.features,
                        **({"label": it.label} if it.label is not None else {}),
                    }
                    for k, it in enumerate(taken)
                ]
                engine.run(engine.add_records, records, "replay", self.clock())
                start += len(taken)
                self.versions.extend([0] * len(taken))
                self.outcome.extend([math.nan] * len(taken))
            self.position = start
            if not bootstrap.due():
                raise RuntimeError(
                    f"the file has fewer than bootstrap.min_rows = {cfg.bootstrap.min_rows}"
                    " labelled rows to train the first model on"
                )
        outcome = bootstrap.run()
        self.fetch()
        if outcome != "deployed":
            raise RuntimeError(f"bootstrap failed: {bootstrap.error}")
        return start

    def deliver(self, until: float) -> None:
        """Deliver every label due by ``until``, in due order, as one ``add_labels`` call."""
        due: list[LabelRecord] = []
        last = self.clock()
        while self.labels and self.labels[0][0] <= until:
            when, index, label = heapq.heappop(self.labels)
            due.append({"id": f"r{index}", "label": label, "timestamp": when})
            last = when
        if not due:
            return
        self.clock.advance(last)
        guarded = self.retrainer.guard is not None
        self.engine.run(self.engine.add_labels, due, self.clock())
        rolled_back = len(self.rollbacks)
        while self.rollbacks:
            self.rollbacks.pop(0)()
        if rolled_back or (guarded and self.retrainer.guard is None):
            self.fetch()  # tag the guard's verdict with this position, before the next batch

    def poll(self) -> None:
        """Poll like the daemon's tick; run the job it returns at once, synchronously."""
        while (job := self.retrainer.poll()) is not None:
            self.jobs.append({"job": job.id, "index": self.position, "time": self.clock()})
            self.retrainer.run(job)
        self.fetch()

    def fetch(self) -> None:
        """Collect the events stored since the last fetch, tagged with the current position."""
        fresh: list[Event] = []
        before: int | None = None
        while True:
            page = self.parts.store.events(before=before, limit=1000)
            new = [e for e in page if e.id > self.last_event]
            fresh.extend(new)
            if len(new) < len(page) or not page:
                break
            before = page[-1].id
        if fresh:
            self.last_event = max(e.id for e in fresh)
            self.events.extend((e, self.position) for e in sorted(fresh, key=lambda e: e.id))

    def sample(self) -> None:
        _, live = self.engine.live_score
        estimated = self.engine.estimated_scores.get("accuracy")
        self.samples.append(
            {
                "index": self.position - 1,
                "live_score": live,
                "estimated": None if estimated is None else estimated.value,
                "detectors": {
                    (f"{s.signal}:{s.feature}" if s.feature else s.signal): _finite(s.estimate)
                    for s in self.engine.detector_states()
                },
            }
        )

    # -- the result document -------------------------------------------------------------------
    def result(self, path: Path, points: list[int] | None, clock_kind: str) -> dict[str, Any]:
        cfg, items, options, engine = self.cfg, self.items, self.options, self.engine
        schema = engine.schema
        summary = _summarise(self.events, items)
        retrains = [_retrain(job, summary.finished.get(job["job"], {})) for job in self.jobs]
        drift: dict[str, Any] | None = None
        if points is not None:
            alarms = [a["index"] for a in summary.alarms]
            false, found = false_alarms(alarms, points, options.detection_delay)
            drift = {
                "source": "option" if options.drift_points is not None else options.drift_column,
                "points": points,
                "detection_delay": options.detection_delay,
                "detected": found,
                "missed": [f["point"] for f in found if f["alarm"] is None],
                "false_alarms": len(false),
                "false_alarm_indices": false,
            }
        metric = schema.live_metric
        return {
            "format": FORMAT,
            "input": {
                "file": path.name,
                "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
                "records": len(items),
                "labelled": sum(it.label is not None for it in items),
                "clock": clock_kind,
                "start_time": items[0].time,
                "end_time": items[-1].time,
            },
            "config": {
                "source": Path(cfg.file).name,
                "task": schema.task,
                "metric": cfg.model.metric,
                "estimator": cfg.model.factory or cfg.model.estimator,
                "params": cfg.model.params,
            },
            "options": {
                "seed": options.seed,
                "label_lag": None if options.label_delay_column else (options.label_lag or 0.0),
                "label_delay_column": options.label_delay_column,
                "inline": options.inline,
                "batch": options.batch,
                "rate": options.rate if clock_kind == "rate" else None,
            },
            "bootstrap": summary.bootstrap,
            "score": _score(metric, self.versions, self.outcome),
            "detections": summary.detections,
            "warnings": summary.warnings,
            "alarms": summary.alarms,
            "drift": drift,
            "requests": summary.requests,
            "retrains": retrains,
            "deploys": summary.deploys,
            "rollbacks": summary.rollbacks,
            "guards": summary.guards,
            "series": _series(self.samples, self.outcome, cfg.monitor.live_window, items),
            "final": {
                "version": live.version if (live := self.parts.models.current) else None,
                "store": dict(self.parts.store.counts()),
            },
            "wall_clock": {"retrains": summary.wall},
        }


def _outcome(task: str, prediction: Label, label: Label | None) -> float:
    if label is None:
        return math.nan
    if task == "classification":
        return 1.0 if prediction == label else 0.0
    return abs(float(prediction) - float(label))


def _finite(value: Any) -> float | None:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


# -- the result document's parts ---------------------------------------------------------------
_WALL_KEYS = ("seconds", "fit_seconds", "stages")


@dataclass(slots=True)
class _Summary:
    detections: list[dict[str, Any]] = field(default_factory=list)
    alarms: list[dict[str, Any]] = field(default_factory=list)
    warnings: int = 0
    requests: list[dict[str, Any]] = field(default_factory=list)
    deploys: list[dict[str, Any]] = field(default_factory=list)
    rollbacks: list[dict[str, Any]] = field(default_factory=list)
    guards: list[dict[str, Any]] = field(default_factory=list)
    finished: dict[str, dict[str, Any]] = field(default_factory=dict)
    bootstrap: dict[str, Any] | None = None
    wall: dict[str, dict[str, Any]] = field(default_factory=dict)


def _summarise(events: list[tuple[Event, int]], items: list[_Item]) -> _Summary:
    """The store's audit log, turned into the document's lists. Store indices are 1-based
    record numbers; the document uses 0-based positions in the file (``index``)."""
    out = _Summary()
    for event, position in events:
        d = event.data
        if event.kind in ("drift_detection", "drift_alarm"):
            i = int(d["index"]) - 1
            entry = {
                "index": i,
                "line": items[i].line if 0 <= i < len(items) else None,
                "time": d["time"],
                "signal": d["signal"],
                "feature": d["feature"],
                "change_point": int(d["change_point"]) - 1,
            }
            stats = d.get("stats") or {}
            if event.kind == "drift_alarm":
                out.alarms.append({**entry, "kind": d["alarm"], "features": stats.get("features")})
            else:
                out.detections.append({**entry, "detector": stats.get("detector")})
        elif event.kind == "drift_warning":
            out.warnings += 1
        elif event.kind == "retrain_requested":
            out.requests.append(
                {
                    "index": position,
                    "time": event.ts,
                    "reason": d["reason"],
                    "outcome": d["outcome"],
                    "job": d.get("job"),
                    "skipped": d.get("skipped"),
                }
            )
        elif event.kind == "retrain_finished":
            wall = out.wall.setdefault(d["job"], {k: d[k] for k in _WALL_KEYS if k in d})
            record = {k: v for k, v in d.items() if k not in (*_WALL_KEYS, "logs", "traceback")}
            record = _strip_latency(record, wall)
            if "pool" in record:  # each candidate's fit time is wall-clock too
                wall["pool"] = {c["name"]: c.get("seconds") for c in record["pool"]}
                record["pool"] = [
                    {k: v for k, v in c.items() if k != "seconds"} for c in record["pool"]
                ]
            if "window" in record:
                record["window"] = _window(record["window"])
            if "bootstrap" in d.get("reasons", []):
                out.bootstrap = {"index": position, "time": event.ts, **record}
            else:
                out.finished[d["job"]] = record
        elif event.kind in ("deploy", "rollback"):
            entry = {"index": position, "time": event.ts, **d}
            (out.deploys if event.kind == "deploy" else out.rollbacks).append(entry)
        elif event.kind in ("guard_passed", "guard_failed"):
            out.guards.append(
                {"index": position, "time": event.ts, "passed": event.kind == "guard_passed", **d}
            )
    return out


def _retrain(job: dict[str, Any], done: dict[str, Any]) -> dict[str, Any]:
    return {
        "job": job["job"],
        "triggers": done.get("reasons", []),
        "index": job["index"],
        "time": job["time"],
        "outcome": done.get("outcome"),
        "rows": done.get("rows"),
        "window": done.get("window", {}),
        "verdict": done.get("verdict"),
        "scores": done.get("scores"),
        "version": done.get("version"),
        **{k: done[k] for k in ("pool", "chosen", "skipped", "error") if k in done},
    }


def _window(window: Any) -> dict[str, Any]:
    """A training window with its store indices turned into 0-based record positions."""
    out = dict(window or {})
    for key in ("first_index", "last_index", "since_drift_point"):
        if isinstance(out.get(key), int):
            out[key] -= 1
    return out


def _strip_latency(record: dict[str, Any], wall: dict[str, Any]) -> dict[str, Any]:
    """Move the measured warm-up latency out of the verdict (it is wall-clock, not replayable)."""
    verdict = record.get("verdict")
    if not isinstance(verdict, dict):
        return record
    rules = []
    for rule in verdict.get("rules", []):
        if rule.get("rule") == "latency":
            wall["latency"] = rule.get("reason")
            passed = rule.get("passed")
            rules.append({**rule, "reason": "within the limit" if passed else "too slow"})
        else:
            rules.append(rule)
    return {**record, "verdict": {**verdict, "rules": rules}}


def _score(metric: str, versions: list[int], outcome: list[float]) -> dict[str, Any]:
    """Prequential score overall and per serving segment (between deploys and rollbacks)."""
    values = np.asarray(outcome, dtype=np.float64)
    segments: list[dict[str, Any]] = []
    start = 0
    for i in range(1, len(versions) + 1):
        if i < len(versions) and versions[i] == versions[start]:
            continue
        part = values[start:i]
        scored = part[~np.isnan(part)]
        if versions[start]:
            segments.append(
                {
                    "version": versions[start],
                    "first_index": start,
                    "last_index": i - 1,
                    "records": i - start,
                    "scored": int(scored.size),
                    "score": float(scored.mean()) if scored.size else None,
                }
            )
        start = i
    scored_all = values[~np.isnan(values)]
    return {
        "metric": metric,
        "overall": float(scored_all.mean()) if scored_all.size else None,
        "scored": int(scored_all.size),
        "segments": segments,
    }


def _series(
    samples: list[dict[str, Any]], outcome: list[float], window: int, items: list[_Item]
) -> dict[str, Any]:
    """The sampled series for the report: rolling prequential score, live score, detectors."""
    values = np.asarray(outcome, dtype=np.float64)
    ok = ~np.isnan(values)
    csum = np.concatenate([[0.0], np.cumsum(np.where(ok, values, 0.0))])
    ccount = np.concatenate([[0], np.cumsum(ok)])
    index: list[int] = []
    rolling: list[float | None] = []
    live: list[float | None] = []
    estimated: list[float | None] = []
    detectors: dict[str, list[float | None]] = {}
    for s in samples:
        i = s["index"]
        if i < 0 or (index and i == index[-1]):
            continue
        lo = max(0, i + 1 - window)
        count = int(ccount[i + 1] - ccount[lo])
        index.append(i)
        rolling.append(float((csum[i + 1] - csum[lo]) / count) if count else None)
        live.append(s["live_score"])
        estimated.append(s.get("estimated"))
        for key, value in s["detectors"].items():
            detectors.setdefault(key, []).append(value)
    return {
        "index": index,
        "time": [items[i].time for i in index],
        "window": window,
        "prequential": rolling,
        "live_score": live,
        "estimated": estimated,
        "estimate_error": _estimate_error(estimated, rolling),
        "detectors": detectors,
    }


def _estimate_error(
    estimated: list[float | None], realized: list[float | None]
) -> dict[str, float | int | None]:
    """How far the accuracy estimated from probabilities (before labels) was from the realized
    accuracy of the same window of predictions: mean and largest absolute error, over the
    samples where both exist."""
    gaps = [
        abs(e - r)
        for e, r in zip(estimated, realized, strict=True)
        if e is not None and r is not None
    ]
    return {
        "mae": float(np.mean(gaps)) if gaps else None,
        "max": float(np.max(gaps)) if gaps else None,
        "samples": len(gaps),
    }
