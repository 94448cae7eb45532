"""The retrain policy on a fake clock and fake counts: single flight, a cooldown counted in
labelled rows, backoff, ties, drift regimes and their deferrals, restart."""

from __future__ import annotations

from driftd.retrain.policy import DriftDue, PolicyConfig, RetrainPolicy

CFG = PolicyConfig(
    cooldown_labels=600,
    backoff_max_labels=6000,
    min_new_labels=100,
    min_rows_after_drift=400,
    window_rows=3000,
)


def started(p: RetrainPolicy, now: float = 0.0, position: int = 0) -> None:
    """Start the waiting job and check that one started."""
    assert p.start(now, since_attempt=10**9, position=position) is not None


def test_one_job_runs_and_at_most_one_waits_with_every_reason_recorded() -> None:
    p = RetrainPolicy(CFG)
    first = p.request("operator", now=0, new_labels=0, since_attempt=0, operator=True)
    job = p.start(1, since_attempt=0, position=0)
    assert job is not None and job.id == first.job_id
    second = p.request("operator", now=2, new_labels=0, since_attempt=0, operator=True)
    third = p.request("schedule", now=3, new_labels=500, since_attempt=600)
    assert second.outcome == "queued"
    assert third.outcome == "merged" and third.job_id == second.job_id
    assert p.start(4, since_attempt=600, position=0) is None, "single flight"
    p.finish(job, "deployed", now=5)
    waiting = p.start(6, since_attempt=0, position=0)
    assert waiting is not None and waiting.reasons == ["operator", "schedule"]


def test_the_cooldown_is_counted_in_labelled_rows_so_it_means_the_same_at_any_rate() -> None:
    """600 labelled rows after the record the last attempt started at: at 2,000 records/s
    that is 0.3 s, at 10 records/s a minute; no clock reading enters the decision."""
    for seconds_per_row in (1 / 2000, 1 / 10):
        p = RetrainPolicy(CFG)
        p.request("schedule", now=0, new_labels=500, since_attempt=0)
        job = p.start(0, since_attempt=0, position=5000)
        assert job is not None and p.attempt_position == 5000
        p.finish(job, "deployed", now=0)
        early = p.request("schedule", now=599 * seconds_per_row, new_labels=599, since_attempt=599)
        assert (early.outcome, early.reason) == ("skipped", "cooldown")
        late = p.request("schedule", now=600 * seconds_per_row, new_labels=600, since_attempt=600)
        assert late.outcome == "queued"


def test_cooldown_seconds_is_an_optional_floor_on_the_wall_clock() -> None:
    p = RetrainPolicy(PolicyConfig(cooldown_labels=10, cooldown_seconds=60, min_new_labels=0))
    p.request("schedule", now=0, new_labels=0, since_attempt=0)
    started(p)
    assert p.running is not None
    p.finish(p.running, "deployed", now=1)
    assert p.request("schedule", now=30, new_labels=500, since_attempt=500).reason == "cooldown"
    assert p.request("schedule", now=60, new_labels=500, since_attempt=500).outcome == "queued"


def test_too_few_new_labels_is_a_skip_reason() -> None:
    d = RetrainPolicy(CFG).request("schedule", now=0, new_labels=99, since_attempt=0)
    assert (d.outcome, d.reason) == ("skipped", "too_few_new_labels")


def test_consecutive_rejections_back_off_exponentially_up_to_the_cap() -> None:
    p = RetrainPolicy(CFG)
    waits = []
    for _ in range(6):
        p.request("operator", now=0, new_labels=0, since_attempt=0, operator=True)
        started(p)
        assert p.running is not None
        p.finish(p.running, "rejected", now=0)
        waits.append(p.cooldown_labels())
        d = p.request("schedule", now=1, new_labels=500, since_attempt=waits[-1] - 1)
        assert (d.outcome, d.reason) == ("skipped", "backoff")
    assert waits == [1200, 2400, 4800, 6000, 6000, 6000]
    p.request("operator", now=0, new_labels=0, since_attempt=0, operator=True)
    started(p)
    assert p.running is not None
    p.finish(p.running, "deployed", now=0)
    assert p.cooldown_labels() == 600, "a deploy resets the backoff"


