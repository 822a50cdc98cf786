"""Runs on Celery workers, for real (issue 21): the instance on a fresh PostgreSQL database, RabbitMQ as the broker
with queues of this test's own prefix, a Redis database for results and heartbeats, `dagster-daemon` and two solo
workers (`babylon worker`) on the cpu and gpu queues, each its own process.

A window-graph run of 4 windows executes on the cpu worker and a training run (tiny model) on the gpu worker, as
their tags and their worker events say; the gpu worker is killed by its pid mid-step, run monitoring fails the run
within a bound, and the retry (run retries) goes on from the last checkpoint on a new worker; a run key submitted
twice is one run. Teardown removes only this test's processes, queues, keys and databases.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import psycopg2
import pytest
from dagster import DagsterEventType, DagsterInstance, DagsterRunStatus, RunsFilter
from sqlalchemy import select

from babylon_assets.db.schema import TrainedModel, table_of
from babylon_assets.db.store import Store
from babylon_assets.orchestration.instance import instance_file, prepare_dagster_home, project_root
from babylon_assets.orchestration.submit import RUN_KEY_TAG, submit_runs, training_submission, window_submissions
from babylon_assets.orchestration.workers import WORKER_TAG, remove_prefix
from babylon_assets.play.simulator import SimulationPlan, simulate
from babylon_assets.settings import Settings
from tests.conftest import IN_CI, PG_ADMIN_DSN

pytestmark = [pytest.mark.celery, pytest.mark.postgres, pytest.mark.timeout(900)]

AMQP_URL = os.environ.get("BABYLON_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")
REDIS_URL = os.environ.get("BABYLON_TEST_REDIS_URL", "redis://127.0.0.1:6379/13")
START = datetime(2025, 1, 15, 10, tzinfo=UTC)
WINDOWS = [f"2025-01-15T{hour:02d}:00" for hour in range(10, 14)]
# The bound on noticing a killed worker: three missed heartbeats of 2 s, the monitoring's 5 s poll, and slack for
# two busy cores.
DEATH_NOTICED_WITHIN_S = 90
ITERATIONS = 20  # enough steps that the kill and the cancel land mid-run however fast a step is


def _reachable_or_skip(what: str, check: Callable[[], object]) -> None:
    try:
        check()
    except Exception as error:  # noqa: BLE001 - any failure to connect is the service missing
        message = f"{what} is not reachable ({type(error).__name__}: {error})"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)


def _admin():
    connection = psycopg2.connect(PG_ADMIN_DSN, connect_timeout=3)
    connection.autocommit = True
    return connection


@pytest.fixture
def services(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    """Two fresh databases (the instance's, the store's), a queue prefix and this test's Redis keys; all removed."""
    import kombu
    import redis

    _reachable_or_skip("PostgreSQL", lambda: _admin().close())
    _reachable_or_skip("RabbitMQ", lambda: kombu.Connection(AMQP_URL).ensure_connection(max_retries=1))
    _reachable_or_skip("Redis", lambda: redis.Redis.from_url(REDIS_URL).ping())
    tag = uuid.uuid4().hex[:10]
    names = {"instance": f"babylon_celery_{tag}_dagster", "store": f"babylon_celery_{tag}_store"}
    admin = _admin()
    with admin.cursor() as cursor:
        for name in names.values():
            cursor.execute(f'CREATE DATABASE "{name}"')
    dsn = psycopg2.extensions.parse_dsn(PG_ADMIN_DSN)
    host, port, user = dsn.get("host", "127.0.0.1"), dsn.get("port", "5432"), dsn.get("user", "postgres")
    prefix = f"test-{tag}-"
    environment = {
        "DAGSTER_PG_HOST": host,
        "DAGSTER_PG_PORT": port,
        "DAGSTER_PG_USERNAME": user,
        "DAGSTER_PG_PASSWORD": "",
        "DAGSTER_PG_DB": names["instance"],
        "DATABASE_URL": f"postgresql+psycopg2://{user}@{host}:{port}/{names['store']}",
        "CELERY_BROKER_URL": AMQP_URL,
        "CELERY_BACKEND_URL": REDIS_URL,
        "CELERY_QUEUE_PREFIX": prefix,
        "CELERY_HEARTBEAT_SECONDS": "2",
    }
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    try:
        yield environment
    finally:
        remove_prefix(AMQP_URL, REDIS_URL, prefix)
        with admin.cursor() as cursor:
            for name in names.values():
                cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


