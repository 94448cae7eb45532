"""The demo source: a drifting synthetic stream played into the daemon through the real path.

Each record is predicted by the serving model (``Engine.predict``, as ``POST /v1/predict``
does), and its true label is sent ``label_delay_seconds`` later (``Engine.add_labels``, as
``POST /v1/labels``). The stream switches concept every ``segment`` records, so the monitor
sees real drift.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from driftd.config import DemoConfig
from driftd.engine import Engine, NoModel
from driftd.streams import SyntheticStream

__all__ = ["DemoSource", "DemoStats"]

log = logging.getLogger(__name__)


@dataclass(slots=True)
class DemoStats:
    sent: int = 0
    labelled: int = 0
    correct: int = 0


class DemoSource:
    """Plays the configured stream at ``rate`` records/s until stopped."""

    def __init__(
        self,
        engine: Engine,
        config: DemoConfig,
        *,
        report: Callable[[str], None] | None = None,
        report_every: float = 5.0,
    ) -> None:
        self.engine = engine
        self.config = config
        self.stream = SyntheticStream(
            config.stream, tuple(config.concepts), config.segment, config.seed
        )
        self.stats = DemoStats()
        self.report = report or (lambda line: log.info("%s", line))
        self.report_every = report_every
        self.stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="driftd-demo", daemon=True)
        self._thread.start()

    def close(self, timeout: float = 5.0) -> None:
        """Stop sending and wait for the thread (called by the daemon before the engine closes)."""
        self.stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        cfg = self.config
        engine = self.engine
        pending: collections.deque[tuple[float, list[str], list[int], list[int]]] = (
            collections.deque()
        )
        records = iter(self.stream)
        interval = cfg.batch / cfg.rate
        next_send = next_report = time.monotonic()
        while not self.stop.is_set():
            now = time.monotonic()
            while pending and pending[0][0] <= now:
                _, ids, labels, preds = pending.popleft()
                engine.run(
                    engine.add_labels,
                    [{"id": i, "label": y} for i, y in zip(ids, labels, strict=True)],
                    time.time(),
                )
                self.stats.labelled += len(ids)
                self.stats.correct += sum(p == y for p, y in zip(preds, labels, strict=True))
            if now >= next_send:
                batch = [next(records) for _ in range(cfg.batch)]
                try:
                    result = engine.run(engine.predict, [x for x, _ in batch], None, time.time())
                except NoModel:
                    self.stop.wait(0.5)
                    next_send = time.monotonic()
                    continue
                self.stats.sent += len(batch)
                preds = [int(p) for p in result.predictions]
                pending.append(
                    (now + cfg.label_delay_seconds, result.ids, [y for _, y in batch], preds)
                )
                next_send += interval
            if now >= next_report:
                next_report = now + self.report_every
                self.report(self.progress())
            wait = min(next_send, pending[0][0] if pending else next_send) - time.monotonic()
            self.stop.wait(max(0.0, min(wait, 0.1)))

    def progress(self) -> str:
        live = self.engine.serving.current
        metric, value = self.engine.monitor.live_score
        score = "n/a" if value is None else f"{value:.3f}"
        concept = self.stream.concept_at(max(0, self.stats.sent - 1))
        return (
            f"demo: {self.stats.sent} records sent (concept {concept}),"
            f" {self.stats.labelled} labelled, model {f'v{live.version:06d}' if live else 'none'},"
            f" live {metric} {score}"
        )
