"""Replay: the daemon's own monitor, policy, training, gate and swap over a history file."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from driftd.config import load, load_text
from driftd.ingest.history import HistoryError
from driftd.ingest.streams import STREAMS, SyntheticStream
from driftd.models.inputs import rows_to_matrix
from driftd.models.registry import load_artifact
from driftd.offline.replay import ReplayOptions, SimClock, load_history, replay
from driftd.retrain.fit import FitJob, fit_and_dump
from driftd.retrain.worker import fit_isolated

SEGMENT = 2000
RECORDS = 6000
#: Records after a true change point within which the error detector must raise its alarm.
DELAY = 600

CONFIG = """
[schema]
task = "classification"
timestamp_field = "ts"
features = [{ name = "x0" }, { name = "x1" }, { name = "x2" }]

[model]
estimator = "sklearn.linear_model.LogisticRegression"
params = { max_iter = 200 }

[bootstrap]
min_rows = 500
rows = 1000

[retrain]
cooldown_seconds = 5
min_new_labels = 100
min_rows_after_drift = 300
window_rows = 3000

[gate]
threshold = 0.7
"""


def write_stream(
    path: Path,
    n: int = RECORDS,
    *,
    concepts: tuple[int, ...] = (0, 3),
    timestamps: bool = True,
    extra: dict[str, list[Any]] | None = None,
) -> Path:
    """SEA records with a timestamp column (two records a second) and ``drift`` = 1 at the
    stream's known change points."""
    stream = SyntheticStream("sea", concepts, SEGMENT, seed=3)
    points = set(stream.drift_points(n))
    feats = list(STREAMS["sea"])
    extra = extra or {}
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow([*(["ts"] if timestamps else []), *feats, "label", "drift", *extra])
        for i, (x, y) in enumerate(stream.take(n)):
            w.writerow(
                [
                    *([1_700_000_000 + i * 0.5] if timestamps else []),
                    *[x[f] for f in feats],
                    y,
                    int(i in points),
                    *(col[i] for col in extra.values()),
                ]
            )
    return path


def config_file(tmp: Path, extra: str = "") -> Path:
    path = tmp / "replay.toml"
    path.write_text(CONFIG + extra)
    return path


def without_wall_clock(result: dict[str, Any]) -> str:
    return json.dumps({k: v for k, v in result.items() if k != "wall_clock"}, indent=2)


