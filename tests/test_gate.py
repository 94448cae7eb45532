"""The gate, table-driven: every rule passes or fails with its own reason, and it fails closed."""

from __future__ import annotations

import math

import pytest

from driftd.retrain.gate import Gate, GateConfig

CASES = [
    # (name, metric, config, candidate, champion, holdout, passed, failed rules)
    (
        "first model judged on absolute rules",
        "accuracy",
        GateConfig(threshold=0.8),
        0.85,
        None,
        100,
        True,
        [],
    ),
    (
        "first model under the threshold",
        "accuracy",
        GateConfig(threshold=0.8),
        0.75,
        None,
        100,
        False,
        ["threshold"],
    ),
    ("better than the champion", "accuracy", GateConfig(), 0.9, 0.8, 100, True, []),
    (
        "a tie passes with no required gain",
        "accuracy",
        GateConfig(min_absolute_change=0.0),
        0.8,
        0.8,
        100,
        True,
        [],
    ),
    (
        "a tie fails a required gain",
        "accuracy",
        GateConfig(min_absolute_change=0.01),
        0.8,
        0.8,
        100,
        False,
        ["vs_champion"],
    ),
    (
        "tolerated degradation",
        "accuracy",
        GateConfig(min_absolute_change=-0.02),
        0.79,
        0.8,
        100,
        True,
        [],
    ),
    ("worse than the champion", "accuracy", GateConfig(), 0.7, 0.8, 100, False, ["vs_champion"]),
    (
        "champion score 0, any gain passes relative",
        "accuracy",
        GateConfig(min_relative_change=0.1),
        0.1,
        0.0,
        100,
        True,
        [],
    ),
    (
        "champion score 0, no gain fails relative",
        "accuracy",
        GateConfig(min_relative_change=0.1),
        0.0,
        0.0,
        100,
        False,
        ["vs_champion"],
    ),
    (
        "relative gain met",
        "accuracy",
        GateConfig(min_relative_change=0.05),
        0.85,
        0.8,
        100,
        True,
        [],
    ),
    (
        "relative gain missed",
        "accuracy",
        GateConfig(min_relative_change=0.1),
        0.84,
        0.8,
        100,
        False,
        ["vs_champion"],
    ),
    ("lower is better for mae", "mae", GateConfig(threshold=2.0), 1.5, 1.8, 100, True, []),
    (
        "mae above the threshold",
        "mae",
        GateConfig(threshold=2.0),
        2.5,
        3.0,
        100,
        False,
        ["threshold"],
    ),
    ("mae worse than the champion", "mae", GateConfig(), 1.9, 1.8, 100, False, ["vs_champion"]),
    ("log loss lower is better", "log_loss", GateConfig(), 0.3, 0.4, 100, True, []),
    (
        "missing metric fails closed",
        "accuracy",
        GateConfig(threshold=0.5),
        None,
        0.8,
        100,
        False,
        ["evaluated", "threshold", "vs_champion"],
    ),
    (
        "NaN metric fails closed",
        "accuracy",
        GateConfig(),
        math.nan,
        0.8,
        100,
        False,
        ["evaluated", "vs_champion"],
    ),
    (
        "a champion that cannot be scored fails closed",
        "accuracy",
        GateConfig(threshold=0.5),
        0.9,
        math.nan,
        100,
        False,
        ["vs_champion"],
    ),
    ("holdout too small", "accuracy", GateConfig(min_holdout=50), 0.9, 0.8, 49, False, ["holdout"]),
]


@pytest.mark.parametrize(
    ("metric", "config", "candidate", "champion", "holdout", "passed", "failed"),
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_verdicts(
    metric: str,
    config: GateConfig,
    candidate: float | None,
    champion: float | None,
    holdout: int,
    passed: bool,
    failed: list[str],
) -> None:
    verdict = Gate(config, metric).judge(candidate=candidate, champion=champion, holdout=holdout)
    assert verdict.passed is passed, verdict.summary()
    assert [r.name for r in verdict.failed] == failed
    assert all(r.reason for r in verdict.rules), "every rule says why"


def test_thin_classes_in_the_holdout_fail() -> None:
    gate = Gate(GateConfig(min_holdout_per_class=5), "accuracy")
    v = gate.judge(candidate=0.9, champion=None, holdout=100, class_counts={"0": 97, "1": 3})
    assert [r.name for r in v.failed] == ["holdout"]
    assert "class(es) 1" in v.failed[0].reason


def test_a_candidate_that_does_not_load_or_is_slow_fails() -> None:
    gate = Gate(GateConfig(max_latency_ms=10), "accuracy")
    v = gate.judge(
        candidate=None, champion=None, holdout=100, loads=False, load_error="untrusted types"
    )
    assert "loads" in [r.name for r in v.failed]
    slow = gate.judge(candidate=0.9, champion=None, holdout=100, latency_ms=50.0)
    assert [r.name for r in slow.failed] == ["latency"]


def test_the_verdict_is_json_ready_without_nan() -> None:
    import json

    v = Gate(GateConfig(), "accuracy").judge(candidate=math.nan, champion=0.8, holdout=100)
    json.dumps(v.as_dict(), allow_nan=False)
    assert v.as_dict()["candidate"] is None


def test_unknown_metric_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown metric"):
        Gate(GateConfig(), "precision@k")
