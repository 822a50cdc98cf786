"""Runs on Celery workers over RabbitMQ, results and heartbeats in Redis (issue 21, DESIGN 8).

The instance file `dagster.celery.yaml` names `BabylonCeleryRunLauncher`: dagster-celery's `CeleryRunLauncher`
with our queues (`cpu`, `gpu`, `serve`, each under CELERY_QUEUE_PREFIX), chosen per run by
`core.run_queues.queue_of_run`, and a health check that believes a heartbeat rather than Celery's PENDING. A worker
(`babylon worker --queue cpu`) is a solo-pool Celery worker: each run executes in the worker's own process with the
in-process executor (a prefork pool's daemonic children cannot start the processes a run needs).

While a run executes, its worker refreshes `<prefix>babylon-heartbeat:<task id>` in Redis every
CELERY_HEARTBEAT_SECONDS, expiring after three of them; a worker killed mid-run stops beating, and run monitoring
fails the run (then run retries re-execute it from its failed step).
"""

from __future__ import annotations

import _thread
import logging
import os
import threading
from collections.abc import Mapping
from typing import Any

from celery import Celery
from celery.signals import task_postrun, task_prerun
from dagster import DagsterInstance, DagsterRun, Field, IntSource, StringSource
from dagster._core.events import EngineEventData
from dagster._core.launcher import CheckRunHealthResult, WorkerStatus
from dagster._serdes import ConfigurableClassData, unpack_value
from dagster_celery.launcher import CeleryRunLauncher
from dagster_celery.make_app import make_app
from dagster_celery.tags import DAGSTER_CELERY_QUEUE_TAG, DAGSTER_CELERY_RUN_PRIORITY_TAG, DAGSTER_CELERY_TASK_ID_TAG
from dagster_celery.tasks import create_execute_job_task, create_resume_job_task
from kombu import Exchange, Queue

from babylon_assets.core.run_queues import CPU, QUEUES, queue_of_run, worker_health

_log = logging.getLogger(__name__)
HEARTBEAT_KEY = "babylon-heartbeat:"
# The run's tag naming the worker that executes it (also reported as an engine event with its pid).
WORKER_TAG = "babylon/worker"
# Celery settings every app of ours carries, the launcher's and the workers' alike.
CELERY_CONFIG: dict[str, Any] = {
    # STARTED is stored when a worker begins a task: without it Celery says PENDING for a running task.
    "task_track_started": True,
    # A run is one long task: a worker takes one at a time and acknowledges it on receipt, so a killed worker's
    # run is failed by run monitoring and retried by Dagster, never silently redelivered into a second execution.
    "worker_prefetch_multiplier": 1,
    # A busy solo worker reserves no second run (it would wait there while a sibling worker idles).
    "worker_disable_prefetch": True,
    "task_acks_late": False,
    "broker_connection_retry_on_startup": True,
    "result_extended": True,
}


def queue_name(prefix: str, queue: str) -> str:
    """The broker's name of one of our queues."""
    return f"{prefix}{queue}"


def exchange_name(prefix: str) -> str:
    """The topic exchange our queues of one prefix are bound to."""
    return f"{prefix}dagster"


def remove_prefix(broker: str, backend: str, prefix: str) -> None:
    """Delete one prefix's queues, its exchange and every Redis key under it (a test's, a bench's or a retired
    deployment's); nothing of another prefix is touched."""
    import kombu
    import redis

    if not prefix:
        raise ValueError("remove_prefix needs a prefix: without one it would delete every key in the Redis database")
    with kombu.Connection(broker) as connection:
        channel = connection.default_channel
        for queue in QUEUES:
            channel.queue_delete(queue_name(prefix, queue))
        channel.exchange_delete(exchange_name(prefix))
    client = redis.Redis.from_url(backend)
    for key in client.scan_iter(f"{prefix}*"):
        client.delete(key)


def configure_app(app: Celery, prefix: str) -> None:
    """Declare our queues on an app (one topic exchange per prefix, each queue bound to `<queue>.#`, as dagster-celery
    routes `<queue>.<task>`); our Celery settings come in through the app's config source."""
    exchange = Exchange(exchange_name(prefix), type="topic")
    app.conf.task_queues = [
        Queue(
            queue_name(prefix, queue),
            exchange,
            routing_key=f"{queue_name(prefix, queue)}.#",
            queue_arguments={"x-max-priority": 10},
        )
        for queue in QUEUES
    ]
    app.conf.task_default_queue = queue_name(prefix, CPU)
    app.conf.task_default_exchange = exchange.name
    app.conf.task_default_exchange_type = "topic"
    if prefix:
        # The results' keys in Redis carry the prefix too: a deployment (or a test) can remove exactly its own.
        app.conf.result_backend_transport_options = {"global_keyprefix": prefix}


def _heartbeat_client(backend: str | None) -> Any:
    if not backend or not backend.startswith(("redis://", "rediss://")):
        return None
    import redis

    return redis.Redis.from_url(backend)


