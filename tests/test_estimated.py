"""The score estimated from class probabilities (CBPE): unbiased against realized labels drawn
from those probabilities, a band that is the realized score's spread, and an alarm when the
expected error rises before any label arrives."""

from __future__ import annotations

import json
import random
import sqlite3
from pathlib import Path

import httpx
import numpy as np
import pytest
from sklearn.metrics import f1_score, roc_auc_score

from driftd.config import load_text
from driftd.ingest.schema import Feature, Schema
from driftd.metrics import Metrics
from driftd.monitor import Monitor, MonitorConfig, MonitorEvent
from driftd.monitor.estimated import BAND_SE, EstimatedScore
from driftd.retrain.fit import fit_and_dump
from driftd.service.parts import STORE_FILE, assemble
from tests.conftest import DaemonProcess, config_text, make_rows, write_csv
from tests.streams import redundant


@pytest.mark.parametrize("seed", [0, 1])
def test_estimates_match_the_realized_scores_of_labels_drawn_from_the_probabilities(
    seed: int,
) -> None:
    rng = np.random.default_rng(seed)
    n = 1000
    p = rng.beta(2, 2, size=n).round(2)  # rounded: ties in the scores
    predicted = p >= 0.5
    est = EstimatedScore(window=n, min_count=10)
    est.extend(
        np.where(predicted, p, 1 - p).tolist(),
        positives=list(zip(p.tolist(), predicted.tolist(), strict=True)),
    )
    scores = est.scores()
    realized: dict[str, list[float]] = {"accuracy": [], "f1": [], "roc_auc": []}
    for _ in range(400):
        y = rng.random(n) < p
        realized["accuracy"].append(float((y == predicted).mean()))
        realized["f1"].append(float(f1_score(y, predicted)))
        realized["roc_auc"].append(float(roc_auc_score(y, p)))
    for metric, values in realized.items():
        got, spread = scores[metric], float(np.std(values))
        assert got.value == pytest.approx(np.mean(values), abs=0.003), metric
        half_width = (got.upper - got.value) / BAND_SE
        assert half_width == pytest.approx(spread, rel=0.2), metric


def test_no_estimate_before_enough_predictions_and_accuracy_only_beyond_two_classes() -> None:
    est = EstimatedScore(window=100, min_count=50)
    est.extend([0.9] * 49, positives=None)
    assert est.scores() == {}
    est.extend([0.7], positives=None)
    assert set(est.scores()) == {"accuracy"}


def covariate_shift_stream(
    seed: int, n: int, shift_at: int
) -> tuple[list[dict[str, float]], list[int], list[dict[str, float]]]:
    """A logistic model's predictions: confident far from the boundary, then the inputs move
    onto it (covariate shift), so confidence, and accuracy, fall with no label."""
    rng = random.Random(seed)
    feats, preds, probas = [], [], []
    for i in range(n):
        x = rng.gauss(3.0 if i < shift_at else 0.0, 1.0) * rng.choice((-1, 1))
        p1 = 1 / (1 + np.exp(-2 * x))
        feats.append({"x": x})
        preds.append(int(p1 >= 0.5))
        probas.append({"0": 1 - p1, "1": p1})
    return feats, preds, probas


def feed(
    monitor: Monitor,
    stream: tuple[list[dict[str, float]], list[int], list[dict[str, float]]],
    start: int,
    stop: int,
    batch: int,
) -> list[MonitorEvent]:
    """Records ``start..stop`` of a stream with their predictions and probabilities, no label."""
    feats, preds, probas = stream
    events = []
    for lo in range(start, stop, batch):
        hi = lo + batch
        events += monitor.update(lo, feats[lo:hi], preds[lo:hi], now=0.0, probas=probas[lo:hi])
    return events


def test_a_covariate_shift_raises_an_estimated_performance_alarm_without_labels() -> None:
    monitor = Monitor(Schema(features=(Feature("x"),)), MonitorConfig())
    stream = covariate_shift_stream(seed=3, n=8000, shift_at=4000)
    events = feed(monitor, stream, 0, 4000, 500)
    before = monitor.estimated_scores["accuracy"]
    events += feed(monitor, stream, 4000, 8000, 500)
    alarms = [e for e in events if e.alarm == "performance_drop_estimated"]
    assert alarms, [e.as_dict() for e in events]
    assert 4000 <= alarms[0].index < 4600, alarms[0].as_dict()
    # the mean-shift split of the expected error, not the detector's window edge
    assert abs(alarms[0].change_point - 4000) <= 100, alarms[0].as_dict()
    after = monitor.estimated_scores["accuracy"]
    assert before.value > 0.95 and after.value < 0.85, (before, after)
    assert after.lower <= after.value <= after.upper
    assert set(monitor.status()["estimated_score"]) == {"accuracy", "f1", "roc_auc"}


