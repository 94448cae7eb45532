"""The lifecycle in process: deploys, swaps and rollbacks on a real registry and store."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from driftd.config import load_text
from driftd.errors import IntegrityError
from driftd.ingest.schema import Schema
from driftd.metrics import Metrics
from driftd.models.calibration import Calibrator, IsotonicMap
from driftd.models.inputs import rows_to_matrix
from driftd.models.lifecycle import Lifecycle, Loader
from driftd.models.registry import Registry
from driftd.models.retention import Retention
from driftd.models.serving import Serving
from driftd.retrain.config import ModelConfig
from driftd.retrain.fit import FitJob, fit_and_dump
from driftd.store import SQLiteStore
from tests.conftest import config_text, make_rows

MODEL = ModelConfig(estimator="sklearn.linear_model.LogisticRegression")
Make = Callable[..., Lifecycle]


@pytest.fixture
def schema(tmp_path: Path) -> Schema:
    return load_text(config_text(tmp_path / "state", bootstrap=None)).schema_obj()


@pytest.fixture
def store(tmp_path: Path, schema: Schema) -> Iterator[SQLiteStore]:
    s = SQLiteStore(tmp_path / "driftd.sqlite3", schema).open()
    yield s
    s.close()


@pytest.fixture
def make(tmp_path: Path, schema: Schema, store: SQLiteStore) -> Make:
    """A lifecycle on the test's registry and store, opened."""

    def build(
        *, keep_previous: bool = True, loader: Loader | None = None, **kwargs: Any
    ) -> Lifecycle:
        models = Lifecycle(
            Registry(tmp_path / "models"),
            Serving(),
            store,
            Metrics(),
            schema,
            keep_previous=keep_previous,
            loader=loader,
            **kwargs,
        )
        models.open()
        return models

    return build


@pytest.fixture(params=[True, False], ids=["keep_previous", "reload"])
def lifecycle(request: pytest.FixtureRequest, make: Make) -> Lifecycle:
    return make(keep_previous=request.param)


def deploy(models: Lifecycle, seed: int) -> int:
    rows = make_rows(300, seed=seed, flip=seed % 2 == 1)
    X = rows_to_matrix(models.schema, [r["features"] for r in rows])
    fit = fit_and_dump(FitJob(MODEL, models.schema, X, [r["label"] for r in rows]))
    assert fit.ok, fit.error
    warm = [r["features"] for r in rows[:4]]
    version = models.deploy(fit.artifact, {"reason": "test", "warmup": warm}, X[:4])
    return version.number


def test_a_rollback_serves_the_version_asked_for_and_moves_the_alias(lifecycle: Lifecycle) -> None:
    """With ``keep_previous`` the previous champion comes back from memory (the very object that
    served before); without it, it is loaded, verified and warmed up from the registry again."""
    first = deploy(lifecycle, 0)
    served_first = lifecycle.current
    second = deploy(lifecycle, 1)
    assert lifecycle.current is not None and lifecycle.current.version == second

    assert lifecycle.rollback(first, details={"by": "test"}) == (first, second)

    live = lifecycle.current
    assert live is not None and live.version == first
    assert lifecycle.registry.aliases().champion == first
    assert served_first is not None
    assert (live.model is served_first.model) == lifecycle.keep_previous
    # the rolled-back model answers as it did before
    X = rows_to_matrix(lifecycle.schema, [r["features"] for r in make_rows(50, seed=9)])
    assert live.predict(X) == served_first.predict(X)
    kinds = [e.kind for e in lifecycle.store.events(limit=10)]
    assert kinds.count("rollback") == 1 and kinds.count("deploy") == 2
    (event,) = lifecycle.store.events(kind="rollback", limit=1)
    assert event.data == {"from": second, "by": "test", "version": first, "previous": second}


def test_a_rollback_past_the_previous_champion_loads_from_the_registry(
    lifecycle: Lifecycle,
) -> None:
    first = deploy(lifecycle, 0)
    served_first = lifecycle.current
    deploy(lifecycle, 1)
    deploy(lifecycle, 2)
    lifecycle.rollback(first, details={})
    live = lifecycle.current
    assert served_first is not None and live is not None and live.version == first
    assert live.model is not served_first.model