class BabylonCeleryRunLauncher(CeleryRunLauncher):
    """dagster-celery's run launcher with our queues and a heartbeat-based health check."""

    def __init__(
        self,
        default_queue: str = CPU,
        broker: str | None = None,
        backend: str | None = None,
        include: list[str] | None = None,
        config_source: dict | None = None,
        inst_data: ConfigurableClassData | None = None,
        queue_prefix: str = "",
        heartbeat_seconds: int = 5,
    ) -> None:
        self.queue_prefix = queue_prefix
        self.heartbeat_seconds = heartbeat_seconds
        super().__init__(
            default_queue=queue_name(queue_prefix, default_queue),
            broker=broker,
            backend=backend,
            include=include,
            config_source={**CELERY_CONFIG, **(config_source or {})},
            inst_data=inst_data,
        )
        configure_app(self.celery, queue_prefix)
        self._heartbeats = _heartbeat_client(backend)

    @classmethod
    def config_type(cls) -> Any:
        inherited: dict[str, Any] = dict(CeleryRunLauncher.config_type())  # type: ignore[arg-type]
        return {
            **inherited,
            "default_queue": Field(StringSource, is_required=False, default_value=CPU),
            "queue_prefix": Field(StringSource, is_required=False, default_value=""),
            "heartbeat_seconds": Field(IntSource, is_required=False, default_value=5),
        }

    @classmethod
    def from_config_value(cls, inst_data: ConfigurableClassData, config_value: Mapping[str, Any]) -> Any:
        return cls(inst_data=inst_data, **config_value)

    def _launch_celery_task_run(self, run: DagsterRun, task_signature: Any, routing_key: str) -> None:
        # dagster-celery's own version sends a run to the queue its tag names, unprefixed, or to the default; ours
        # chooses by job and assets too (an asset backfill's run carries no job tags) and prefixes the queue.
        assets = [key.to_user_string() for key in (run.asset_selection or [])]
        queue = queue_of_run(run.job_name, assets, run.tags)
        broker_queue = queue_name(self.queue_prefix, queue)
        self._instance.report_engine_event(f"Sending the run to Celery queue {broker_queue}", run, cls=self.__class__)
        result = task_signature.apply_async(
            priority=_run_priority(run), queue=broker_queue, routing_key=f"{broker_queue}.{routing_key}"
        )
        self._instance.add_run_tags(
            run.run_id, {DAGSTER_CELERY_TASK_ID_TAG: result.task_id, DAGSTER_CELERY_QUEUE_TAG: queue}
        )
        self._instance.report_engine_event(
            "The run's Celery task is with the broker.",
            run,
            EngineEventData({"Celery task id": result.task_id, "Celery queue": broker_queue}),
            cls=self.__class__,
        )

    @property
    def supports_resume_run(self) -> bool:
        # A run whose worker died is failed and retried from its failed step (run retries), never resumed in place.
        return False

    def terminate(self, run_id: str) -> bool:
        """Revoke a queued run's task. A running one is stopped by its own worker: its heartbeat thread sees the run
        CANCELING and interrupts it (a solo pool cannot kill the task it is running)."""
        run = self._instance.get_run_by_id(run_id)
        task_id = None if run is None else run.tags.get(DAGSTER_CELERY_TASK_ID_TAG)
        if run is None or task_id is None:
            return False
        # As Dagster's own launchers do: the run is CANCELING from now on, which its worker acts on.
        self._instance.report_run_canceling(run)
        self.celery.AsyncResult(task_id).revoke(terminate=False)
        return True

    def heartbeat_of(self, task_id: str) -> str | None:
        """The worker (name and pid) beating for a task, or None when no beat is fresh."""
        value = self._heartbeats.get(heartbeat_key(self.queue_prefix, task_id))
        return value.decode() if isinstance(value, bytes) else value

    def check_run_worker_health(self, run: DagsterRun) -> CheckRunHealthResult:
        task_id = run.tags.get(DAGSTER_CELERY_TASK_ID_TAG)
        if task_id is None:
            return CheckRunHealthResult(WorkerStatus.UNKNOWN, "no Celery task yet")
        if self._heartbeats is None:
            return super().check_run_worker_health(run)
        state = self.celery.AsyncResult(task_id).state
        verdict = worker_health(state, self.heartbeat_of(task_id), heartbeat_ttl(self.heartbeat_seconds))
        return CheckRunHealthResult(WorkerStatus[verdict.health.value], verdict.message)


def _run_priority(run: DagsterRun) -> int:
    try:
        return int(run.tags.get(DAGSTER_CELERY_RUN_PRIORITY_TAG, 0))
    except ValueError:
        return 0


def heartbeat_key(prefix: str, task_id: str) -> str:
    return f"{prefix}{HEARTBEAT_KEY}{task_id}"


def heartbeat_ttl(seconds: int) -> int:
    """A heartbeat lives three beats: one late beat on a busy machine is not a death."""
    return 3 * seconds


