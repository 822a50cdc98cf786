"""DESIGN 8: one absolute DAGSTER_HOME, SQLite by default, PostgreSQL when its variables are set."""

from pathlib import Path

import pytest
from dagster import DagsterInstance, asset, materialize

from babylon_assets.orchestration.instance import TRAINING_POOL, prepare_dagster_home
from babylon_assets.settings import Settings, get_settings

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def offline_training(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests train on scripted play, which is not the policy's own: the offline path (ON_POLICY=false)."""
    monkeypatch.setenv("ON_POLICY", "false")


@asset
def probe() -> int:
    return 1


def test_dagster_home_is_made_absolute_and_holds_the_top_level_file(monkeypatch, tmp_path):
    monkeypatch.setenv("DAGSTER_HOME", "relative/home")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "dagster.yaml").write_text((ROOT / "dagster.yaml").read_text())
    home = prepare_dagster_home(get_settings())
    assert home.is_absolute() and home == (tmp_path / "relative" / "home").resolve()
    assert (home / "dagster.yaml").read_text() == (ROOT / "dagster.yaml").read_text()
    with DagsterInstance.get() as instance:
        assert "Sqlite" in type(instance.run_storage).__name__
        assert materialize([probe], instance=instance).success
        assert len(instance.get_runs()) == 1
        # one training run at a time: trained_checkpoint's pool has one slot on the instance
        assert instance.event_log_storage.get_concurrency_info(TRAINING_POOL).slot_count == 1


@pytest.mark.postgres
def test_postgres_instance_storage_when_its_variables_are_set(monkeypatch, tmp_path, postgres_instance_env):
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "pg_home"))
    monkeypatch.chdir(ROOT)
    home = prepare_dagster_home(get_settings())
    assert (home / "dagster.yaml").read_text() == (ROOT / "dagster.postgres.yaml").read_text()
    with DagsterInstance.get() as instance:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        assert materialize([probe], instance=instance).success
        (run,) = instance.get_runs()
        assert run.is_success
    # the run is in PostgreSQL, not in a file under DAGSTER_HOME
    with DagsterInstance.get() as again:
        assert len(again.get_runs()) == 1


def test_the_celery_instance_file_needs_postgres_and_a_result_backend():
    from babylon_assets.orchestration.instance import InstanceConfigError, instance_file

    broker = {"CELERY_BROKER_URL": "amqp://guest:guest@127.0.0.1:5672//"}
    with pytest.raises(InstanceConfigError, match="DAGSTER_PG_HOST"):
        instance_file(broker)
    with pytest.raises(InstanceConfigError, match="CELERY_BACKEND_URL"):
        instance_file({**broker, "DAGSTER_PG_HOST": "db"})
    chosen = instance_file({**broker, "DAGSTER_PG_HOST": "db", "CELERY_BACKEND_URL": "redis://127.0.0.1:6379/0"})
    assert chosen == "dagster.celery.yaml"
    assert instance_file({"DAGSTER_PG_HOST": "db"}) == "dagster.postgres.yaml" and instance_file({}) == "dagster.yaml"


def test_a_shell_without_the_celery_settings_cannot_turn_a_celery_home_back(monkeypatch, tmp_path):
    import shutil

    from babylon_assets.orchestration.instance import InstanceConfigError, prepare_dagster_home, project_root

    home = tmp_path / "celery-home"
    home.mkdir()
    shutil.copyfile(project_root() / "dagster.celery.yaml", home / "dagster.yaml")
    with pytest.raises(InstanceConfigError, match="holds the Celery instance"):
        prepare_dagster_home(Settings(DAGSTER_HOME=str(home)), environ={})
    assert (home / "dagster.yaml").read_bytes() == (project_root() / "dagster.celery.yaml").read_bytes()