def test_a_rollback_to_nothing_or_to_the_champion_is_refused(lifecycle: Lifecycle) -> None:
    with pytest.raises(ValueError, match="no previous version"):
        lifecycle.rollback(None, details={})
    only = deploy(lifecycle, 0)
    with pytest.raises(ValueError, match="already the champion"):
        lifecycle.rollback(only, details={})
    with pytest.raises(ValueError, match="does not exist"):
        lifecycle.rollback(99, details={})
    assert lifecycle.registry.aliases().champion == only


def test_a_deploy_serves_the_model_the_training_process_loaded(lifecycle: Lifecycle) -> None:
    """Given the candidate as the training process loaded it, a deploy reads back and verifies
    the published bytes but serves that object: no second load in the serving process."""
    rows = make_rows(300, seed=3)
    X = rows_to_matrix(lifecycle.schema, [r["features"] for r in rows])
    y = [r["label"] for r in rows]
    job = FitJob(MODEL, lifecycle.schema, X, y, holdout=(X[:50], y[:50]))
    fit = fit_and_dump(job)
    assert fit.ok and fit.evaluation is not None
    model = fit.evaluation.model()
    assert model is not None
    warm = [r["features"] for r in rows[:4]]
    manifest = {"reason": "test", "warmup": warm}
    version = lifecycle.deploy(fit.artifact, manifest, X[:4], model=model)
    live = lifecycle.current
    assert live is not None and live.version == version.number
    assert live.model is model
    _, from_disk = lifecycle.registry.load(version.number)
    assert live.predict(X) == from_disk.predict(X).tolist()


def test_the_swap_and_on_swap_run_together_in_order_with_traffic(make: Make) -> None:
    """The alias moves first; the reference swap, its audit event and ``on_swap`` (the
    detectors' rebaseline) run in one ``in_order`` call, so no record falls between them."""
    seen: list[tuple[str, int | None]] = []
    models: Lifecycle

    def in_order(fn: Callable[[], Any]) -> Any:
        seen.append(("before", models.current.version if models.current else None))
        out = fn()
        seen.append(("after", models.current.version if models.current else None))
        return out

    def on_swap() -> None:
        assert models.registry.aliases().champion == models.current.version  # type: ignore[union-attr]
        seen.append(("on_swap", models.current.version if models.current else None))

    models = make(in_order=in_order, on_swap=on_swap)
    first = deploy(models, 0)
    second = deploy(models, 1)
    models.rollback(first, details={})
    assert seen == [
        ("before", None),
        ("on_swap", first),
        ("after", first),
        ("before", first),
        ("on_swap", second),
        ("after", second),
        ("before", second),
        ("on_swap", first),
        ("after", first),
    ]


def test_at_start_the_champion_serves_and_a_crash_before_its_event_is_recorded(
    make: Make, store: SQLiteStore
) -> None:
    """An alias moved without its audit event (a crash between the two) is recorded at the
    next start as a recovered deploy, and the champion serves."""
    models = make()
    deploy(models, 0)
    second = deploy(models, 1)
    models.registry.set_champion(1)  # as if a deploy of v1 moved the alias and then crashed
    again = make()
    assert again.current is not None and again.current.version == 1
    (event,) = store.events(kind="deploy", limit=1)
    assert event.data == {
        "version": 1,
        "reason": "recovered",
        "recovered": True,
        "previous": second,
    }
    assert again.load_failures == ()


def test_a_champion_that_fails_verification_falls_back_to_the_newest_valid_version(
    make: Make, tmp_path: Path, store: SQLiteStore
) -> None:
    models = make()
    first = deploy(models, 0)
    second = deploy(models, 1)
    artifact = tmp_path / "models" / f"v{second:06d}" / "model.skops"
    artifact.write_bytes(artifact.read_bytes()[:-10])  # torn: its sha256 no longer matches
    again = make()
    assert again.current is not None and again.current.version == first
    assert again.registry.aliases().champion == first
    assert len(again.load_failures) == 1 and again.load_failures[0].startswith("v000002")
    assert again.status() is not None and "failed to load" in again.status()["fallback"]  # type: ignore[index]
    kinds = [e.kind for e in store.events(limit=3)]
    assert kinds[:2] == ["model_fallback", "model_load_failed"]


