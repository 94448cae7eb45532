"""The retrain policy on a fake clock: single flight, cooldown, backoff, drift regimes, restart."""

from __future__ import annotations

from driftd.retrain.policy import PolicyConfig, RetrainPolicy

CFG = PolicyConfig(
    cooldown_seconds=60,
    backoff_max_seconds=600,
    min_new_labels=100,
    min_rows_after_drift=400,
    window_rows=3000,
)


def test_one_job_runs_and_at_most_one_waits_with_every_reason_recorded() -> None:
    p = RetrainPolicy(CFG)
    first = p.request("operator", now=0, new_labels=0, operator=True)
    job = p.start(1)
    assert job is not None and job.id == first.job_id
    second = p.request("operator", now=2, new_labels=0, operator=True)
    third = p.request("schedule", now=3, new_labels=500)
    assert second.outcome == "queued"
    assert third.outcome == "merged" and third.job_id == second.job_id
    assert p.start(4) is None, "single flight: nothing starts while a job runs"
    p.finish(job, "deployed", now=5)
    waiting = p.start(6)
    assert waiting is not None and waiting.reasons == ["operator", "schedule"]


def test_cooldown_after_every_attempt_skips_non_operator_requests() -> None:
    p = RetrainPolicy(CFG)
    p.request("schedule", now=0, new_labels=500)
    job = p.start(0)
    assert job is not None
    p.finish(job, "deployed", now=10)
    d = p.request("schedule", now=30, new_labels=500)
    assert (d.outcome, d.reason) == ("skipped", "cooldown")
    assert p.request("schedule", now=61, new_labels=500).outcome == "queued"


def test_too_few_new_labels_is_a_skip_reason() -> None:
    d = RetrainPolicy(CFG).request("schedule", now=0, new_labels=99)
    assert (d.outcome, d.reason) == ("skipped", "too_few_new_labels")


def test_consecutive_rejections_back_off_exponentially_up_to_the_cap() -> None:
    p = RetrainPolicy(CFG)
    t = 0.0
    waits = []
    for _ in range(6):
        p.request("operator", now=t, new_labels=0, operator=True)
        job = p.start(t)
        assert job is not None
        p.finish(job, "rejected", now=t)
        waits.append(p.cooldown_until() - t)
        d = p.request("schedule", now=t + 1, new_labels=500)
        assert (d.outcome, d.reason) == ("skipped", "backoff")
    assert waits == [120, 240, 480, 600, 600, 600]
    p.request("operator", now=t, new_labels=0, operator=True)
    job = p.start(t)
    assert job is not None
    p.finish(job, "deployed", now=t)
    assert p.cooldown_until() - t == 60, "a deploy resets the backoff"


def test_a_skipped_job_does_not_start_a_cooldown() -> None:
    p = RetrainPolicy(CFG)
    p.request("schedule", now=0, new_labels=500)
    job = p.start(0)
    assert job is not None
    p.finish(job, "skipped", now=1)
    assert p.request("schedule", now=2, new_labels=500).outcome == "queued"


def test_drift_regime_waits_for_rows_then_retrains_as_they_double() -> None:
    p = RetrainPolicy(CFG)
    p.on_drift(change_point=10_000, now=0)
    assert p.drift_due(399, now=0) is None
    assert p.drift_due(400, now=0) == "drift"
    p.request("drift", now=0, new_labels=400, drift_point=10_000)
    assert p.drift_due(500, now=0) is None, "a job for this regime already waits"
    job = p.start(0)
    assert job is not None and job.drift_point == 10_000
    p.finish(job, "deployed", now=1, trained_rows=400)
    assert p.drift_due(799, now=100) is None
    assert p.drift_due(800, now=2) == "drift_growth", "growth skips the cooldown"
    assert p.request("drift_growth", now=2, new_labels=400, drift_point=10_000).outcome == "queued"
    assert p.start(2) is not None
    assert p.running is not None
    p.finish(p.running, "rejected", now=3)
    assert p.drift_due(800, now=4) is None, "but not the backoff after a rejection"
    p.request("drift_growth", now=300, new_labels=400, drift_point=10_000)
    job = p.start(300)
    assert job is not None
    p.finish(job, "deployed", now=301, trained_rows=3000)
    assert p.regime is None, "the regime ends once the window is full"


def test_state_survives_a_restart_so_a_restart_cannot_burst() -> None:
    p = RetrainPolicy(CFG)
    p.request("schedule", now=0, new_labels=500)
    job = p.start(0)
    assert job is not None
    p.request("operator", now=1, new_labels=0, operator=True)
    p.on_drift(5000, now=1)
    saved = p.to_dict()
    q = RetrainPolicy.from_dict(CFG, saved)
    assert q.running is None, "a job interrupted by the restart is not resumed"
    assert q.pending is not None and q.pending.reasons == ["operator"]
    assert q.cooldown_until() == 60
    assert q.request("schedule", now=10, new_labels=500).outcome == "merged"
    assert q.regime is not None and q.regime.point == 5000
    fresh = q.request("operator", now=11, new_labels=0, operator=True)
    assert fresh.job_id == q.pending.id
    r = RetrainPolicy.from_dict(CFG, q.to_dict())
    job2 = r.start(12)
    assert job2 is not None
    r.request("operator", now=13, new_labels=0, operator=True)
    assert r.pending is not None and r.pending.id not in (job.id, job2.id), "ids never repeat"


def test_a_cancelled_job_waits_again_with_the_reasons_that_came_and_survives_a_restart() -> None:
    """A shutdown cut the job short: it is queued again in front (merged with the request that
    came while it ran), its attempt is not counted, and a restored policy starts it."""
    p = RetrainPolicy(CFG)
    p.request("schedule", now=0, new_labels=500)
    first = p.start(1)
    assert first is not None
    p.finish(first, "deployed", now=2)
    p.request("schedule", now=100, new_labels=500)
    job = p.start(100)
    assert job is not None
    p.request("drift_growth", now=101, new_labels=500, drift_point=42)
    p.finish(job, "cancelled", now=102)
    assert p.running is None and p.last_attempt == 1
    restored = RetrainPolicy.from_dict(CFG, p.to_dict())
    again = restored.start(103)
    assert again is not None and again.id == job.id
    assert (again.reasons, again.drift_point) == (["schedule", "drift_growth"], 42)