class Heartbeat:
    """Refreshes a run's heartbeat key from a thread of the worker's process until stopped (then deletes it), and
    watches the run: once the instance no longer has it running (canceled, or failed by run monitoring after a beat
    was lost), the run is interrupted here, so it never goes on beside its retry."""

    def __init__(self, client: Any, key: str, value: str, seconds: int, run_id: str | None = None) -> None:
        self.client, self.key, self.value, self.seconds, self.run_id = client, key, value, seconds, run_id
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"heartbeat {key}", daemon=True)
        self.interrupted: str | None = None

    def start(self) -> None:
        # The first beat is written before the task body runs (and before Celery stores STARTED).
        self._write()
        self._thread.start()

    def _write(self) -> None:
        try:
            self.client.set(self.key, self.value, ex=heartbeat_ttl(self.seconds))
        except Exception as error:  # noqa: BLE001 - a missed beat is retried next time; three in a row fail the run
            _log.warning("heartbeat %s not written: %s: %s", self.key, type(error).__name__, error)

    def _beat(self) -> None:
        # One instance for the thread's life: the run's status is read every beat.
        instance = _instance_or_none() if self.run_id is not None else None
        try:
            while not self._stop.wait(self.seconds):
                self._write()
                status = _run_status(instance, self.run_id)
                if status is not None and status not in _STILL_RUNNING and self.interrupted is None:
                    self.interrupted = status
                    _log.warning("run %s is %s on the instance: interrupting it on this worker", self.run_id, status)
                    _thread.interrupt_main()
        finally:
            if instance is not None:
                instance.dispose()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=self.seconds + 1)
        try:
            self.client.delete(self.key)
        except Exception as error:  # noqa: BLE001 - the key expires by itself
            _log.warning("heartbeat %s not deleted: %s", self.key, error)


# The instance statuses of a run its worker should go on executing.
_STILL_RUNNING = frozenset({"NOT_STARTED", "STARTING", "STARTED"})


def _instance_or_none() -> DagsterInstance | None:
    try:
        return DagsterInstance.get()
    except Exception as error:  # noqa: BLE001 - without the instance the heartbeat still beats, and decides nothing
        _log.warning("the instance could not be opened for the heartbeat: %s", error)
        return None


def _run_status(instance: DagsterInstance | None, run_id: str | None) -> str | None:
    """The run's status on the instance, or None when it cannot be read (then nothing is decided)."""
    if instance is None or run_id is None:
        return None
    try:
        run = instance.get_run_by_id(run_id)
        return None if run is None else run.status.value
    except Exception as error:  # noqa: BLE001 - an instance that cannot be read decides nothing
        _log.warning("the status of run %s could not be read: %s", run_id, error)
        return None


def make_worker_app(broker: str, backend: str, prefix: str, heartbeat_seconds: int) -> Celery:
    """The Celery app a worker runs: dagster-celery's run tasks, our queues, the heartbeat and the worker marker."""
    app = make_app(
        app_args={
            "broker": broker,
            "backend": backend,
            "include": [],
            "config_source": CELERY_CONFIG,
            "task_default_queue": queue_name(prefix, CPU),
        }
    )
    configure_app(app, prefix)
    create_execute_job_task(app)
    create_resume_job_task(app)
    client = _heartbeat_client(backend)
    beats: dict[str, Heartbeat] = {}

    def started(task_id: str, task: Any, kwargs: dict[str, Any] | None = None, **_: Any) -> None:
        worker = f"{task.request.hostname} pid {os.getpid()}"
        run_id = _run_id_of(kwargs or {})
        if client is not None:
            beats[task_id] = Heartbeat(client, heartbeat_key(prefix, task_id), worker, heartbeat_seconds, run_id)
            beats[task_id].start()
        if run_id is not None:
            _mark_worker(run_id, worker)

    def finished(task_id: str, **_: Any) -> None:
        beat = beats.pop(task_id, None)
        if beat is not None:
            beat.stop()

    task_prerun.connect(started, weak=False)
    task_postrun.connect(finished, weak=False)
    return app


def _run_id_of(task_kwargs: dict[str, Any]) -> str | None:
    packed = task_kwargs.get("execute_job_args_packed") or task_kwargs.get("resume_job_args_packed")
    return None if packed is None else unpack_value(packed).run_id  # type: ignore[union-attr]


def _mark_worker(run_id: str, worker: str) -> None:
    """Tag the run with its worker and say so in its event log (what the UI and the tests see); a run that already
    started elsewhere or finished (a redelivered message, which Dagster ignores) keeps its own worker's tag."""
    with DagsterInstance.get() as instance:
        run = instance.get_run_by_id(run_id)
        if run is None or run.status.value not in ("NOT_STARTED", "STARTING"):
            return
        instance.add_run_tags(run_id, {WORKER_TAG: worker})
        instance.report_engine_event(
            f"Executing on worker {worker}", run, EngineEventData({"worker": worker, "pid": str(os.getpid())})
        )