def test_a_load_from_the_registry_can_run_in_the_training_worker(make: Make) -> None:
    """With a loader (the daemon's training worker), a rollback past the previous champion
    verifies the bytes here and has the worker load them; the model serves as loaded there."""
    from driftd.retrain.worker import TrainingWorker

    worker = TrainingWorker()
    worker.start()
    loaded: list[Any] = []

    def loader(data: bytes, **kwargs: Any) -> Any:
        deadline = time.monotonic() + 60  # the worker starts in the background
        while (model := worker.load(data, **kwargs)) is None and time.monotonic() < deadline:
            time.sleep(0.1)
        loaded.append(model)
        return model

    models = make(keep_previous=False, loader=loader)
    try:
        first = deploy(models, 0)
        deploy(models, 1)
        loaded.clear()
        models.rollback(first, details={})
    finally:
        worker.close()
    live = models.current
    assert live is not None and live.version == first and loaded and live.model is loaded[0]
    X = rows_to_matrix(models.schema, [r["features"] for r in make_rows(50, seed=9)])
    _, from_disk = models.registry.load(first)
    assert live.predict(X) == from_disk.predict(X).tolist()


@pytest.mark.parametrize("outcome", ["cannot now", "fails"])
def test_a_loader_that_cannot_load_leaves_the_load_to_this_process(
    make: Make, outcome: str
) -> None:
    """A worker busy fitting (None) or one whose load broke (an exception): the rollback still
    happens, loading in this process."""
    calls: list[bytes] = []

    def loader(data: bytes, **kwargs: Any) -> Any:
        calls.append(data)
        if outcome == "fails":
            raise EOFError("the worker went away")
        return None

    models = make(keep_previous=False, loader=loader)
    first = deploy(models, 0)
    deploy(models, 1)
    calls.clear()
    models.rollback(first, details={})
    live = models.current
    assert calls and live is not None and live.version == first


# -- retention -------------------------------------------------------------------------------
def republish(models: Lifecycle, n: int) -> list[int]:
    """Deploy the serving model's artifact ``n`` more times, as loaded and with one warm-up row
    (no fit, no load: a thousand deploys stay quick)."""
    live = models.current
    assert live is not None
    _, artifact = models.registry.read(live.version)
    skip = ("version", "sha256", "size")
    manifest = {k: v for k, v in live.manifest.items() if k not in skip}
    warm = rows_to_matrix(models.schema, manifest["warmup"][:1])
    return [models.deploy(artifact, manifest, warm, model=live.model).number for _ in range(n)]


def deleted(store: SQLiteStore) -> list[int]:
    return sorted(e.data["version"] for e in store.events(kind="model_deleted", limit=10_000))


def test_retention_keeps_the_champion_the_previous_the_pinned_and_the_newest_n(
    make: Make, store: SQLiteStore
) -> None:
    """Across 40 deploys with rollbacks now and then, the registry holds exactly the newest
    three, the pinned ones, the champion and the previous champion; every other version has
    been deleted, each with one event."""
    models = make(retention=Retention(keep_versions=3, pinned=frozenset({2, 5})))
    deploy(models, 0)
    for step in range(40):
        republish(models, 1)
        if step % 7 == 6:  # back to an old version: it stays while it is champion or previous
            models.rollback(models.registry.numbers()[-4], details={})
        aliases = models.registry.aliases()
        numbers = models.registry.numbers()
        expected = set(numbers[-3:]) | {aliases.champion, aliases.previous}
        expected |= {2, 5} & set(range(1, numbers[-1] + 1))
        assert set(numbers) == expected
        assert deleted(store) == sorted(set(range(1, numbers[-1] + 1)) - expected)
    assert [v.number for v in models.registry.versions()] == models.registry.numbers()
    assert len(store.events(kind="model_deleted", limit=10_000)) == len(deleted(store))
    event = store.events(kind="model_deleted", limit=1)[0]
    assert event.data == {
        "version": event.data["version"],
        "reason": "retention",
        "keep_versions": 3,
    }


def test_a_rollback_to_a_deleted_version_is_refused_saying_so(make: Make) -> None:
    models = make(retention=Retention(keep_versions=1))
    deploy(models, 0)
    republish(models, 3)
    assert models.registry.numbers() == [3, 4]
    with pytest.raises(ValueError, match="version 1 was deleted from the registry"):
        models.rollback(1, details={})
    with pytest.raises(ValueError, match="version 9 does not exist"):
        models.rollback(9, details={})
    assert [v["version"] for v in models.models()["versions"]] == [4, 3]
    assert models.rollback(None, details={}) == (3, 4)


