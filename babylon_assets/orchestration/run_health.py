"""Runs whose process is gone: every run is tagged with the host and pid that execute it, and a run still marked
in flight whose process no longer exists on this host is marked failed, its training batch failed with the
reason, and its concurrency slots freed. The default run launcher has no health check, and the CLI's runs are
in-process, often with no daemon: Dagster's run monitoring alone cannot see these."""

from __future__ import annotations

import multiprocessing
import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass

from dagster import DagsterInstance, DagsterRunStatus, RunsFilter

from babylon_assets.db.store import Store
from babylon_assets.db.training_records import TrainingRecords

HOST_TAG = "babylon/host"
PID_TAG = "babylon/pid"
IN_FLIGHT = [DagsterRunStatus.STARTING, DagsterRunStatus.STARTED, DagsterRunStatus.CANCELING]


def run_process_pid() -> int:
    """The process that executes this run: this one, or, in a step's subprocess (the multiprocess executor of runs
    launched from the UI or a sensor), the run worker that started it and lives for the whole run."""
    parent = multiprocessing.parent_process()
    return parent.pid if parent is not None and parent.pid is not None else os.getpid()


def process_tags() -> dict[str, str]:
    """The tags that say which process executes a run."""
    return {HOST_TAG: socket.gethostname(), PID_TAG: str(run_process_pid())}


def tag_this_process(instance: DagsterInstance, run_id: str) -> None:
    """Tag a run with the process executing it, from inside the run (a launched run's pid is known only there)."""
    run = instance.get_run_by_id(run_id)
    if run is not None and run.tags.get(PID_TAG) != str(run_process_pid()):
        instance.add_run_tags(run_id, process_tags())


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: alive
    return True


@dataclass(frozen=True, slots=True)
class DeadRun:
    """A run that was marked failed because its process is gone."""

    run_id: str
    job_name: str
    pid: int
    reason: str


def fail_dead_runs(instance: DagsterInstance) -> list[DeadRun]:
    """Mark failed every in-flight run of this host whose process is gone, free its concurrency slots, and
    return them (the caller fails their training batches). Runs of other hosts are left to their own host."""
    host = socket.gethostname()
    dead: list[DeadRun] = []
    for run in instance.get_runs(RunsFilter(statuses=IN_FLIGHT)):
        pid_text = run.tags.get(PID_TAG, "")
        if run.tags.get(HOST_TAG) != host or not pid_text.isdigit() or _alive(int(pid_text)):
            continue
        reason = f"its process {pid_text} on {host} is gone (killed, or its machine restarted)"
        instance.report_run_failed(run, message=f"run {run.run_id} failed: {reason}")
        if instance.event_log_storage.supports_global_concurrency_limits:
            instance.event_log_storage.free_concurrency_slots_for_run(run.run_id)
        dead.append(DeadRun(run.run_id, run.job_name, int(pid_text), reason))
    return dead


def free_slots_of_finished_runs(instance: DagsterInstance, pools: Sequence[str]) -> list[str]:
    """Free the pool slots still claimed by runs that are no longer in flight (a run failed while its step held a
    slot keeps it claimed, and the pool's next run waits for ever); the run ids whose slots were freed."""
    storage = instance.event_log_storage
    if not storage.supports_global_concurrency_limits:
        return []
    freed = []
    for pool in pools:
        for slot in storage.get_concurrency_info(pool).claimed_slots:
            run = instance.get_run_by_id(slot.run_id)
            if run is None or run.status not in (*IN_FLIGHT, DagsterRunStatus.QUEUED, DagsterRunStatus.NOT_STARTED):
                storage.free_concurrency_slots_for_run(slot.run_id)
                freed.append(slot.run_id)
    return freed


def reap_dead_runs(instance: DagsterInstance, store: Store) -> list[DeadRun]:
    """`fail_dead_runs`, and each dead training run's batch failed with the reason (it stays `training` else); slots
    that finished runs still hold are freed."""
    dead = fail_dead_runs(instance)
    from babylon_assets.orchestration.instance import ROLLOUTS_POOL, TRAINING_POOL

    free_slots_of_finished_runs(instance, (TRAINING_POOL, ROLLOUTS_POOL))
    records = TrainingRecords(store)
    for run in dead:
        batch_id = f"batch-{run.run_id}"
        batch = records.batch(batch_id)
        if batch is not None and batch["status"] in ("pending", "training"):
            records.fail_batch(batch_id, f"the training run {run.run_id} died: {run.reason}")
    return dead