class Processes:
    """The daemon and the workers this test starts, each in its own process group; stopped at the end."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.started: list[subprocess.Popen] = []

    def start(self, name: str, command: list[str]) -> subprocess.Popen:
        log = (self.folder / f"{name}.log").open("ab")
        process = subprocess.Popen(
            command,
            cwd=project_root(),
            env=dict(os.environ),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.started.append(process)
        return process

    def worker(self, queue: str, name: str) -> subprocess.Popen:
        return self.start(
            name, [sys.executable, "-m", "babylon_assets.cli", "worker", "--queue", queue, "--name", f"{name}@%h"]
        )

    def log_tail(self) -> str:
        return "\n".join(
            f"--- {path.name}\n" + path.read_text(errors="replace")[-3000:]
            for path in sorted(self.folder.glob("*.log"))
        )

    def stop(self) -> None:
        for process in self.started:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in self.started:
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def wait_for(what: str, condition: Callable[[], object], timeout_s: float, processes: Processes) -> object:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}\n{processes.log_tail()}")


def finished(instance: DagsterInstance, run_id: str) -> object:
    run = instance.get_run_by_id(run_id)
    return run if run is not None and run.is_finished else None


def worker_events(instance: DagsterInstance, run_id: str) -> list[str]:
    return [
        str(event.dagster_event.engine_event_data.metadata["worker"].value)
        for event in instance.all_logs(run_id, of_type=DagsterEventType.ENGINE_EVENT)
        if event.dagster_event is not None and "worker" in event.dagster_event.engine_event_data.metadata
    ]


def checkpoint_steps(store: Store, model_name: str) -> list[int]:
    models = table_of(TrainedModel)
    with store.engine.connect() as connection:
        versions = connection.execute(
            select(models.c.modelId).where(models.c.modelId.like(f"{model_name}@%"))
        ).scalars()
        return sorted(int(str(version).rsplit("@", 1)[-1]) for version in versions)


def test_runs_execute_on_their_queues_workers_and_survive_a_killed_worker(services, tmp_path, tiny_model, monkeypatch):
    monkeypatch.setenv("ON_POLICY", "false")  # scripted play trains offline
    monkeypatch.setenv("BASE_MODEL", str(tiny_model))
    monkeypatch.setenv("MODEL_NAME", "tiny-celery")
    monkeypatch.setenv("ART_PATH", str(tmp_path / ".art"))
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.setenv("MIN_AGENTS", "4")
    monkeypatch.setenv("WINDOWS_PER_ITERATION", "2")
    monkeypatch.setenv("ITERATIONS", str(ITERATIONS))  # the workers' settings: their environment
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster"))
    settings = Settings()
    assert instance_file() == "dagster.celery.yaml"
    prepare_dagster_home(settings)
    store = Store.from_settings(settings)
    store.upgrade()
    simulate(store, SimulationPlan(agents=6, windows=4, duration_minutes=6, seed=7, start=START), now=datetime.now(UTC))
    processes = Processes(tmp_path)
    try:
        with DagsterInstance.get() as instance:
            _stop_every_sensor(instance)  # this test submits its own runs
            processes.start(
                "daemon", [str(Path(sys.executable).parent / "dagster-daemon"), "run", "-w", "workspace.yaml"]
            )
            processes.worker("cpu", "cpu-one")
            gpu = processes.worker("gpu", "gpu-one")

            # The window graph over 4 windows: one ranged run, on the cpu queue's worker.
            (graph,) = submit_runs(instance, window_submissions(WINDOWS, 168))
            again = submit_runs(instance, window_submissions(WINDOWS, 168))
            assert again[0].already_submitted and again[0].run_id == graph.run_id
            assert len(instance.get_runs(RunsFilter(tags={RUN_KEY_TAG: graph.run_key}))) == 1
            run = wait_for("the window graph run", lambda: finished(instance, graph.run_id), 300, processes)
            assert run.status == DagsterRunStatus.SUCCESS, processes.log_tail()
            assert run.tags["dagster-celery/queue"] == "cpu" and run.tags[WORKER_TAG].startswith("cpu-one@")
            assert worker_events(instance, graph.run_id)[0].startswith("cpu-one@")

            # Training on the gpu queue's worker; the worker is killed once the first checkpoint is registered.
            until = "2025-01-15T14:00"
            (training,) = submit_runs(instance, [training_submission("training:test", until=until)])
            wait_for("the first checkpoint", lambda: checkpoint_steps(store, "tiny-celery"), 300, processes)
            os.kill(gpu.pid, signal.SIGKILL)
            killed_at = time.monotonic()
            steps_before = checkpoint_steps(store, "tiny-celery")
            assert steps_before[-1] < ITERATIONS, "the run finished before the worker was killed"
            failed = wait_for(
                "the killed run to be failed",
                lambda: finished(instance, training.run_id),
                DEATH_NOTICED_WITHIN_S,
                processes,
            )
            assert failed.status == DagsterRunStatus.FAILURE
            assert time.monotonic() - killed_at < DEATH_NOTICED_WITHIN_S
            assert failed.tags[WORKER_TAG].startswith("gpu-one@") and failed.tags["dagster-celery/queue"] == "gpu"

            # A new gpu worker (what a supervisor restarts) takes the retry, which goes on from the last checkpoint.
            processes.worker("gpu", "gpu-two")

            def retry():
                runs = instance.get_runs(RunsFilter(tags={"dagster/parent_run_id": training.run_id}))
                return runs[0] if runs and runs[0].is_finished else None

            retried = wait_for("the retry", retry, 300, processes)
            assert retried.status == DagsterRunStatus.SUCCESS, processes.log_tail()
            assert retried.tags[WORKER_TAG].startswith("gpu-two@")
            # The retry started from the newest checkpoint the killed run wrote (registered when it was killed, or
            # written a moment later and registered by the retry), not from the base; no step is missing or doubled.
            steps = checkpoint_steps(store, "tiny-celery")
            assert steps == list(range(1, steps[-1] + 1)), steps
            assert steps[-1] - ITERATIONS in (steps_before[-1], steps_before[-1] + 1), (steps_before, steps)

            # Canceled while it trains: its own worker interrupts it (a solo pool cannot kill the task it runs).
            (canceled,) = submit_runs(instance, [training_submission("training:cancel", until=until)])
            wait_for("the run to train", lambda: checkpoint_steps(store, "tiny-celery")[-1] > steps[-1], 300, processes)
            instance.run_coordinator.cancel_run(canceled.run_id)
            stopped = wait_for("the cancel", lambda: finished(instance, canceled.run_id), 60, processes)
            assert stopped.status == DagsterRunStatus.CANCELED, processes.log_tail()
            trained_when_canceled = checkpoint_steps(store, "tiny-celery")[-1]
            assert trained_when_canceled < steps[-1] + ITERATIONS, "the run finished before it was canceled"
            time.sleep(8)  # no step goes on after the cancel
            assert checkpoint_steps(store, "tiny-celery")[-1] <= trained_when_canceled + 1
    finally:
        processes.stop()
        store.dispose()


def _stop_every_sensor(instance: DagsterInstance) -> None:
    from dagster._core.workspace.context import WorkspaceProcessContext
    from dagster._core.workspace.load_target import WorkspaceFileTarget

    target = WorkspaceFileTarget(paths=[str(project_root() / "workspace.yaml")])
    with WorkspaceProcessContext(instance, target) as context:
        location = context.create_request_context().get_code_location("babylon_assets")
        for repository in location.get_repositories().values():
            for sensor in repository.get_sensors():
                instance.stop_sensor(sensor.get_remote_origin_id(), sensor.selector_id, sensor)


def test_the_launchers_health_check_believes_a_fresh_heartbeat_over_celerys_pending(services):
    import redis
    from dagster import DagsterRun
    from dagster._core.launcher import WorkerStatus
    from dagster_celery.tags import DAGSTER_CELERY_TASK_ID_TAG

    from babylon_assets.orchestration.workers import BabylonCeleryRunLauncher, heartbeat_key

    prefix = services["CELERY_QUEUE_PREFIX"]
    launcher = BabylonCeleryRunLauncher(broker=AMQP_URL, backend=REDIS_URL, queue_prefix=prefix, heartbeat_seconds=2)
    task_id = f"task-{uuid.uuid4().hex}"  # Celery knows nothing of it: PENDING
    run = DagsterRun(job_name="window_graph", run_id=uuid.uuid4().hex, tags={DAGSTER_CELERY_TASK_ID_TAG: task_id})
    assert launcher.celery.AsyncResult(task_id).state == "PENDING"
    assert launcher.check_run_worker_health(run).status == WorkerStatus.UNKNOWN
    redis.Redis.from_url(REDIS_URL).set(heartbeat_key(prefix, task_id), "cpu-one@host pid 7", ex=6)
    healthy = launcher.check_run_worker_health(run)
    assert healthy.status == WorkerStatus.RUNNING and "cpu-one@host pid 7" in str(healthy.msg)