def test_1000_deploys_with_the_default_retention_leave_at_most_n_plus_2_versions(
    make: Make, tmp_path: Path
) -> None:
    """The registry's disk stays bounded: the default keeps 10 versions plus the champion and
    the previous one, however many deploys there are (docs/reliability.md has the figure for
    the demo's model)."""
    models = make()
    deploy(models, 0)
    size = (tmp_path / "models" / "v000001" / "model.skops").stat().st_size
    for n in range(1, 1000):
        republish(models, 1)
        if n % 100 == 0:
            models.rollback(None, details={})
        assert len(models.registry.numbers()) <= models.retention.keep_versions + 2
    entries = list((tmp_path / "models").iterdir())
    used = sum(f.stat().st_size for e in entries if e.is_dir() for f in e.iterdir())
    assert len([e for e in entries if e.is_dir()]) <= 12
    assert used < 12 * (size + 20_000)  # artifact + manifest (with its warm-up rows)


def test_each_step_of_a_deletion_cut_by_a_crash_leaves_a_registry_that_opens(
    make: Make, store: SQLiteStore, tmp_path: Path
) -> None:
    """A crash after the rename (before or after the event, the directory whole or half
    removed): the next start serves the champion, never lists the version, sweeps what is
    left and has exactly one ``model_deleted`` event for it."""
    models = make(retention=Retention(keep_versions=1))
    deploy(models, 0)
    republish(models, 4)
    root = tmp_path / "models"
    assert models.registry.numbers() == [4, 5] and deleted(store) == [1, 2, 3]

    # Renamed; the crash came before the event (the record that never ran).
    models.registry.retire(4, event=("model_deleted", {"version": 4}), record=lambda *_: None)
    first = make(retention=Retention(keep_versions=1))
    assert first.registry.numbers() == [5]
    assert deleted(store) == [1, 2, 3, 4]
    assert store.events(kind="model_deleted", limit=1)[0].data["recovered"] is True

    republish(first, 2)  # 6 and 7 published, 5 deleted

    def record(kind: str, data: dict[str, Any]) -> None:
        store.add_event(kind, data, ts=time.time())

    # Renamed, recorded, then half removed.
    retired = first.registry.retire(6, event=("model_deleted", {"version": 6}), record=record)
    (retired / "model.skops").unlink()
    again = make(retention=Retention(keep_versions=1))
    assert again.current is not None and again.current.version == 7
    assert again.registry.numbers() == [7] and deleted(store) == [1, 2, 3, 4, 5, 6]
    assert [v["version"] for v in again.models()["versions"]] == [7]
    assert not [p for p in root.iterdir() if p.name.startswith(".tmp-")]


def churn(root: str) -> None:
    """Deploy forever with ``keep_versions = 1``, so that every deploy deletes one version: the
    child process that :func:`test_kill_9_during_deletions_loses_no_version_and_no_event`
    kills."""
    state = Path(root)
    schema = load_text(config_text(state, bootstrap=None)).schema_obj()
    store = SQLiteStore(state / "driftd.sqlite3", schema).open()
    models = Lifecycle(
        Registry(state / "models"),
        Serving(),
        store,
        Metrics(),
        schema,
        retention=Retention(keep_versions=1),
    )
    models.open()
    if models.current is None:
        deploy(models, 0)
    while True:
        republish(models, 1)