@pytest.fixture(scope="module")
def sea(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("sea")
    return write_stream(tmp / "sea.csv"), config_file(tmp)


@pytest.fixture(scope="module")
def result(sea: tuple[Path, Path]) -> dict[str, Any]:
    data, cfg = sea
    return replay(data, load(cfg), ReplayOptions(seed=1, label_lag=2.0, progress=False))


def test_replay_detects_each_known_drift_within_the_stated_delay(result: dict[str, Any]) -> None:
    drift = result["drift"]
    assert drift["points"] == [2000, 4000]
    assert drift["missed"] == []
    for found in drift["detected"]:
        assert found["alarm"] is not None
        assert 0 <= found["delay"] <= DELAY, found
    assert drift["false_alarms"] == 0
    assert all(a["kind"] == "concept_drift" for a in result["alarms"])
    # Alarms name the file line of their record (header on line 1, record 0 on line 2).
    assert all(a["line"] == a["index"] + 2 for a in result["alarms"])


def test_replay_retrains_after_each_drift_and_deploys_through_the_swap(
    result: dict[str, Any],
) -> None:
    retrains = result["retrains"]
    deployed = [r for r in retrains if r["outcome"] == "deployed"]
    for point in (2000, 4000):
        after = [r for r in deployed if point < r["index"] <= point + 2 * DELAY]
        assert after, f"no deploy within {2 * DELAY} records of the drift at {point}"
        assert "drift" in after[0]["triggers"]
        assert after[0]["window"]["since_drift_point"] >= point - 50
    versions = [d["version"] for d in result["deploys"]]
    assert versions == list(range(1, len(versions) + 1))
    assert result["deploys"][0]["reason"] == "bootstrap"
    for r in deployed:
        assert r["verdict"]["passed"] is True
        assert r["scores"]["candidate"]["accuracy"] >= 0.7
    # The bootstrap used the file's first bootstrap.min_rows labelled rows (no bootstrap data).
    assert result["bootstrap"]["rows"] == 500
    assert result["score"]["segments"][0]["first_index"] == 500


def test_prequential_score_is_reported_overall_and_per_segment(result: dict[str, Any]) -> None:
    score = result["score"]
    assert score["metric"] == "accuracy"
    assert score["scored"] == RECORDS - 500
    segments = score["segments"]
    assert segments[0]["version"] == 1
    assert sum(s["records"] for s in segments) == RECORDS - 500
    assert segments[-1]["last_index"] == RECORDS - 1
    weighted = sum(s["score"] * s["scored"] for s in segments) / score["scored"]
    assert weighted == pytest.approx(score["overall"])
    assert score["overall"] > 0.9
    series = result["series"]
    assert len(series["index"]) == len(series["prequential"]) == len(series["live_score"])
    assert {"feature:x0", "prediction", "error"} <= set(series["detectors"])
    assert all(len(v) == len(series["index"]) for v in series["detectors"].values())
    # The accuracy estimated from class probabilities, before labels, beside the realized one.
    assert len(series["estimated"]) == len(series["index"])
    error = series["estimate_error"]
    assert error["samples"] > 0.9 * len(series["index"])
    assert error["mae"] is not None and 0 <= error["mae"] <= error["max"] <= 1


def test_two_runs_with_the_same_seed_give_identical_json(
    sea: tuple[Path, Path], result: dict[str, Any]
) -> None:
    data, cfg = sea
    again = replay(data, load(cfg), ReplayOptions(seed=1, label_lag=2.0, progress=False))
    assert without_wall_clock(again) == without_wall_clock(result)
    assert set(result["wall_clock"]) == {"retrains", "seconds"}


def test_replay_never_touches_the_configured_state_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = tmp_path / "var"
    monkeypatch.setenv("STATE_DIRECTORY", str(tmp_path / "systemd-state"))
    data = write_stream(tmp_path / "s.csv", 1500)
    cfg = load(config_file(tmp_path, f'\n[state]\ndir = "{state}"\n'))
    replay(data, cfg, ReplayOptions(progress=False))
    assert not state.exists()
    assert not (tmp_path / "systemd-state").exists()


def test_inline_fit_gives_the_same_model_as_the_child_process() -> None:
    """Same code path, same fitted model: parameters, coefficients and predictions are equal.
    (The skops bytes differ only in the internal names skops gives array files.)"""
    cfg = load_text(CONFIG)
    schema = cfg.schema_obj()
    rows = SyntheticStream("sea", (0,), 1000, seed=2).take(400)
    X = rows_to_matrix(schema, [r[0] for r in rows])
    job = FitJob(cfg.model, schema, X, [r[1] for r in rows])
    inline = fit_and_dump(job)
    child = fit_isolated(job, timeout=60)
    assert inline.ok and child.ok, (inline.error, child.error)
    a, b = (load_artifact(r.artifact) for r in (inline, child))
    assert a.get_params(deep=False).keys() == b.get_params(deep=False).keys()
    assert np.array_equal(a[-1].coef_, b[-1].coef_)
    assert np.array_equal(a[-1].intercept_, b[-1].intercept_)
    assert np.array_equal(a.predict(X), b.predict(X))
    assert not inline.logs and not child.logs


@pytest.mark.slow
def test_inline_and_subprocess_replays_give_identical_json(sea: tuple[Path, Path]) -> None:
    data, cfg = sea
    results = [
        replay(data, load(cfg), ReplayOptions(seed=1, label_lag=2.0, inline=inline, progress=False))
        for inline in (True, False)
    ]
    for r in results:
        r["options"].pop("inline")
    assert without_wall_clock(results[0]) == without_wall_clock(results[1])


def test_label_delay_column_delays_each_label_and_skips_empty_ones(tmp_path: Path) -> None:
    n = 3000
    delays: list[Any] = [5.0 if i % 10 else "" for i in range(n)]
    data = write_stream(tmp_path / "d.csv", n, extra={"delay": delays})
    cfg = load(config_file(tmp_path))
    out = replay(data, cfg, ReplayOptions(label_delay_column="delay", progress=False))
    assert out["options"]["label_delay_column"] == "delay"
    # The first 500 rows bootstrap with their labels; of the predicted ones (500..2999), every
    # tenth has no delay and is never labelled.
    first = out["score"]["segments"][0]["first_index"]
    assert first == 500
    never = sum(1 for i in range(first, n) if i % 10 == 0)
    assert out["final"]["store"]["labelled"] == n - never
    assert out["score"]["scored"] == n - first  # the prequential score uses the file's labels


def test_a_file_without_timestamps_runs_at_a_fixed_rate_with_scheduled_retrains(
    tmp_path: Path,
) -> None:
    data = write_stream(tmp_path / "r.csv", 3000, concepts=(0,), timestamps=False)
    path = tmp_path / "replay.toml"
    # Challengers off: the schedule is what retrains here.
    schedule = "[retrain]\ninterval_seconds = 200\nchallenger_labels = 0\n"
    path.write_text(CONFIG.replace("[retrain]\n", schedule))
    cfg = load(path)
    out = replay(data, cfg, ReplayOptions(rate=4.0, progress=False))
    assert out["input"]["clock"] == "rate"
    assert out["input"]["end_time"] == pytest.approx(2999 / 4.0)
    scheduled = [r for r in out["requests"] if r["reason"] == "schedule"]
    # 3000 records at 4/s is 750 s; the schedule starts with the first model (at 125 s) and
    # fires every 200 s of simulated time from then on.
    assert 2 <= len(scheduled) <= 4
    assert any("schedule" in r["triggers"] for r in out["retrains"])


def test_the_post_deploy_guard_rolls_back_at_a_repeatable_point(tmp_path: Path) -> None:
    """A gate that lets small, worse candidates through and a zero-margin guard: somewhere the
    previous champion, scored in shadow, does better on the new one's first records, and the
    rollback falls at the same record on every run."""
    data = write_stream(tmp_path / "g.csv")
    path = tmp_path / "replay.toml"
    gate = "[gate]\nmin_holdout = 10\nmin_absolute_change = -1.0\n"
    small = CONFIG.replace(
        "min_rows_after_drift = 300", "min_rows_after_drift = 60\nchallenger_labels = 0"
    )
    # One small candidate per retrain (no pool), fitted on the rows since the change point only.
    pool = "\n[pool]\nwindows = false\nonline = false\n"
    path.write_text(
        small.replace("[gate]\n", gate) + "\n[guard]\nrecords = 100\nmargin = 0.0\n" + pool
    )
    cfg = load(path)
    runs = [replay(data, cfg, ReplayOptions(seed=2, progress=False)) for _ in range(2)]
    out = runs[0]
    assert out["rollbacks"], "a zero-margin guard is expected to fail at least once"
    for rb in out["rollbacks"]:
        assert rb["reason"] == "guard"
        assert rb["version"] < rb["from"]
    failed = [g for g in out["guards"] if not g["passed"]]
    assert [g["index"] for g in failed] == [rb["index"] for rb in out["rollbacks"]]
    # The segment after a rollback is served by the version rolled back to.
    starts = {s["first_index"]: s["version"] for s in out["score"]["segments"]}
    for rb in out["rollbacks"]:
        assert starts.get(rb["index"]) == rb["version"]
    assert without_wall_clock(runs[0]) == without_wall_clock(runs[1])


def test_drift_points_option_overrides_the_column_and_counts_false_alarms(
    sea: tuple[Path, Path], result: dict[str, Any]
) -> None:
    data, cfg = sea
    out = replay(
        data,
        load(cfg),
        ReplayOptions(seed=1, label_lag=2.0, drift_points=(4000,), detection_delay=DELAY),
    )
    assert out["drift"]["source"] == "option"
    assert out["drift"]["points"] == [4000]
    # The alarm after the (now undeclared) change at 2000 is a false alarm.
    assert out["drift"]["false_alarms"] == 1
    assert out["drift"]["false_alarm_indices"][0] == result["drift"]["detected"][0]["alarm"]


# -- bad files ------------------------------------------------------------------------------
def _edit(path: Path, line: int, column: str, value: str) -> Path:
    with path.open(newline="") as fh:
        rows = list(csv.reader(fh))
    rows[line - 1][rows[0].index(column)] = value
    with path.open("w", newline="") as fh:
        csv.writer(fh).writerows(rows)
    return path


def _drop_column(path: Path, column: str) -> Path:
    with path.open(newline="") as fh:
        rows = list(csv.reader(fh))
    k = rows[0].index(column)
    with path.open("w", newline="") as fh:
        csv.writer(fh).writerows([r[:k] + r[k + 1 :] for r in rows])
    return path


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        (lambda p: _drop_column(p, "x1"), "line 1: missing column(s) 'x1'"),
        (lambda p: _edit(p, 7, "x0", "abc"), "line 7, column 'x0': expected a number, got 'abc'"),
        (lambda p: _edit(p, 9, "x2", "nan"), "line 9, column 'x2': expected a finite number"),
        (lambda p: _edit(p, 5, "x1", ""), "line 5, column 'x1': missing value"),
        (lambda p: _edit(p, 12, "ts", "1600000000"), "line 12, column 'ts': timestamps are not"),
        (lambda p: _edit(p, 4, "ts", ""), "line 4, column 'ts': missing value"),
        (lambda p: _edit(p, 6, "drift", "2"), "line 6, column 'drift': expected 0 or 1"),
    ],
    ids=["missing-column", "wrong-type", "nan", "empty", "unsorted", "no-timestamp", "drift"],
)
def test_bad_files_are_refused_naming_the_line_and_column(
    tmp_path: Path, damage: Any, expected: str
) -> None:
    data = damage(write_stream(tmp_path / "bad.csv", 50))
    schema = load(config_file(tmp_path)).schema_obj()
    with pytest.raises(HistoryError) as err:
        load_history(data, schema, ReplayOptions())
    assert expected in str(err.value)


