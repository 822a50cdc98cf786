"""Runs whose process is gone are marked failed, their training batch failed with the reason, and the training
sensor is not kept waiting on them (the default launcher has no health check; CLI runs are in-process)."""

import os
import socket
import subprocess
import sys

from dagster import AssetExecutionContext, DagsterInstance, DagsterRunStatus, asset, materialize
from dagster._core.storage.dagster_run import DagsterRun

from babylon_assets.db.store import Store
from babylon_assets.db.training_records import TrainingRecords
from babylon_assets.orchestration.run_health import HOST_TAG, PID_TAG, reap_dead_runs
from babylon_assets.resources.store import StoreResource
from babylon_assets.settings import Settings


def dead_pid() -> int:
    finished = subprocess.Popen([sys.executable, "-c", "pass"])
    finished.wait()
    return finished.pid


def in_flight(instance: DagsterInstance, run_id: str, job: str, host: str, pid: int) -> None:
    instance.add_run(
        DagsterRun(
            job_name=job, run_id=run_id, status=DagsterRunStatus.STARTED, tags={HOST_TAG: host, PID_TAG: str(pid)}
        )
    )


def test_a_run_whose_process_is_gone_is_failed_with_its_batch_and_a_live_one_is_not(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'health.db'}")
    store.upgrade()
    host = socket.gethostname()
    with DagsterInstance.ephemeral() as instance:
        in_flight(instance, "a" * 32, "training_job", host, dead_pid())
        in_flight(instance, "b" * 32, "training_job", host, os.getpid())  # this very process: alive
        in_flight(instance, "c" * 32, "window_graph", "another-host", dead_pid())  # another host's to judge
        records = TrainingRecords(store)
        records.start_batch(f"batch-{'a' * 32}", "base", "babylon-mmo@pending")
        records.mark_training(f"batch-{'a' * 32}")
        (dead,) = reap_dead_runs(instance, store)
        assert dead.run_id == "a" * 32 and "is gone" in dead.reason
        statuses = {run.run_id[0]: run.status for run in instance.get_runs()}
        assert statuses == {"a": DagsterRunStatus.FAILURE, "b": DagsterRunStatus.STARTED, "c": DagsterRunStatus.STARTED}
        batch = records.batch(f"batch-{'a' * 32}")
        assert batch is not None and batch["status"] == "failed" and "died" in batch["error"]
        assert reap_dead_runs(instance, store) == []  # once
    store.dispose()


def test_the_store_resource_tags_each_run_with_the_process_executing_it(tmp_path):
    url = f"sqlite:///{tmp_path / 'tagged.db'}"

    @asset
    def probe(context: AssetExecutionContext, store: StoreResource) -> None:
        """Needs the store."""

    with DagsterInstance.ephemeral() as instance:
        result = materialize(
            [probe], instance=instance, resources={"store": StoreResource.from_settings(Settings(DATABASE_URL=url))}
        )
        assert result.success
        tags = instance.get_run_by_id(result.run_id).tags
    assert tags[PID_TAG] == str(os.getpid()) and tags[HOST_TAG] == socket.gethostname()


def test_the_training_sensor_never_waits_on_a_dead_training_run(simulated_store):
    from babylon_assets.resources.rules import WindowRulesResource
    from babylon_assets.sensors import evaluate_training_sensor
    from tests.conftest import NOW

    rules = WindowRulesResource.from_settings(Settings(LOOKBACK_HOURS=168))
    with DagsterInstance.ephemeral() as instance:
        in_flight(instance, "d" * 32, "training_job", socket.gethostname(), dead_pid())
        tick = evaluate_training_sensor(simulated_store, instance, rules, None, NOW, new_before_retrain=1)
        assert "in flight" not in str(getattr(tick, "skip_message", "") or "")
        assert instance.get_run_by_id("d" * 32).status == DagsterRunStatus.FAILURE
        in_flight(instance, "e" * 32, "training_job", socket.gethostname(), os.getpid())  # a live one still blocks
        blocked = evaluate_training_sensor(simulated_store, instance, rules, None, NOW, new_before_retrain=1)
        assert "in flight" in str(blocked.skip_message)


def _report_pid(queue) -> None:
    from babylon_assets.orchestration.run_health import run_process_pid

    queue.put(run_process_pid())


def test_a_steps_subprocess_tags_the_run_worker_that_lives_for_the_whole_run():
    import multiprocessing

    from babylon_assets.orchestration.run_health import run_process_pid

    assert run_process_pid() == os.getpid()
    context = multiprocessing.get_context("spawn")  # as the multiprocess executor starts a step
    queue = context.Queue()
    child = context.Process(target=_report_pid, args=(queue,))
    child.start()
    child.join(timeout=60)
    assert queue.get(timeout=5) == os.getpid()  # the parent, not the short-lived step process


def test_a_pool_slot_a_finished_run_still_holds_is_freed(tmp_path):
    from babylon_assets.orchestration.instance import ROLLOUTS_POOL, prepare_dagster_home
    from babylon_assets.orchestration.run_health import free_slots_of_finished_runs

    settings = Settings(DAGSTER_HOME=str(tmp_path / "home"))
    home = prepare_dagster_home(settings)
    with DagsterInstance.from_config(str(home)) as instance:
        storage = instance.event_log_storage
        for run_id, status in (("d" * 32, DagsterRunStatus.FAILURE), ("e" * 32, DagsterRunStatus.STARTED)):
            instance.add_run(DagsterRun(job_name="rollouts_job", run_id=run_id, status=status))
        # The failed run's step still claims the pool's one slot; the live one waits behind it.
        assert storage.claim_concurrency_slot(ROLLOUTS_POOL, "d" * 32, "policy_rollouts").is_claimed
        assert not storage.claim_concurrency_slot(ROLLOUTS_POOL, "e" * 32, "policy_rollouts").is_claimed
        assert free_slots_of_finished_runs(instance, [ROLLOUTS_POOL]) == ["d" * 32]
        assert storage.claim_concurrency_slot(ROLLOUTS_POOL, "e" * 32, "policy_rollouts").is_claimed
        assert free_slots_of_finished_runs(instance, [ROLLOUTS_POOL]) == []  # a live run keeps its slot
