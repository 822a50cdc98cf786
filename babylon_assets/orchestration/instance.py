"""The Dagster instance (DESIGN 8): one DAGSTER_HOME for the UI and the CLI, SQLite or PostgreSQL."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from babylon_assets.settings import Settings

SQLITE_INSTANCE_FILE = "dagster.yaml"
POSTGRES_INSTANCE_FILE = "dagster.postgres.yaml"
# Runs on Celery workers (issue 21): PostgreSQL storage, the Celery run launcher; chosen by CELERY_BROKER_URL.
CELERY_INSTANCE_FILE = "dagster.celery.yaml"
CELERY_LAUNCHER_CLASS = "BabylonCeleryRunLauncher"
# dagster.postgres.yaml reads these; setting DAGSTER_PG_HOST chooses it.
POSTGRES_INSTANCE_ENV = ("DAGSTER_PG_HOST", "DAGSTER_PG_USERNAME", "DAGSTER_PG_PASSWORD", "DAGSTER_PG_DB")
# The concurrency pool of trained_checkpoint and its one slot: one training run at a time on the instance, whether
# the UI, a sensor or the CLI started it (the in-process executor claims pool slots too).
TRAINING_POOL = "training"
TRAINING_POOL_SLOTS = 1
# policy_rollouts' pool: one rollout hour at a time, since one llama.cpp server follows the policy.
ROLLOUTS_POOL = "rollouts"
ROLLOUTS_POOL_SLOTS = 1


def project_root() -> Path:
    """The folder holding the top-level instance files: the working directory, else the checkout."""
    for candidate in (Path.cwd(), Path(__file__).resolve().parents[2]):
        if (candidate / SQLITE_INSTANCE_FILE).is_file():
            return candidate
    raise FileNotFoundError(
        f"no {SQLITE_INSTANCE_FILE} in {Path.cwd()} or beside the package; run from the project folder"
    )


class InstanceConfigError(ValueError):
    """Settings that choose no instance configuration that can work."""


def instance_file(environ: dict[str, str] | None = None) -> str:
    """Which instance configuration applies: Celery workers when CELERY_BROKER_URL is set (on PostgreSQL: workers on
    other machines cannot share a SQLite file), PostgreSQL when DAGSTER_PG_HOST is set, else SQLite."""
    environ = dict(os.environ) if environ is None else environ
    if environ.get("CELERY_BROKER_URL"):
        if not environ.get("DAGSTER_PG_HOST"):
            raise InstanceConfigError(
                "CELERY_BROKER_URL is set but DAGSTER_PG_HOST is not: runs on workers need the instance on PostgreSQL"
            )
        if not environ.get("CELERY_BACKEND_URL"):
            raise InstanceConfigError("CELERY_BROKER_URL is set but CELERY_BACKEND_URL is not: name the Redis backend")
        return CELERY_INSTANCE_FILE
    return POSTGRES_INSTANCE_FILE if environ.get("DAGSTER_PG_HOST") else SQLITE_INSTANCE_FILE


def prepare_dagster_home(settings: Settings, environ: dict[str, str] | None = None) -> Path:
    """Make DAGSTER_HOME absolute, create it, put the chosen instance file in it, export it."""
    home = settings.dagster_home
    home.mkdir(parents=True, exist_ok=True)
    chosen = instance_file(environ)
    source = project_root() / chosen
    target = home / "dagster.yaml"
    runs_on_workers = target.exists() and CELERY_LAUNCHER_CLASS in target.read_text(errors="replace")
    if runs_on_workers and chosen != CELERY_INSTANCE_FILE:
        # A shell without the Celery settings would otherwise turn the daemon's instance back into local runs.
        raise InstanceConfigError(
            f"{home} holds the Celery instance (runs on workers); set CELERY_BROKER_URL, CELERY_BACKEND_URL and "
            "DAGSTER_PG_* as its daemon and workers have them, or give another DAGSTER_HOME"
        )
    if not target.exists() or target.read_bytes() != source.read_bytes():
        shutil.copyfile(source, target)
    os.environ["DAGSTER_HOME"] = str(home)
    # dagster.celery.yaml reads these from the environment (the daemon's, the webserver's and the workers'): their
    # defaults come from the settings.
    os.environ.setdefault("CELERY_QUEUE_PREFIX", settings.CELERY_QUEUE_PREFIX)
    os.environ.setdefault("CELERY_HEARTBEAT_SECONDS", str(settings.CELERY_HEARTBEAT_SECONDS))
    set_pool_limits(home)
    return home


def set_pool_limits(home: Path) -> None:
    """Give the instance's concurrency pools their limits (a dagster.yaml can only set one default for all)."""
    from dagster import DagsterInstance

    with DagsterInstance.from_config(str(home)) as instance:
        storage = instance.event_log_storage
        if storage.supports_global_concurrency_limits:
            for pool, slots in ((TRAINING_POOL, TRAINING_POOL_SLOTS), (ROLLOUTS_POOL, ROLLOUTS_POOL_SLOTS)):
                if storage.get_concurrency_info(pool).slot_count != slots:
                    storage.set_concurrency_slots(pool, slots)