def test_a_bad_label_delay_is_refused_naming_the_line_and_column(tmp_path: Path) -> None:
    data = write_stream(tmp_path / "d.csv", 20, extra={"delay": ["1"] * 10 + ["-3"] * 10})
    schema = load(config_file(tmp_path)).schema_obj()
    with pytest.raises(HistoryError, match=r"line 12, column 'delay': expected a delay >= 0"):
        load_history(data, schema, ReplayOptions(label_delay_column="delay"))
    with pytest.raises(HistoryError, match=r"line 2, column 'wait': missing column"):
        load_history(data, schema, ReplayOptions(label_delay_column="wait"))


def test_the_cli_exits_2_on_a_bad_file_and_writes_json_and_html_on_a_good_one(
    tmp_path: Path,
) -> None:
    cfg = config_file(tmp_path)
    bad = _edit(write_stream(tmp_path / "bad.csv", 50), 30, "x1", "high")
    cmd = [sys.executable, "-m", "driftd", "replay", "--config", str(cfg)]
    proc = subprocess.run(
        [*cmd, str(bad)], capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 2
    assert "line 30, column 'x1': expected a number, got 'high'" in proc.stderr
    good = write_stream(tmp_path / "good.csv", 2500)
    out, page = tmp_path / "out.json", tmp_path / "out.html"
    proc = subprocess.run(
        [*cmd, str(good), "--json", str(out), "--report", str(page), "--seed", "3"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "driftd replay: 2500 records" in proc.stderr
    doc = json.loads(out.read_text())
    assert doc["format"] == 1 and doc["input"]["records"] == 2500
    assert doc["options"]["seed"] == 3 and doc["options"]["inline"] is True
    assert page.read_text().count("data:image/png;base64,") == 2


def test_sim_clock_never_goes_back() -> None:
    clock = SimClock(5.0)
    clock.advance(3.0)
    assert clock() == 5.0
    clock.advance(np.float64(7.5).item())
    assert clock() == 7.5


def test_a_regression_history_in_json_lines_is_scored_by_mean_absolute_error(
    tmp_path: Path,
) -> None:
    rng = np.random.default_rng(0)
    path = tmp_path / "reg.jsonl"
    with path.open("w") as fh:
        for i in range(3000):
            x0, x1 = rng.random(), rng.random()
            y = 2 * x0 + x1 + rng.normal(0, 0.05) + (1.5 if i >= 1500 else 0.0)
            fh.write(json.dumps({"t": i * 2.0, "x0": x0, "x1": x1, "y": y}) + "\n")
    cfg = load_text(
        """
[schema]
task = "regression"
target = "y"
timestamp_field = "t"
features = [{ name = "x0" }, { name = "x1" }]
[model]
estimator = "sklearn.linear_model.Ridge"
metric = "mae"
[bootstrap]
min_rows = 300
[retrain]
cooldown_seconds = 5
min_new_labels = 100
min_rows_after_drift = 200
"""
    )
    out = replay(path, cfg, ReplayOptions(label_lag=10.0, progress=False))
    assert out["score"]["metric"] == "mae"
    assert out["drift"] is None
    assert [a["kind"] for a in out["alarms"]][:1] == ["concept_drift"]
    assert 1500 <= out["alarms"][0]["index"] <= 1500 + DELAY
    assert any(r["outcome"] == "deployed" for r in out["retrains"])
    # The last model, trained after the shift, is back to the noise level.
    assert out["score"]["segments"][-1]["score"] < 0.1