def test_a_stationary_stream_raises_no_estimated_alarm_and_a_rebaseline_starts_over() -> None:
    monitor = Monitor(Schema(features=(Feature("x"),)), MonitorConfig())
    stream = covariate_shift_stream(seed=4, n=100_000, shift_at=100_000)
    events = feed(monitor, stream, 0, 100_000, 1000)
    assert [e for e in events if e.signal == "estimated"] == []
    monitor.rebaseline(100_000)
    assert monitor.estimated_scores == {}


def test_the_daemon_stores_each_predictions_probabilities_and_exports_the_estimate(
    tmp_path: Path,
) -> None:
    csv_path = write_csv(tmp_path / "boot.csv", make_rows(1000, seed=1))
    cfg = tmp_path / "driftd.toml"
    cfg.write_text(config_text(tmp_path / "state", bootstrap=str(csv_path)))
    daemon = DaemonProcess(cfg).start()
    try:
        with daemon.client() as c:
            rows = [r["features"] for r in make_rows(100, seed=5)]
            answer = c.post(
                "/v1/predict", json={"instances": rows, "ids": [f"p{i}" for i in range(100)]}
            )
            assert answer.status_code == 200, answer.text
            status = c.get("/v1/status").json()
            estimate = status["monitor"]["estimated_score"]["accuracy"]
            assert estimate["lower"] <= estimate["value"] <= estimate["upper"]
            assert estimate["count"] == 100
            text = c.get("/metrics").text
            assert 'driftd_estimated_score{metric="accuracy"}' in text
            assert 'driftd_estimated_score_band{bound="lower",metric="roc_auc"}' in text
        db = sqlite3.connect(tmp_path / "state" / STORE_FILE)
        try:
            stored = db.execute("SELECT prediction, proba FROM records WHERE rid='p0'").fetchone()
        finally:
            db.close()
        proba = json.loads(stored[1])
        assert set(proba) == {"0", "1"} and sum(proba.values()) == pytest.approx(1.0)
        assert proba[str(json.loads(stored[0]))] >= 0.5
    finally:
        daemon.stop()


def test_probabilities_sent_with_records_are_validated_and_feed_the_estimate(
    tmp_path: Path,
) -> None:
    csv_path = write_csv(tmp_path / "boot.csv", make_rows(1000, seed=1))
    cfg = tmp_path / "driftd.toml"
    cfg.write_text(config_text(tmp_path / "state", bootstrap=str(csv_path)))
    daemon = DaemonProcess(cfg).start()
    feats = make_rows(1, seed=2)[0]["features"]

    def send(**fields: object) -> httpx.Response:
        return c.post("/v1/records", json=[{"features": feats, **fields}])

    try:
        with daemon.client() as c:
            cases = [
                ({"prediction": 1, "proba": {"0": 0.3, "1": 0.6}}, "proba_sum"),
                ({"prediction": 1, "proba": {"1": 1.0}}, "proba_classes"),
                ({"prediction": 1, "proba": {"0": 0.5, "1": 0.25, "2": 0.25}}, "proba_classes"),
                ({"prediction": 1, "proba": {"0": -0.5, "1": 1.5}}, "greater_than_equal"),
                ({"prediction": 1, "proba": {"0": 0.5, "1": "0.5"}}, "float_type"),
            ]
            for fields, kind in cases:
                r = send(**fields)
                assert r.status_code == 422, (fields, r.text)
                assert [(e["field"], e["type"]) for e in r.json()["errors"]][:1] == [
                    ("proba", kind)
                ], (fields, r.json())
            batch = [
                {"features": feats, "prediction": 1, "proba": {"0": 0.2, "1": 0.8}}
                for _ in range(60)
            ]
            assert c.post("/v1/records", json=batch).status_code == 200
            estimate = c.get("/v1/status").json()["monitor"]["estimated_score"]["accuracy"]
            assert estimate["value"] == pytest.approx(0.8)
            assert estimate["count"] == 60
    finally:
        daemon.stop()