def test_a_tie_rejection_does_not_double_the_next_wait() -> None:
    """0.989 against 0.990 says nothing against the next candidate: the wait stays one
    cooldown, and the next drift's retrain is not held back."""
    p = RetrainPolicy(CFG)
    p.request("operator", now=0, new_labels=0, since_attempt=0, operator=True)
    started(p)
    assert p.running is not None
    p.finish(p.running, "rejected", now=0, back_off=False)
    assert p.consecutive_rejections == 0 and p.cooldown_labels() == 600
    p.on_drift(change_point=2000, now=1)
    assert p.drift_due(400, now=1, new_labels=600, since_attempt=600) == DriftDue("drift")


def test_a_drift_retrain_rejected_for_saying_nothing_asks_again_when_its_rows_double() -> None:
    """A new regime whose holdout is too small to judge on (a rare class of a new concept), or
    a tie, says nothing against retraining: no cooldown and no backoff hold the regime's next
    try, which comes once its rows have doubled, as a growth retrain would."""
    p = RetrainPolicy(CFG)
    p.on_drift(change_point=10_000, now=0)
    p.request("drift", now=0, new_labels=500, since_attempt=500, drift_point=10_000)
    job = p.start(0, since_attempt=500, position=10_500)
    assert job is not None
    p.finish(job, "rejected", now=1, trained_rows=500, back_off=False)
    assert p.consecutive_rejections == 0
    assert p.drift_due(999, now=2, new_labels=499, since_attempt=499) == DriftDue()
    assert p.drift_due(1000, now=2, new_labels=500, since_attempt=500) == DriftDue("drift_growth")


def test_a_challenger_does_not_hold_back_the_drift_retrain_that_follows_it() -> None:
    """Found on the default config's STAGGER replay: a challenger fitted just before a change
    started the 1,000-label cooldown, and the drift's retrain waited for it."""
    p = RetrainPolicy(PolicyConfig())
    p.request("challenger", now=0, new_labels=5_000, since_attempt=5_000)
    job = p.start(0, since_attempt=5_000, position=10_000)
    assert job is not None
    p.finish(job, "rejected", now=1, trained_until=10_000, back_off=False)
    p.on_drift(change_point=10_050, now=2)
    due = p.drift_due(400, now=3, new_labels=450, since_attempt=450)
    assert due == DriftDue("drift")


def test_a_skipped_job_does_not_start_a_cooldown() -> None:
    p = RetrainPolicy(CFG)
    p.request("schedule", now=0, new_labels=500, since_attempt=0)
    job = p.start(0, since_attempt=0, position=100)
    assert job is not None
    p.finish(job, "skipped", now=1)
    assert p.last_attempt is None and p.attempt_position == 0
    assert p.request("schedule", now=2, new_labels=500, since_attempt=0).outcome == "queued"


def test_drift_regime_waits_for_rows_then_retrains_as_they_double() -> None:
    p = RetrainPolicy(CFG)
    p.on_drift(change_point=10_000, now=0)
    due = {"now": 0.0, "new_labels": 1000, "since_attempt": 1000}
    assert p.drift_due(399, **due) == DriftDue()
    assert p.drift_due(400, **due) == DriftDue("drift")
    p.request("drift", now=0, new_labels=400, since_attempt=400, drift_point=10_000)
    assert p.drift_due(500, **due) == DriftDue(), "a job for this regime already waits"
    job = p.start(0, since_attempt=400, position=10_400)
    assert job is not None and job.drift_point == 10_000
    p.finish(job, "deployed", now=1, trained_rows=400)
    assert p.drift_due(799, now=1, new_labels=399, since_attempt=399) == DriftDue()
    growth = p.drift_due(800, now=2, new_labels=400, since_attempt=400)
    assert growth == DriftDue("drift_growth"), "growth skips the cooldown"
    p.request("drift_growth", now=2, new_labels=400, since_attempt=400, drift_point=10_000)
    assert p.start(2, since_attempt=400, position=10_800) is not None
    assert p.running is not None
    p.finish(p.running, "rejected", now=3)
    held = p.drift_due(800, now=4, new_labels=400, since_attempt=0)
    assert held == DriftDue(deferred="backoff"), "but not the backoff after a rejection"
    p.request("drift_growth", now=5, new_labels=400, since_attempt=1200, drift_point=10_000)
    job = p.start(5, since_attempt=1200, position=12_000)
    assert job is not None
    p.finish(job, "deployed", now=6, trained_rows=3000)
    assert p.regime is None, "the regime ends once the window is full"