def test_kill_9_during_deletions_loses_no_version_and_no_event(
    tmp_path: Path, schema: Schema
) -> None:
    """A real process deleting a version at every deploy, killed with SIGKILL (mostly the
    instant a deletion's renamed directory appears): after each kill the registry opens and
    serves its champion, and every number ever published is either a whole version or has
    exactly one ``model_deleted`` event, never both."""
    root = tmp_path / "models"
    caught = 0
    for kill in range(4):
        child = subprocess.Popen(
            [
                sys.executable,
                "-c",
                f"from tests.test_lifecycle import churn; churn({str(tmp_path)!r})",
            ]
        )
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and child.poll() is None:
                names = os.listdir(root) if root.exists() else []
                if any(n.startswith(".tmp-deleted-") for n in names) and kill % 4 != 3:
                    break
                if kill % 4 == 3 and len(names) > 2 and random.random() < 0.001:
                    break
                time.sleep(0.0002)
            child.send_signal(signal.SIGKILL)
        finally:
            child.wait(10)
        assert child.returncode == -signal.SIGKILL, "the child stopped before it was killed"
        caught += any(n.startswith(".tmp-deleted-") for n in os.listdir(root))
        store = SQLiteStore(tmp_path / "driftd.sqlite3", schema).open()
        try:
            models = Lifecycle(Registry(root), Serving(), store, Metrics(), schema)
            models.open()
            numbers = models.registry.numbers()
            events = [e.data["version"] for e in store.events(kind="model_deleted", limit=10_000)]
            champion = models.registry.aliases().champion
            assert models.current is not None and models.current.version == champion
            # the newest, or (killed between its publish and its alias move) the one before
            assert champion in numbers[-2:]
            assert len(events) == len(set(events)) and not set(events) & set(numbers)
            assert set(events) | set(numbers) == set(range(1, numbers[-1] + 1))
            for n in numbers:
                models.registry.load(n)
            assert not [p for p in root.iterdir() if p.name.startswith(".tmp-")]
        finally:
            store.close()
    print(f"\n{caught} of 4 kills left a deletion's renamed directory behind")


def squash(low: float) -> Calibrator:
    """A calibrator pulling the positive class's probability into [low, 1 - low]."""
    return Calibrator(("0", "1"), (IsotonicMap((0.0, 1.0), (low, 1.0 - low)),))


def deploy_calibrated(models: Lifecycle, seed: int, calibrator: Calibrator) -> int:
    rows = make_rows(300, seed=seed)
    X = rows_to_matrix(models.schema, [r["features"] for r in rows])
    fit = fit_and_dump(FitJob(MODEL, models.schema, X, [r["label"] for r in rows]))
    manifest = {"reason": "test", "warmup": [r["features"] for r in rows[:4]]}
    return models.deploy(fit.artifact, manifest, X[:4], calibration=calibrator.dumps()).number


def test_a_versions_calibrator_serves_with_it_and_comes_back_with_a_rollback(
    lifecycle: Lifecycle,
) -> None:
    """The store gets the model's own probabilities, the estimate the calibrated ones, from
    the calibrator of the version that answered, after a deploy and after a rollback alike."""
    first = deploy_calibrated(lifecycle, 0, squash(0.25))
    deploy_calibrated(lifecycle, 1, squash(0.4))
    lifecycle.rollback(first, details={})
    live = lifecycle.current
    assert live is not None and live.version == first and live.calibrator == squash(0.25)
    X = rows_to_matrix(lifecycle.schema, [r["features"] for r in make_rows(20, seed=9)])
    probas = live.probabilities(X)
    assert probas is not None
    raw = live.model.predict_proba(X)[:, 1]
    assert [row["1"] for row in probas.raw] == pytest.approx(raw.tolist())
    assert [row["1"] for row in probas.calibrated] == pytest.approx((0.25 + raw / 2).tolist())


def test_a_champion_whose_calibrator_was_tampered_with_is_refused_at_start(
    make: Make, tmp_path: Path
) -> None:
    models = make()
    first = deploy_calibrated(models, 0, squash(0.25))
    second = deploy_calibrated(models, 1, squash(0.25))
    path = tmp_path / "models" / f"v{second:06d}" / "calibration.json"
    path.write_bytes(path.read_bytes().replace(b"0.25", b"0.3"))
    again = make()
    assert again.current is not None and again.current.version == first
    (failure,) = again.load_failures
    assert failure.startswith(f"v{second:06d}") and "calibration sha256 mismatch" in failure


def test_a_calibrator_for_other_classes_refuses_its_version(lifecycle: Lifecycle) -> None:
    other = Calibrator(("no", "yes"), (IsotonicMap((0.0, 1.0), (0.0, 1.0)),))
    with pytest.raises(IntegrityError, match="calibration is for classes \\['no', 'yes'\\]"):
        deploy_calibrated(lifecycle, 0, other)
    assert lifecycle.current is None
