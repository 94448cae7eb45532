"""Crash safety and long-run stability of the daemon as a process.

The crash matrix kills a real daemon with SIGKILL at seeded random instants while client threads
ingest records, send labels before and after their records, predict, ask for retrains (each one
ends in a candidate publish and an alias replacement) and roll back, with the detector
checkpoint written every 0.1 s. After every kill it checks, with the process dead and again
after a restart, that nothing acknowledged was lost or doubled, that the SQLite file is intact,
that the champion loads and is served without fallback, that no temporary file survives the
restart, that the monitor resumed from its checkpoint, and that the restart sets off no burst
of retrains. ``DRIFTD_CRASH_KILLS`` sets the number of kills of the default run (6: each kind of
instant once; the slow run kills four times each, and ``benchmarks/crash_matrix.py`` 100 times).

The short soak plays the Agrawal stream through the daemon with retention set and holds memory,
file descriptors and the store's size to their bounds (the long soak is ``benchmarks/soak.py``).
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import json
import os
import random
import signal
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from driftd.models.registry import Registry
from tests.conftest import DaemonProcess, config_text, make_rows, write_csv

SEED = int(os.environ.get("DRIFTD_CRASH_SEED", "20240611"))

#: How each kill picks its instant. ``uniform``: a random delay into the traffic; the others
#: wait for a phase to begin (seen from outside, as an operator would) and kill a random few
#: milliseconds into it, so that the short windows are hit in every run, not by luck.
MODES = ("uniform", "training", "publish", "alias", "checkpoint", "rollback")
#: Kills in the default run: each kind of instant once; the slow matrix runs four of each.
KILLS = int(os.environ.get("DRIFTD_CRASH_KILLS", str(len(MODES))))

#: A restart may start at most the one job that was waiting; this long after it is ready.
QUIET_SECONDS = 1.0


@dataclass(slots=True)
class Kill:
    """One kill: how its instant was chosen, what was happening then, and what broke."""

    round: int
    mode: str
    delay: float
    restart_seconds: float = 0.0
    tags: set[str] = field(default_factory=set)
    problems: list[str] = field(default_factory=list)

    @property
    def survived(self) -> bool:
        return not self.problems


@dataclass(slots=True)
class Report:
    kills: list[Kill]
    records: int
    labels: int
    retrains_started: int
    deploys: int
    rollbacks: int
    failed_requests: list[str]
    seconds: float

    @property
    def survived(self) -> int:
        return sum(k.survived for k in self.kills)

    def tag_counts(self) -> dict[str, int]:
        counts: collections.Counter[str] = collections.Counter()
        for k in self.kills:
            counts.update(k.tags)
        return dict(sorted(counts.items()))

    def text(self) -> str:
        modes = collections.Counter(k.mode for k in self.kills)
        restarts = sorted(k.restart_seconds for k in self.kills) or [0.0]
        lines = [
            f"kills survived / run: {self.survived} / {len(self.kills)} in {self.seconds:.0f} s",
            f"restart to ready: median {restarts[len(restarts) // 2]:.1f} s,"
            f" max {restarts[-1]:.1f} s",
            f"kill modes: {dict(sorted(modes.items()))}",
            "instants hit (a kill can be in several):",
            *(f"  {tag}: {n}" for tag, n in self.tag_counts().items()),
            f"acknowledged: {self.records} records, {self.labels} labels;"
            f" retrains started {self.retrains_started}, deploys {self.deploys},"
            f" rollbacks {self.rollbacks}; failed requests {len(self.failed_requests)}",
        ]
        lines += [
            f"  round {k.round} ({k.mode}, {sorted(k.tags)}): {k.problems}"
            for k in self.kills
            if k.problems
        ]
        lines += [f"  failed request: {f}" for f in self.failed_requests[:10]]
        return "\n".join(lines)


def training_children(pid: int) -> list[int]:
    """The daemon's spawned training processes (not multiprocessing's helpers)."""
    out = []
    with contextlib.suppress(FileNotFoundError, ProcessLookupError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(FileNotFoundError, ProcessLookupError):
                for child in (task / "children").read_text().split():
                    with contextlib.suppress(FileNotFoundError, ProcessLookupError):
                        if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes():
                            out.append(int(child))
    return out


def temp_files(root: Path, *, recursive: bool = False) -> list[str]:
    """Names of ``.tmp-*`` entries (interrupted atomic writes) under ``root``."""
    if not root.exists():
        return []
    entries = root.rglob(".tmp-*") if recursive else root.glob(".tmp-*")
    return sorted(str(p.relative_to(root)) for p in entries)


@contextlib.contextmanager
def read_only(db: Path) -> Iterator[sqlite3.Connection]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        yield conn
    finally:
        conn.close()


class Traffic:
    """Client threads for one daemon run; every id is explicit and unique to the run."""

    def __init__(self, url: str, run: int, ledger: Ledger, rng: random.Random) -> None:
        self.url = url
        self.run = run
        self.ledger = ledger
        self.stop = threading.Event()
        self.retrains = threading.Event()  # set after the quiet window
        self.inflight: collections.Counter[str] = collections.Counter()
        self.lock = threading.Lock()
        self.seed = rng.randrange(1 << 30)
        self.threads = [
            threading.Thread(target=self._guard, args=(fn,), daemon=True)
            for fn in (self._ingest, self._predict, self._control)
        ]

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def join(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(30)

    def busy(self) -> set[str]:
        with self.lock:
            return {f"request:{k}" for k, n in self.inflight.items() if n}

    def _post(self, c: httpx.Client, kind: str, path: str, **kw: Any) -> httpx.Response:
        with self.lock:
            self.inflight[kind] += 1
        try:
            return c.post(path, **kw)
        finally:
            with self.lock:
                self.inflight[kind] -= 1

    def _guard(self, fn: Callable[[httpx.Client], None]) -> None:
        with httpx.Client(base_url=self.url, timeout=60) as c:
            _quietly(fn, c)

    def _labels(self, c: httpx.Client, labels: dict[str, int]) -> None:
        if not labels:
            return
        body = [{"id": k, "label": v} for k, v in labels.items()]
        r = self._post(c, "labels", "/v1/labels", json=body)
        if r.status_code != 200:
            self.ledger.failed.append(f"labels {r.status_code}: {r.text[:200]}")
            return
        dup = set(r.json()["duplicates"])
        self.ledger.add_labels({k: v for k, v in labels.items() if k not in dup})

    def _ingest(self, c: httpx.Client) -> None:
        """Records in batches; a third carry their label, a third get it before the record
        arrives (it waits in pending_labels), a third after."""
        rng = random.Random(self.seed)
        batch_no = 0

        def batch(b: int) -> list[dict[str, Any]]:
            rows = make_rows(40, seed=self.seed + b)
            return [{**r, "id": f"r{self.run}-{b}-{i}"} for i, r in enumerate(rows)]

        nxt = batch(0)
        while not self.stop.is_set():
            cur, nxt = nxt, batch(batch_no + 1)
            # Labels for the next batch's records, before those records exist.
            self._labels(c, {r["id"]: r["label"] for i, r in enumerate(nxt) if i % 3 == 1})
            body = [
                r if i % 3 == 0 else {"id": r["id"], "features": r["features"]}
                for i, r in enumerate(cur)
            ]
            r = self._post(c, "records", "/v1/records", json=body)
            if r.status_code != 200:
                self.ledger.failed.append(f"records {r.status_code}: {r.text[:200]}")
                continue
            dup = set(r.json()["duplicates"])
            self.ledger.add_records([x["id"] for x in cur if x["id"] not in dup])
            self.ledger.add_labels(
                {x["id"]: x["label"] for i, x in enumerate(cur) if i % 3 == 0}, inline=True
            )
            self._labels(c, {x["id"]: x["label"] for i, x in enumerate(cur) if i % 3 == 2})
            batch_no += 1
            time.sleep(rng.uniform(0, 0.02))

    def _predict(self, c: httpx.Client) -> None:
        b = 0
        while not self.stop.is_set():
            rows = make_rows(20, seed=self.seed + 100_000 + b)
            ids = [f"p{self.run}-{b}-{i}" for i in range(len(rows))]
            r = self._post(
                c,
                "predict",
                "/v1/predict",
                json={"instances": [x["features"] for x in rows], "ids": ids},
            )
            if r.status_code != 200:
                self.ledger.failed.append(f"predict {r.status_code}: {r.text[:200]}")
                continue
            self.ledger.add_records(ids)
            self._labels(c, {k: x["label"] for k, x in zip(ids, rows, strict=True)})
            b += 1

    def _control(self, c: httpx.Client) -> None:
        """Operator retrains back to back (cooldown 0), and now and then a rollback."""
        rng = random.Random(self.seed + 7)
        while not self.stop.is_set():
            if not self.retrains.wait(0.05):
                continue
            if rng.random() < 0.25:
                self.rollback(c)
            else:
                r = self._post(c, "retrain", "/v1/retrain")
                if r.status_code != 202:
                    self.ledger.failed.append(f"retrain {r.status_code}: {r.text[:200]}")
            self.stop.wait(rng.uniform(0.2, 0.6))

    def rollback(self, c: httpx.Client) -> None:
        r = self._post(c, "rollback", "/v1/rollback")
        if r.status_code == 200:
            self.ledger.rollbacks += 1
        elif r.status_code != 409:  # nothing to roll back to is a refusal, not a failure
            self.ledger.failed.append(f"rollback {r.status_code}: {r.text[:200]}")


class Ledger:
    """What the daemon acknowledged, over every run."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.records: set[str] = set()
        self.labels: dict[str, int] = {}
        self.inline: set[str] = set()
        self.failed: list[str] = []
        self.rollbacks = 0

    def add_records(self, ids: list[str]) -> None:
        with self.lock:
            self.records.update(ids)

    def add_labels(self, labels: dict[str, int], *, inline: bool = False) -> None:
        with self.lock:
            self.labels.update(labels)
            if inline:
                self.inline.update(labels)

    def check(self, db: Path) -> list[str]:
        """Every acknowledged record stored exactly once, every acknowledged label joined to its
        record or waiting for it, never both (the process must be dead)."""
        problems = []
        with self.lock:
            records, labels = set(self.records), dict(self.labels)
        with read_only(db) as conn:
            verdict = conn.execute("PRAGMA integrity_check").fetchone()[0]
            if verdict != "ok":
                problems.append(f"integrity_check: {verdict}")
            counts = collections.Counter(r[0] for r in conn.execute("SELECT rid FROM records"))
            joined = dict(conn.execute("SELECT rid, label FROM records WHERE label IS NOT NULL"))
            pending = dict(conn.execute("SELECT rid, label FROM pending_labels"))
        missing = records - counts.keys()
        if missing:
            problems.append(
                f"{len(missing)} acknowledged record(s) lost, e.g. {sorted(missing)[:3]}"
            )
        doubled = [rid for rid, n in counts.items() if n > 1]
        if doubled:
            problems.append(f"{len(doubled)} record id(s) stored twice, e.g. {doubled[:3]}")
        lost, wrong, both = [], [], []
        for rid, label in labels.items():
            text = json.dumps(label)
            if rid in joined and rid in pending:
                both.append(rid)
            got = joined.get(rid, pending.get(rid))
            if got is None:
                lost.append(rid)
            elif got != text:
                wrong.append(rid)
        waiting_for_stored = [rid for rid in pending if rid in counts]
        for what, ids in (
            ("acknowledged label(s) lost", lost),
            ("label(s) with the wrong value", wrong),
            ("label(s) both joined and pending", both),
            ("pending label(s) whose record is stored", waiting_for_stored),
        ):
            if ids:
                problems.append(f"{len(ids)} {what}, e.g. {sorted(ids)[:3]}")
        return problems


