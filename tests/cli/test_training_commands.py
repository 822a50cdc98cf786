"""`babylon train` end to end on the tiny model: score, dataset, steps, records, summary."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from babylon_assets.cli import app
from babylon_assets.db.schema import TrainedModel, TrainingBatch, table_of
from babylon_assets.db.store import Store
from babylon_assets.settings import Settings

runner = CliRunner()


@pytest.fixture(autouse=True)
def offline_training(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests train on scripted play, which is not the policy's own: the offline path (ON_POLICY=false)."""
    monkeypatch.setenv("ON_POLICY", "false")


def test_train_scores_builds_the_dataset_trains_and_summarises(tmp_path, monkeypatch, tiny_model):
    monkeypatch.setenv("BASE_MODEL", str(tiny_model))
    monkeypatch.setenv("ART_PATH", str(tmp_path / ".art"))
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb"))
    monkeypatch.setenv("MAX_SEQUENCE_TOKENS", "256")
    played = runner.invoke(app, ["simulate", "--agents", "6", "--windows", "3", "--duration", "6", "--seed", "7"])
    assert played.exit_code == 0, played.output
    result = runner.invoke(
        app,
        ["train", "--iterations", "2", "--windows-per-iteration", "1", "--min-actions", "5", "--learning-rate", "1e-3"],
    )
    assert result.exit_code == 0, result.output
    out = result.output
    for expected in (
        "windows",
        "trajectories",
        "score (reward)",
        "P&L per agent-window",
        "best agent",
        "worst agent",
        "step 1",
        "step 2",
        "babylon-mmo@2",
        "W&B run",
        "offline-run-",
    ):
        assert expected in out, expected
    store = Store.from_settings(Settings())
    with store.engine.connect() as connection:
        assert connection.execute(select(table_of(TrainingBatch).c.status)).scalars().all() == ["completed"]
        versions = connection.execute(select(table_of(TrainedModel).c.version)).scalars().all()
    assert sorted(versions) == ["babylon-mmo@1", "babylon-mmo@2"]
    assert (Path(tmp_path) / ".art" / "babylon-agents" / "models" / "babylon-mmo" / "checkpoints" / "0002").is_dir()
    store.dispose()


def test_train_on_an_empty_store_says_what_to_do():
    result = runner.invoke(app, ["train"])
    assert result.exit_code == 1 and "nothing to train on" in result.output


def test_train_submit_queues_one_training_run_with_the_workers_settings():
    from dagster import DagsterInstance, DagsterRunStatus

    refused = runner.invoke(app, ["train", "--submit", "--iterations", "3"])
    assert refused.exit_code == 2 and "set ITERATIONS in their environment" in refused.output
    submitted = runner.invoke(app, ["train", "--submit"])
    assert submitted.exit_code == 0 and "training: submitted run " in submitted.output, submitted.output
    with DagsterInstance.get() as instance:
        (run,) = instance.get_runs()
    # Queued for the daemon on the gpu queue, with no run config of this machine's settings.
    assert run.job_name == "training_job" and run.status == DagsterRunStatus.QUEUED
    assert run.tags["dagster-celery/queue"] == "gpu" and "resources" not in run.run_config
