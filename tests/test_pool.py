"""The candidate pool's plan and choice: which windows a retrain fits, and which candidate meets
the gate."""

from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from driftd.retrain.pool import Entry, PoolConfig, choose, plan


@given(
    train=st.integers(min_value=1, max_value=200_000),
    since=st.one_of(st.none(), st.integers(min_value=0, max_value=200_000)),
    slots=st.integers(min_value=1, max_value=8),
)
def test_a_plan_is_bounded_distinct_and_always_holds_the_whole_window(
    train: int, since: int | None, slots: int
) -> None:
    """Whatever the window and change point: at most ``max_windows`` members, largest first, no
    two within 10% of each other, none longer than the window; the whole window is one of them
    unless a single slot goes to the rows since the change point."""
    members = plan(PoolConfig(max_windows=slots), train_rows=train, since_change=since)
    assert len(members) <= slots
    if slots > 1 or since is None or since >= train:
        assert members[0].name == "window" and members[0].rows == train
    rows = [m.rows for m in members]
    assert rows == sorted(rows, reverse=True) and all(0 < r <= train for r in rows)
    assert all(abs(a - b) > 0.1 * b for a, b in itertools.pairwise(rows))


def test_a_drift_job_fits_the_rows_since_the_change_and_a_growth_sequence_to_the_window() -> None:
    members = plan(PoolConfig(), train_rows=16_000, since_change=1_000)
    assert [m.rows for m in members] == [16_000, 6_350, 2_520, 1_000]
    assert members[-1].name == "since_change"


def test_without_windows_a_drift_job_fits_only_the_rows_since_the_change() -> None:
    """The behaviour before the pool: one candidate, on the new regime's rows."""
    config = PoolConfig(windows=False)
    assert [m.name for m in plan(config, train_rows=5_000, since_change=400)] == ["since_change"]
    assert [m.name for m in plan(config, train_rows=5_000, since_change=None)] == ["window"]


def test_the_best_score_wins_and_a_near_tie_goes_to_the_candidate_with_more_rows() -> None:
    entries = [Entry("window", 16_000, 0.900), Entry("recent_4000", 4_000, 0.903)]
    assert choose(entries, "accuracy", tie_margin=0.0).index == 1
    near = choose(entries, "accuracy", tie_margin=0.005)
    assert near.index == 0 and "most rows" in near.why


def test_a_loss_metric_picks_the_lowest_and_failed_candidates_are_passed_over() -> None:
    entries = [Entry("window", 1_000, 3.0), Entry("since_change", 300, math.nan)]
    entries.append(Entry("online", 5_000, 2.5))
    pick = choose(entries, "mae", tie_margin=0.0)
    assert pick.index == 2 and pick.why.startswith("best mae on the holdout: 2.5000")
    with pytest.raises(ValueError, match="no candidate"):
        choose([Entry("window", 10, math.nan)], "accuracy", tie_margin=0.0)