class CrashMatrix:
    """A daemon under traffic, killed ``kills`` times; see the module docstring."""

    def __init__(self, root: Path, *, seed: int = SEED, log: Callable[[str], None] | None = None):
        self.root = root
        self.state = root / "state"
        self.models = self.state / "models"
        self.db = self.state / "driftd.sqlite3"
        self.rng = random.Random(seed)
        self.ledger = Ledger()
        self.log = log or (lambda _: None)
        boot = write_csv(root / "boot.csv", make_rows(1000, seed=1))
        cfg = root / "driftd.toml"
        cfg.write_text(
            config_text(
                self.state,
                bootstrap=str(boot),
                sections={
                    "server": "port = 0\nmax_body_bytes = 4194304\nmax_batch_size = 2000",
                    "monitor": "checkpoint_interval_seconds = 0.1",
                    "retrain": "cooldown_labels = 0\nmin_new_labels = 0\nwindow_rows = 2000\n"
                    "challenger_labels = 0",
                    # Every candidate passes, so that every retrain ends in a publish and an
                    # alias replacement (the instants under test).
                    "gate": "min_holdout = 50\nmin_absolute_change = -1.0\nmax_latency_ms = 10000",
                    "guard": "records = 0",
                },
            )
        )
        self.daemon = DaemonProcess(cfg)
        self.verified: dict[int, str] = {}  # version -> sha256 of its artifact, once loaded
        self.newest_seen = 0
        self.champion: int | None = None
        self.left_by_kill: set[str] = set()

    # -- the run ---------------------------------------------------------------------------
    def run(self, kills: int) -> Report:
        start = time.monotonic()
        modes = [MODES[i % len(MODES)] for i in range(kills)]
        self.rng.shuffle(modes)
        done: list[Kill] = []
        started_at = time.time()
        self.daemon.start(timeout=120)
        try:
            for n, mode in enumerate(modes):
                kill = Kill(n, mode, 0.0)
                traffic = Traffic(self.daemon.url, n, self.ledger, self.rng)
                traffic.start()
                self._quiet_then_retrains(traffic, kill, started_at)
                self._kill_at(mode, kill, traffic)
                traffic.join()
                self._after_death(kill, started_at)
                started_at = time.time()
                self._restart(kill)
                done.append(kill)
                self.log(
                    f"kill {n + 1}/{kills} {mode:<10} {'ok ' if kill.survived else 'BAD'}"
                    f" at {kill.delay:.2f} s, restart {kill.restart_seconds:.1f} s,"
                    f" {time.monotonic() - start:.0f} s so far: {sorted(kill.tags)}"
                    f" {kill.problems}"
                )
        finally:
            self.daemon.stop()
        final = self._final_checks()
        if final and done:
            done[-1].problems += final
        with read_only(self.db) as conn:
            kinds = collections.Counter(r[0] for r in conn.execute("SELECT kind FROM events"))
        return Report(
            kills=done,
            records=len(self.ledger.records),
            labels=len(self.ledger.labels),
            retrains_started=kinds["retrain_started"],
            deploys=kinds["deploy"],
            rollbacks=kinds["rollback"],
            failed_requests=list(self.ledger.failed),
            seconds=time.monotonic() - start,
        )

    def _quiet_then_retrains(self, traffic: Traffic, kill: Kill, started_at: float) -> None:
        """Records and labels only for a moment after the restart; then count the retrains
        the restart itself started: at most the one job that was waiting."""
        time.sleep(QUIET_SECONDS)
        with read_only(self.db) as conn:
            burst = conn.execute(
                "SELECT count(*) FROM events WHERE kind='retrain_started' AND ts >= ?",
                (started_at,),
            ).fetchone()[0]
        if burst > 1:
            kill.problems.append(f"{burst} retrains started right after the restart")
        traffic.retrains.set()

    def _kill_at(self, mode: str, kill: Kill, traffic: Traffic) -> None:
        proc = self.daemon.proc
        assert proc is not None
        pid = proc.pid
        rng = self.rng
        t0 = time.monotonic()
        if mode == "uniform":
            kill.delay = rng.uniform(0.1, 3.0)
            time.sleep(kill.delay)
        elif mode == "training":
            self._wait(lambda: bool(training_children(pid)), 15.0, kill, 0.01)
            time.sleep(rng.uniform(0.0, 1.5))
        elif mode == "publish":
            # A version being written: its temp directory in models/.
            self._wait(
                lambda: any(n.startswith(".tmp-v") for n in os.listdir(self.models)),
                20.0,
                kill,
                0.0002,
            )
            time.sleep(rng.uniform(0.0, 0.004))
        elif mode == "alias":
            # A version just renamed into place: load, warm-up and the alias write follow.
            known = set(os.listdir(self.models))
            self._wait(
                lambda: any(
                    n.startswith(("v", ".tmp-aliases")) and n not in known
                    for n in os.listdir(self.models)
                ),
                20.0,
                kill,
                0.0002,
            )
            time.sleep(rng.uniform(0.0, 0.02))
        elif mode == "checkpoint":
            self._wait(lambda: bool(temp_files(self.state)), 5.0, kill, 0.0002)
        elif mode == "rollback":
            with httpx.Client(base_url=self.daemon.url, timeout=60) as c:
                sender = threading.Thread(
                    target=_quietly,
                    args=(traffic.rollback, c),
                    daemon=True,
                )
                sender.start()
                time.sleep(rng.uniform(0.0, 0.04))
                self._tag_and_kill(kill, traffic, pid)
                sender.join(30)
            kill.delay = time.monotonic() - t0
            return
        kill.delay = kill.delay or time.monotonic() - t0
        self._tag_and_kill(kill, traffic, pid)

    @staticmethod
    def _wait(cond: Callable[[], bool], timeout: float, kill: Kill, step: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if cond():
                return
            time.sleep(step)
        kill.tags.add("phase-not-seen")

    def _tag_and_kill(self, kill: Kill, traffic: Traffic, pid: int) -> None:
        kill.tags |= traffic.busy()
        children = training_children(pid)
        if children:
            kill.tags.add("training-child-running")
        if temp_files(self.models):
            kill.tags.add("models-tmp-seen")
        self.daemon.signal(signal.SIGKILL)
        self.daemon.wait()
        # An orphaned training child finds its pipe closed and exits; make sure of it.
        for child in children:
            deadline = time.monotonic() + 10
            while Path(f"/proc/{child}").exists() and time.monotonic() < deadline:
                time.sleep(0.05)
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGKILL)

    # -- checks ----------------------------------------------------------------------------
    def _after_death(self, kill: Kill, started_at: float) -> None:
        """With the process dead: what the kill interrupted, and the store and registry."""
        left = temp_files(self.models)
        self.left_by_kill = set(left) | set(temp_files(self.state))
        if any(n.startswith(".tmp-v") for n in left):
            kill.tags.add("publish-tmp-dir-left")
        if any(n.startswith(".tmp-aliases") for n in left):
            kill.tags.add("alias-tmp-file-left")
        if any(n.startswith(".tmp-monitor.ckpt") for n in temp_files(self.state)):
            kill.tags.add("checkpoint-tmp-file-left")
        kill.problems += self.ledger.check(self.db)
        with read_only(self.db) as conn:
            rows = conn.execute(
                "SELECT kind, data FROM events WHERE kind IN"
                " ('retrain_started', 'retrain_finished') ORDER BY id"
            ).fetchall()
            resets = conn.execute("SELECT count(*) FROM events WHERE kind='monitor_reset'")
            if resets.fetchone()[0]:
                kill.problems.append("monitor_reset event: a checkpoint was unreadable")
        open_jobs = {json.loads(d)["job"] for k, d in rows if k == "retrain_started"} - {
            json.loads(d)["job"] for k, d in rows if k == "retrain_finished"
        }
        if any(job != "bootstrap" for job in open_jobs):
            kill.tags.add("retrain-job-running")
        reg = Registry(self.models)
        aliases = reg.aliases()
        numbers = reg.numbers()
        if numbers and numbers[-1] > self.newest_seen:
            if numbers[-1] not in (aliases.champion, aliases.previous):
                kill.tags.add("published-before-alias-moved")
            self.newest_seen = numbers[-1]
        if aliases.champion not in numbers:
            kill.problems.append(f"champion alias {aliases.champion} names no version {numbers}")
            return
        kill.problems += self._verify_versions(reg, numbers, aliases.champion)
        self.champion = aliases.champion

    def _verify_versions(self, reg: Registry, numbers: list[int], champion: int) -> list[str]:
        """Every version verifies: a full load (sha256, trusted types) the first time and for
        the champion, the artifact's hash against that first load afterwards."""
        problems = []
        for n in numbers:
            try:
                if n not in self.verified or n == champion:
                    version, _ = reg.load(n)
                    self.verified[n] = version.manifest["sha256"]
                digest = hashlib.sha256((reg.root / f"v{n:06d}" / "model.skops").read_bytes())
                if digest.hexdigest() != self.verified[n]:
                    problems.append(f"v{n:06d} changed after publish")
            except Exception as exc:  # noqa: BLE001 - every failure is a finding to report
                problems.append(f"v{n:06d} does not load: {type(exc).__name__}: {exc}")
        return problems

    def _restart(self, kill: Kill) -> None:
        t0 = time.monotonic()
        try:
            self.daemon.start(timeout=120)
        except (RuntimeError, TimeoutError) as exc:
            kill.problems.append(f"restart failed: {exc}")
            raise
        kill.restart_seconds = time.monotonic() - t0
        with self.daemon.client() as c:
            model = c.get("/v1/status").json()["model"]
            deployed_since = c.get("/v1/events", params={"kind": "deploy", "limit": 1}).json()
        if model["fallback"] is not None:
            kill.problems.append(f"served with fallback: {model['fallback']}")
        if model["version"] != self.champion and not deployed_since["events"]:
            kill.problems.append(f"serving v{model['version']}, champion is v{self.champion}")
        # The new process writes temp files of its own (a checkpoint every 0.1 s, perhaps a
        # publish); the ones the kill left must be gone.
        now = set(temp_files(self.models)) | set(temp_files(self.state))
        stale = sorted(self.left_by_kill & now)
        if stale:
            kill.problems.append(f"temp files not swept at start: {stale}")
        messages = [str(e.get("message")) for e in self.daemon.lines]
        if not any(
            "monitor restored from its checkpoint" in m or "caught up" in m for m in messages
        ):
            kill.problems.append("the monitor did not resume from its checkpoint")
        errors = [
            str(e.get("message")) for e in self.daemon.lines if e.get("level") in ("error", "raw")
        ]
        if errors:
            kill.problems.append(f"error log lines at restart: {errors[:3]}")

    def _final_checks(self) -> list[str]:
        problems = self.ledger.check(self.db)
        reg = Registry(self.models)
        problems += self._verify_versions(reg, reg.numbers(), reg.aliases().champion or 0)
        deep = temp_files(self.state, recursive=True)
        if deep:
            problems.append(f"temp files anywhere under the state dir: {deep}")
        return problems