def test_a_regime_closes_when_doubling_would_pass_the_window_and_challengers_resume() -> None:
    """From 19,200 rows the next doubling needs 38,400, past the 20,000-row window: the regime
    would stay open for good and hold the challengers back (on a slow drift no retrain came
    in the last 11,200 records of the stream). It closes instead, and a challenger comes
    every 5,000 labels again."""
    p = RetrainPolicy(PolicyConfig())
    p.on_drift(change_point=0, now=0)
    due = {"now": 0.0, "new_labels": 5_000, "since_attempt": 5_000}
    asked = []
    for labelled in range(300, 40_000, 100):
        want = p.drift_due(labelled, **due)
        if want.reason is None:
            continue
        asked.append(labelled)
        p.request(want.reason, now=0, new_labels=5_000, since_attempt=5_000, drift_point=0)
        job = p.start(0, since_attempt=5_000, position=labelled)
        assert job is not None
        p.finish(job, "deployed", now=0, trained_rows=min(labelled, p.config.window_rows))
        if p.regime is None:
            break
    assert asked == [300, 600, 1_200, 2_400, 4_800, 9_600, 19_200]
    assert p.regime is None
    assert not p.challenger_due(now=0, new_labels=4_999, since_attempt=4_999)
    assert p.challenger_due(now=0, new_labels=5_000, since_attempt=5_000)


def test_a_due_drift_retrain_held_by_the_cooldown_is_deferred_once_then_asked_for() -> None:
    """Never dropped: the first check that finds it held says why (for the audit log), later
    checks stay quiet, and it is asked for as soon as the cooldown's labels are in."""
    p = RetrainPolicy(CFG)
    p.request("schedule", now=0, new_labels=500, since_attempt=0)
    started(p, position=9_000)
    assert p.running is not None
    p.finish(p.running, "deployed", now=1, trained_until=9_000)
    p.on_drift(change_point=9_200, now=2)
    due = {"now": 3.0, "new_labels": 450}
    assert p.drift_due(400, since_attempt=450, **due) == DriftDue(deferred="cooldown")
    assert p.drift_due(420, since_attempt=470, **due) == DriftDue(), "reported once"
    assert p.drift_due(550, since_attempt=600, **due) == DriftDue("drift")


def test_a_second_drift_after_the_first_is_retrained_at_any_rate() -> None:
    """The issue's cause 1: with the old 120 s cooldown every drift after the first waited
    240,000 records at 2,000 records/s. Counted in labels, the second drift 15,000 records
    later retrains whatever the rate."""
    for rate in (2000.0, 10.0):
        p = RetrainPolicy(PolicyConfig())
        p.on_drift(change_point=5_000, now=5_000 / rate)
        assert p.drift_due(400, now=5_400 / rate, new_labels=5_400, since_attempt=0).reason
        p.request("drift", now=5_400 / rate, new_labels=5_400, since_attempt=0, drift_point=5_000)
        job = p.start(5_400 / rate, since_attempt=0, position=5_400)
        assert job is not None
        p.finish(job, "deployed", now=5_400 / rate, trained_until=5_400, trained_rows=400)
        p.on_drift(change_point=20_000, now=20_000 / rate)
        due = p.drift_due(400, now=20_400 / rate, new_labels=15_000, since_attempt=15_000)
        assert due == DriftDue("drift"), rate


def test_a_deploy_of_another_trigger_leaves_the_drift_regime_open() -> None:
    """A scheduled deploy that lands after a change point was trained on the old concept: the
    regime stays open and its own retrain follows."""
    p = RetrainPolicy(CFG)
    p.request("schedule", now=0, new_labels=500, since_attempt=0)
    started(p, position=10_000)
    p.on_drift(change_point=9_800, now=1)
    assert p.running is not None
    p.finish(p.running, "deployed", now=2, trained_until=10_000, trained_rows=3000)
    assert p.regime is not None and p.regime.point == 9_800 and p.regime.trained_rows == 0
    assert p.drift_due(400, now=3, new_labels=600, since_attempt=600) == DriftDue("drift")


