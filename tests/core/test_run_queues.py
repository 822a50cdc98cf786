"""Which queue a run goes to, and what its worker's state says about its health."""

import pytest

from babylon_assets.core.run_queues import (
    CPU,
    GPU,
    QUEUE_TAG,
    SERVE,
    Health,
    UnknownQueue,
    queue_of_run,
    worker_health,
)


def test_a_runs_tag_wins_then_its_job_then_its_most_demanding_asset():
    assert queue_of_run("window_graph", [], {QUEUE_TAG: GPU}) == GPU
    assert queue_of_run("training_job", [], {}) == GPU
    assert queue_of_run("promotion_job", [], {}) == SERVE
    assert queue_of_run("window_graph", [], {}) == CPU
    # An asset backfill from the UI runs as an implicit job: its assets decide.
    assert queue_of_run("__ASSET_JOB", ["trajectories", "ruler_scores"], {}) == CPU
    assert queue_of_run("__ASSET_JOB", ["training_dataset", "trained_checkpoint"], {}) == GPU
    assert queue_of_run("__ASSET_JOB", ["policy_rollouts", "trajectories"], {}) == SERVE
    with pytest.raises(UnknownQueue, match="cpu, gpu, serve"):
        queue_of_run("window_graph", [], {QUEUE_TAG: "tpu"})


@pytest.mark.parametrize(
    ("state", "heartbeat", "health"),
    [
        ("SUCCESS", None, Health.SUCCESS),
        ("FAILURE", None, Health.FAILED),
        ("REVOKED", "gpu@host pid 1", Health.FAILED),
        # Celery says PENDING for a task it knows nothing of: a fresh heartbeat is the truth.
        ("PENDING", "gpu@host pid 1", Health.RUNNING),
        ("STARTED", "gpu@host pid 1", Health.RUNNING),
        # Started, and no heartbeat: the worker died.
        ("STARTED", None, Health.FAILED),
        # Queued and not started anywhere: unknown, never a death.
        ("PENDING", None, Health.UNKNOWN),
        ("RETRY", None, Health.UNKNOWN),
    ],
)
def test_worker_health_believes_the_heartbeat(state, heartbeat, health):
    verdict = worker_health(state, heartbeat, 15)
    assert verdict.health is health
    if health is Health.RUNNING:
        assert heartbeat in verdict.message