def _quietly(fn: Callable[[httpx.Client], None], c: httpx.Client) -> None:
    """Run a client loop; a transport error is the kill, and what was in flight then was
    never acknowledged."""
    with contextlib.suppress(httpx.TransportError):
        fn(c)


@pytest.mark.parametrize(
    "kills",
    [
        pytest.param(KILLS, marks=pytest.mark.timeout(max(300, 20 * KILLS))),
        pytest.param(4 * len(MODES), marks=[pytest.mark.slow, pytest.mark.timeout(1200)]),
    ],
    ids=["each-kind-once", "each-kind-four-times"],
)
def test_kill_9_at_random_instants_of_every_kind_loses_nothing_and_restarts_clean(
    tmp_path: Path, kills: int
) -> None:
    """Kills during ingest, label joins, checkpoint writes, training, publish, alias
    replacement and rollback: every restart is clean and nothing acknowledged is lost."""
    report = CrashMatrix(tmp_path, log=print).run(kills)
    print(report.text())
    assert report.survived == len(report.kills), report.text()
    assert not report.failed_requests, report.text()
    assert report.records > 0 and report.labels > 0
    tags = report.tag_counts()
    assert tags.get("request:records", 0) + tags.get("request:labels", 0) > 0, report.text()
    assert tags.get("training-child-running", 0) > 0, report.text()