def test_state_survives_a_restart_so_a_restart_cannot_burst() -> None:
    p = RetrainPolicy(CFG)
    p.request("schedule", now=0, new_labels=500, since_attempt=0)
    job = p.start(0, since_attempt=0, position=700)
    assert job is not None
    p.request("operator", now=1, new_labels=0, since_attempt=0, operator=True)
    p.on_drift(5000, now=1)
    saved = p.to_dict()
    q = RetrainPolicy.from_dict(CFG, saved)
    assert q.running is None, "a job interrupted by the restart is not resumed"
    assert q.pending is not None and q.pending.reasons == ["operator"]
    assert (q.attempt_position, q.cooldown_labels()) == (700, 600)
    assert q.request("schedule", now=10, new_labels=500, since_attempt=0).outcome == "merged"
    assert q.regime is not None and q.regime.point == 5000
    fresh = q.request("operator", now=11, new_labels=0, since_attempt=0, operator=True)
    assert fresh.job_id == q.pending.id
    r = RetrainPolicy.from_dict(CFG, q.to_dict())
    job2 = r.start(12, since_attempt=0, position=800)
    assert job2 is not None
    r.request("operator", now=13, new_labels=0, since_attempt=0, operator=True)
    assert r.pending is not None and r.pending.id not in (job.id, job2.id), "ids never repeat"


def test_a_cancelled_job_waits_again_with_the_reasons_that_came_and_survives_a_restart() -> None:
    """A shutdown cut the job short: it is queued again in front (merged with the request that
    came while it ran), its attempt is not counted, and a restored policy starts it."""
    p = RetrainPolicy(CFG)
    p.request("schedule", now=0, new_labels=500, since_attempt=0)
    first = p.start(1, since_attempt=0, position=100)
    assert first is not None
    p.finish(first, "deployed", now=2)
    p.request("schedule", now=100, new_labels=500, since_attempt=600)
    job = p.start(100, since_attempt=600, position=800)
    assert job is not None
    p.request("drift_growth", now=101, new_labels=500, since_attempt=0, drift_point=42)
    p.finish(job, "cancelled", now=102)
    assert p.running is None and (p.last_attempt, p.attempt_position) == (1, 100)
    restored = RetrainPolicy.from_dict(CFG, p.to_dict())
    again = restored.start(103, since_attempt=700, position=900)
    assert again is not None and again.id == job.id
    assert (again.reasons, again.drift_point) == (["schedule", "drift_growth"], 42)


def test_a_challenger_is_due_every_quarter_window_of_new_labels_between_regimes() -> None:
    """Between drift regimes, and never while the cooldown of another job would refuse it
    (asking is queuing: a poll does not fill the audit log with skips)."""
    p = RetrainPolicy(CFG)
    assert p.challenger_every() == 750, "a quarter of window_rows by default"
    assert not p.challenger_due(now=0, new_labels=749, since_attempt=749)
    assert p.challenger_due(now=0, new_labels=750, since_attempt=750)
    p.request("challenger", now=0, new_labels=750, since_attempt=750)
    assert not p.challenger_due(now=0, new_labels=750, since_attempt=750), "one waits already"
    started(p, position=750)
    assert p.running is not None
    p.finish(p.running, "rejected", now=1, trained_until=750, back_off=False)
    # A challenger starts no cooldown: the next one waits for a quarter window of labels newer
    # than this one's training (the caller's new_labels), not for the cooldown's.
    assert not p.challenger_due(now=2, new_labels=749, since_attempt=749)
    assert p.challenger_due(now=2, new_labels=750, since_attempt=750)
    p.on_drift(change_point=1400, now=3)
    assert not p.challenger_due(now=3, new_labels=900, since_attempt=900), "a regime refits"
    off = RetrainPolicy(PolicyConfig(challenger_labels=0))
    assert not off.challenger_due(now=0, new_labels=10**6, since_attempt=10**6)
