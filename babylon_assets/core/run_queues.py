"""Which worker queue a run goes to, and what a run's worker's state says about its health (issue 21). No Dagster,
no Celery here: the rules the Celery run launcher applies.

Queues: `cpu` (the window graph, the dataset), `gpu` (training), `serve` (evaluation, deploy and rollouts: pinned
to the host that runs the gateway and its model servers).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import Enum

CPU, GPU, SERVE = "cpu", "gpu", "serve"
QUEUES = (CPU, GPU, SERVE)
# dagster-celery's own tag: the launcher sends a run to the queue it names.
QUEUE_TAG = "dagster-celery/queue"

QUEUE_OF_JOB: dict[str, str] = {
    "window_graph": CPU,
    "training_dataset_job": CPU,
    "training_job": GPU,
    "promotion_job": SERVE,
    "rollouts_job": SERVE,
}
# For runs of no named job (an asset backfill from the UI runs its assets as an implicit job): the most demanding
# queue any of its assets needs.
QUEUE_OF_ASSET: dict[str, str] = {
    "trained_checkpoint": GPU,
    "checkpoint_evaluation": SERVE,
    "deployed_model": SERVE,
    "policy_rollouts": SERVE,
}
_PRECEDENCE = (GPU, SERVE, CPU)


class UnknownQueue(ValueError):
    """A run tagged with a queue no worker listens on."""


def queue_of_run(job_name: str, asset_names: Iterable[str], tags: Mapping[str, str]) -> str:
    """The queue a run goes to: its tag when it has one, else its job's, else the most demanding of its assets'."""
    tagged = tags.get(QUEUE_TAG)
    if tagged is not None:
        if tagged not in QUEUES:
            raise UnknownQueue(f"{QUEUE_TAG}={tagged!r}: the queues are {', '.join(QUEUES)}")
        return tagged
    if job_name in QUEUE_OF_JOB:
        return QUEUE_OF_JOB[job_name]
    wanted = {QUEUE_OF_ASSET.get(name, CPU) for name in asset_names}
    return next((queue for queue in _PRECEDENCE if queue in wanted), CPU)


class Health(Enum):
    """What the launcher tells Dagster's run monitoring (its WorkerStatus, by name)."""

    RUNNING = "RUNNING"
    SUCCESS = "SUCCESS"
    FAILED = "FAILED"
    UNKNOWN = "UNKNOWN"


@dataclass(frozen=True, slots=True)
class WorkerHealth:
    health: Health
    message: str


def worker_health(task_state: str, heartbeat: str | None, heartbeat_ttl_s: float) -> WorkerHealth:
    """The run's worker's health from the Celery task's state and the run's heartbeat (the worker's name and pid,
    refreshed while the run executes; None once it expired).

    Celery reports PENDING for a task it knows nothing of, queued or lost alike, so PENDING alone never fails a
    run. A task that STARTED and whose heartbeat has stopped lost its worker (a killed process cannot say so)."""
    if task_state == "SUCCESS":
        return WorkerHealth(Health.SUCCESS, "the worker finished the run")
    if task_state in ("FAILURE", "REVOKED"):
        return WorkerHealth(Health.FAILED, f"the Celery task ended {task_state}")
    if heartbeat is not None:
        return WorkerHealth(Health.RUNNING, f"running on {heartbeat}")
    if task_state == "STARTED":
        return WorkerHealth(
            Health.FAILED,
            f"the task started but its worker has sent no heartbeat for {heartbeat_ttl_s:g} s: the worker died",
        )
    return WorkerHealth(Health.UNKNOWN, f"Celery reports {task_state}: queued, not started on any worker yet")