def test_the_daemons_estimate_of_an_overconfident_model_is_right_once_calibrated(
    tmp_path: Path,
) -> None:
    """Naive Bayes on redundant features gives its predictions a mean probability of 0.94
    where 0.68 of them are right. Its first deploy calibrates it on the holdout, and the
    estimated accuracy of the next 5,000 predictions is within 0.02 of their realized accuracy
    (0.017 here; over 20 seeds the gap averages 0.003 with a spread of 0.012); from the raw
    probabilities, which the store keeps, the estimate would be off by 0.26."""
    rng = np.random.default_rng(0)
    X_boot, y_boot = redundant(rng, 4000)
    names = [f"x{i}" for i in range(X_boot.shape[1])]
    boot = tmp_path / "boot.csv"
    lines = [",".join([*names, "label"])]
    lines += [
        ",".join([*map(repr, row.tolist()), str(y)]) for row, y in zip(X_boot, y_boot, strict=True)
    ]
    boot.write_text("\n".join(lines) + "\n")
    features = ", ".join(f'{{ name = "{n}", kind = "numeric" }}' for n in names)
    sections = {
        "schema": f'task = "classification"\nfeatures = [{features}]',
        "model": 'estimator = "sklearn.naive_bayes.GaussianNB"',
        "bootstrap": f'data = "{boot}"\nmin_rows = 200\nrows = 4000',
        "retrain": "holdout_fraction = 0.5",
        "monitor": "live_window = 5000",
    }
    text = config_text(tmp_path / "state", bootstrap=str(boot), sections=sections)
    parts = assemble(
        load_text(text, env={}), Metrics(), state_dir=tmp_path / "state", fit=fit_and_dump
    )
    try:
        assert parts.bootstrap.run() == "deployed"
        live = parts.models.current
        assert live is not None and live.calibrator is not None
        record = live.manifest["calibration"]
        assert record["applied"] and record["ece_after"] < record["ece_before"]
        assert (tmp_path / "state" / "models" / "v000001" / "calibration.json").exists()

        X_new, y_new = redundant(rng, 5000)
        engine, predicted = parts.engine, []
        for start in range(0, 5000, 500):
            rows = [
                dict(zip(names, row.tolist(), strict=True)) for row in X_new[start : start + 500]
            ]
            ids = [f"p{start + k}" for k in range(len(rows))]
            predicted += engine.run(engine.predict, rows, ids, 1_000_000.0).predictions
        realized = float(np.mean(np.asarray(predicted) == y_new))
        estimate = engine.monitor.estimated_scores["accuracy"]
        assert estimate.count == 5000
        assert abs(estimate.value - realized) < 0.02, (estimate, realized)
        assert estimate.lower <= realized <= estimate.upper

    finally:
        parts.close()
    db = sqlite3.connect(tmp_path / "state" / STORE_FILE)
    try:
        stored = db.execute("SELECT prediction, proba FROM records").fetchall()
    finally:
        db.close()
    raw = float(np.mean([json.loads(proba)[str(json.loads(pred))] for pred, proba in stored]))
    assert raw - realized > 0.1, (raw, realized)


def test_the_positive_class_is_the_last_of_the_models_class_order() -> None:
    """scikit-learn's positive class is ``classes_[1]``; for the strings "10" and "9" that is
    "9". Class names that only look numeric (``--1``, ``²``) are names like any other."""
    for names in (("10", "9"), ("--1", "²")):
        monitor = Monitor(Schema(features=(Feature("x"),)), MonitorConfig())
        probas = [{names[0]: 0.2, names[1]: 0.8}] * 100
        monitor.update(0, [{"x": 0.0}] * 100, [names[1]] * 100, now=0.0, probas=probas)
        scores = monitor.estimated_scores
        assert scores["accuracy"].value == pytest.approx(0.8)
        assert scores["f1"].value == pytest.approx(2 * 80 / (100 + 80))  # 9 is the positive one


def test_a_restart_under_another_live_window_applies_it_to_the_estimate() -> None:
    schema = Schema(features=(Feature("x"),))
    monitor = Monitor(schema, MonitorConfig(live_window=1000))
    probas = [{"0": 0.1, "1": 0.9}] * 500 + [{"0": 0.4, "1": 0.6}] * 100
    monitor.update(0, [{"x": 0.0}] * 600, [1] * 600, now=0.0, probas=probas)
    assert monitor.estimated_scores["accuracy"].count == 600
    restored = Monitor.loads(monitor.dumps(), schema, MonitorConfig(live_window=100))
    estimate = restored.estimated_scores["accuracy"]
    assert estimate.count == 100
    assert estimate.value == pytest.approx(0.6)  # the most recent 100 kept