def test_a_rejected_candidate_write_cut_by_a_kill_leaves_no_temp_file_after_restart(
    daemon_config: Path, state_dir: Path
) -> None:
    """The retrainer writes rejected/<job>/model.skops through atomic_write; a kill
    between its mkstemp and its os.replace leaves exactly this file behind."""
    job = state_dir / "rejected" / "job-1"
    job.mkdir(parents=True)
    leftover = job / ".tmp-model.skops.k9x2ab7q"
    leftover.write_bytes(b"the first half of an artifact")
    daemon = DaemonProcess(daemon_config).start()
    daemon.stop()
    assert not leftover.exists()


@pytest.mark.slow  # .ci/run runs it after the default suite
def test_short_soak_holds_memory_fds_and_store_size_within_bounds(tmp_path: Path) -> None:
    """300k Agrawal records (a concept change at 50k, so the daemon retrains and swaps) with
    retention at 20k rows: RSS after warm-up grows < 10 %, the store stays within retention plus
    one trim interval, no fd leak, no failed request, no error logged."""
    from benchmarks.soak import run_soak

    result = run_soak(
        records=300_000,
        retention_rows=20_000,
        trim_seconds=1.0,
        sample_seconds=1.0,
        # Looser than the long soak's 20 %: the first retrain (after the concept change at
        # 50k) grows the heap by about 5 % once, and must fall inside the warm-up; the growth
        # retrain that may follow adds far less.
        warmup_fraction=0.5,
        segment=50_000,
        workdir=tmp_path,
    )
    result.window = 3
    print(result.summary())
    assert len(result.samples) >= 5, result.summary()
    assert result.records == 300_000
    assert result.events.get("deploy", 0) >= 2, result.summary()  # bootstrap and a retrain
    assert not result.check(max_rss_growth=0.10), result.summary()
