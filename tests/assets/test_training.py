"""Training in the graph: the trained_checkpoint asset, its records and lineage, W&B offline, the training sensor."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from dagster import DagsterInstance, DagsterRunStatus, SensorResult, SkipReason
from dagster._core.storage.dagster_run import DagsterRun
from sqlalchemy import select

from babylon_assets.db.checkpoint_records import CheckpointRecords
from babylon_assets.db.schema import TrainedModel, TrainingBatch, Trajectory, table_of
from babylon_assets.db.store import Store
from babylon_assets.db.training_records import TrainingRecords
from babylon_assets.definitions import build_definitions
from babylon_assets.orchestration.pipeline import materialize_training_dataset, materialize_windows
from babylon_assets.play.simulator import SimulationPlan, simulate
from babylon_assets.resources.rules import WindowRulesResource
from babylon_assets.resources.trainer import TrainerResource
from babylon_assets.sensors import evaluate_training_sensor
from babylon_assets.settings import Settings
from babylon_assets.training.run import listening
from tests.conftest import NOW, SIM_START

WINDOWS = ["2025-01-15T10:00", "2025-01-15T11:00", "2025-01-15T12:00"]


@pytest.fixture(autouse=True)
def offline_training(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests train on scripted play, which is not the policy's own: the offline path (ON_POLICY=false)."""
    monkeypatch.setenv("ON_POLICY", "false")


@pytest.fixture
def instance() -> Iterator[DagsterInstance]:
    with DagsterInstance.ephemeral() as ephemeral:
        yield ephemeral


def trainer_for(tmp_path: Path, base_model: Path | str, **overrides) -> TrainerResource:
    values = {
        "base_model": str(base_model),
        "art_path": str(tmp_path / ".art"),
        "iterations": 2,
        "windows_per_iteration": 2,
        "learning_rate": 1e-3,
        "wandb_dir": str(tmp_path / "wandb"),
        **overrides,
    }
    return TrainerResource.from_settings(Settings(**{name.upper(): value for name, value in values.items()}))


def scored_store(url: str, instance: DagsterInstance, windows: int = 3) -> tuple[Store, object]:
    store = Store(url, clock=lambda: NOW)
    store.upgrade()
    simulate(store, SimulationPlan(agents=6, windows=windows, duration_minutes=6, seed=7, start=SIM_START), now=NOW)
    defs = build_definitions(Settings(DATABASE_URL=url))
    assert all(run.success for run in materialize_windows(defs, WINDOWS[:windows], instance))
    assert materialize_training_dataset(defs, instance, until="2025-01-15T14:00").success
    return store, defs


def train(url: str, trainer: TrainerResource, instance: DagsterInstance):
    defs = build_definitions(Settings(DATABASE_URL=url), resource_overrides={"trainer": trainer})
    job = defs.resolve_job_def("training_job")
    config = {"ops": {"training_dataset": {"config": {"until": "2025-01-15T14:00"}}}}
    return job.execute_in_process(instance=instance, run_config=config, raise_on_error=False)


def test_a_checkpoint_with_its_records_lineage_and_wandb_run(database_url, instance, tmp_path, tiny_model):
    store, _ = scored_store(database_url, instance)
    result = train(database_url, trainer_for(tmp_path, tiny_model), instance)
    assert result.success
    (materialization,) = result.asset_materializations_for_node("trained_checkpoint")
    meta = {k: v.value for k, v in materialization.metadata.items()}
    assert meta["model_version"] == "babylon-mmo@2" and meta["steps"] == 2
    # one observation per step for the Plots tab, and still one materialization (the promotion sensor's trigger)
    steps = [o.metadata for o in result.asset_observations_for_node("trained_checkpoint")]
    assert [m["step"].value for m in steps] == [1, 2] and all(isinstance(m["loss"].value, float) for m in steps)
    assert {c.name: c.type for c in meta["per_step"].schema.columns}["loss"] == "float"
    assert Path(meta["checkpoint_path"], "adapter_model.safetensors").is_file()

    with store.engine.connect() as connection:
        batch = connection.execute(select(table_of(TrainingBatch))).mappings().one()
        models = (
            connection.execute(select(table_of(TrainedModel)).order_by(table_of(TrainedModel).c.modelId))
            .mappings()
            .all()
        )
        used = connection.execute(
            select(table_of(Trajectory).c.trajectoryId, table_of(Trajectory).c.trainedInBatch).where(
                table_of(Trajectory).c.usedInTraining.is_(True)
            )
        ).all()
    assert batch["status"] == "completed" and batch["batchId"] == meta["batch_id"]
    assert batch["modelVersion"] == "babylon-mmo@2" and batch["trainingLoss"] is not None
    assert batch["startedAt"] is not None and batch["completedAt"] is not None and batch["error"] is None
    assert [m["version"] for m in models] == ["babylon-mmo@1", "babylon-mmo@2"]
    assert {m["status"] for m in models} == {"trained"}  # never ready before the gate
    assert all(m["trainingBatch"] == batch["batchId"] and m["wandbRunId"] == meta["wandb_run_id"] for m in models)
    assert all(m["wandbArtifactId"] is None for m in models)  # offline: empty until synced
    assert models[1]["storagePath"] == meta["checkpoint_path"]
    assert sorted(json.loads(batch["trajectoryIds"])) == sorted(t for t, _ in used)
    assert used and {b for _, b in used} == {batch["batchId"]}

    lineage = TrainingRecords(store).lineage("babylon-mmo@2")
    assert lineage.steps == [1, 2] and lineage.batches == [batch["batchId"]]
    assert set(lineage.windows) <= set(WINDOWS) and len(lineage.windows) >= 2
    assert set(lineage.trajectory_ids) == {t for t, _ in used}
    assert lineage.judgments and {j["agent_window_id"] for j in lineage.judgments} == set(lineage.agent_windows)
    first = TrainingRecords(store).lineage("babylon-mmo@1")
    assert first.steps == [1] and set(first.agent_windows) <= set(lineage.agent_windows)

    run_dir = Path(meta["wandb_dir"])
    assert run_dir.is_dir() and run_dir.name.startswith("offline-run-")
    logged = b"".join(p.read_bytes() for p in run_dir.glob("*.wandb"))
    for metric in (
        b"loss",
        b"reward_mean",
        b"reward_std",
        b"groups_used",
        b"groups_skipped_zero_variance",
        b"tokens_per_second",
    ):
        assert metric in logged, metric
    # The adapter is a version of the model's one artifact, aliased step-2 and latest (not an artifact per step).
    assert b"babylon-mmo" in logged and b"step-2" in logged and b"latest" in logged
    assert b"babylon-mmo-step-2" not in logged
    store.dispose()


def test_a_failed_training_run_marks_its_batch_failed_with_the_error(simulated_store, instance, tmp_path):
    url = simulated_store.target.url.render_as_string(hide_password=False)
    defs = build_definitions(Settings(DATABASE_URL=url))
    assert all(run.success for run in materialize_windows(defs, WINDOWS, instance))
    assert materialize_training_dataset(defs, instance, until="2025-01-15T14:00").success
    result = train(url, trainer_for(tmp_path, tmp_path / "no-such-model", wandb_mode="disabled"), instance)
    assert not result.success
    with simulated_store.engine.connect() as connection:
        batch = connection.execute(select(table_of(TrainingBatch))).mappings().one()
        assert connection.execute(select(table_of(TrainedModel))).first() is None
    assert batch["status"] == "failed" and "BaseModelError" in batch["error"] and "no-such-model" in batch["error"]


def rules(**overrides) -> WindowRulesResource:
    return WindowRulesResource.from_settings(
        Settings(**{name.upper(): value for name, value in {"lookback_hours": 168, **overrides}.items()})
    )


def test_training_sensor_ticks_with_explicit_cursors(simulated_store, instance, tmp_path):
    url = simulated_store.target.url.render_as_string(hide_password=False)
    defs = build_definitions(Settings(DATABASE_URL=url))
    # Two scored windows: not enough.
    assert all(run.success for run in materialize_windows(defs, WINDOWS[:2], instance))
    tick = evaluate_training_sensor(simulated_store, instance, rules(), None, NOW, new_before_retrain=2)
    assert isinstance(tick, SkipReason) and "2 ready, scored window(s)" in str(tick.skip_message)
    # Three: the first training run (no checkpoint yet).
    assert all(run.success for run in materialize_windows(defs, WINDOWS[2:], instance))
    tick = evaluate_training_sensor(simulated_store, instance, rules(), None, NOW, new_before_retrain=2)
    assert isinstance(tick, SensorResult) and len(tick.run_requests) == 1
    cursor = tick.cursor
    # The same windows again (the cursor): no double launch.
    again = evaluate_training_sensor(simulated_store, instance, rules(), cursor, NOW, new_before_retrain=2)
    assert isinstance(again, SkipReason) and "already launched" in str(again.skip_message)
    # While a training run is in flight: nothing, whatever the cursor.
    instance.add_run(DagsterRun(job_name="training_job", run_id=str(uuid.uuid4()), status=DagsterRunStatus.STARTED))
    busy = evaluate_training_sensor(simulated_store, instance, rules(), None, NOW, new_before_retrain=2)
    assert isinstance(busy, SkipReason) and "in flight" in str(busy.skip_message)


def test_training_sensor_waits_for_new_windows_after_a_checkpoint(simulated_store, instance):
    from datetime import timedelta

    url = simulated_store.target.url.render_as_string(hide_password=False)
    defs = build_definitions(Settings(DATABASE_URL=url))
    assert all(run.success for run in materialize_windows(defs, WINDOWS, instance))
    records = TrainingRecords(simulated_store)
    judged = records.scored_windows(WINDOWS)
    assert sorted(judged) == WINDOWS
    records.add_checkpoint(
        model_version="babylon-mmo@1",
        base_model="tiny",
        batch_id="b1",
        storage_path="/x",
        avg_reward=0.5,
        wandb_run_id=None,
    )

    def checkpoint_at(when) -> None:
        with simulated_store.engine.begin() as connection:
            connection.execute(table_of(TrainedModel).update().values(createdAt=when))

    checkpoint_at(max(judged.values()) + timedelta(minutes=1))  # after every judgment: nothing is new
    tick = evaluate_training_sensor(simulated_store, instance, rules(), None, NOW, new_before_retrain=1)
    assert isinstance(tick, SkipReason) and "0 window(s) scored since the last checkpoint" in str(tick.skip_message)
    checkpoint_at(min(judged.values()) - timedelta(minutes=1))  # before them: all three are new
    waiting = evaluate_training_sensor(simulated_store, instance, rules(), None, NOW, new_before_retrain=4)
    assert isinstance(waiting, SkipReason) and "3 window(s) scored since" in str(waiting.skip_message)
    launch = evaluate_training_sensor(simulated_store, instance, rules(), None, NOW, new_before_retrain=3)
    assert isinstance(launch, SensorResult) and launch.run_requests[0].run_key.startswith("train-")


def test_the_trainer_resource_carries_every_training_setting(simulated_store):
    changed = {
        "MAX_SEQUENCE_TOKENS": 300,
        "MICRO_BATCH_SIZE": 3,
        "LORA_RANK": 4,
        "LORA_ALPHA": 12,
        "LORA_DROPOUT": 0.1,
        "LORA_TARGET_MODULES": "q_proj,v_proj",
        "KL_COEF": 0.05,
        "CLIP_EPSILON": 0.3,
        "MAX_GRAD_NORM": 0.5,
        "KEEP_CHECKPOINTS": 2,
        "TRAIN_SEED": 9,
        "TRAIN_DEVICE": "cpu",
        "DECISIONS_PER_TRAJECTORY": 2,
        "ITERATIONS": 4,
        "WINDOWS_PER_ITERATION": 5,
        "LEARNING_RATE": 1e-4,
    }
    trainer = build_definitions(Settings(**changed)).resources["trainer"]
    carried = trainer.settings()
    assert {name: getattr(carried, name) for name in changed} == changed
    config = trainer.backend(simulated_store).config
    assert (
        config.max_sequence_tokens,
        config.micro_batch_size,
        config.lora_rank,
        config.lora_alpha,
        config.lora_dropout,
        config.target_modules,
        config.kl_coef,
        config.clip_epsilon,
        config.max_grad_norm,
        config.keep_checkpoints,
        config.seed,
        config.device,
    ) == (300, 3, 4, 12, 0.1, ("q_proj", "v_proj"), 0.05, 0.3, 0.5, 2, 9, "cpu")
    options = trainer.options()
    assert (
        options.iterations,
        options.windows_per_iteration,
        options.decisions_per_trajectory,
        options.seed,
        options.learning_rate,
    ) == (4, 5, 2, 9, 1e-4)


def test_a_step_trains_on_the_drawn_decisions_of_each_agent_window(simulated_store, instance, tmp_path, tiny_model):
    url = simulated_store.target.url.render_as_string(hide_password=False)
    defs = build_definitions(Settings(DATABASE_URL=url))
    assert all(run.success for run in materialize_windows(defs, WINDOWS, instance))
    assert materialize_training_dataset(defs, instance, until="2025-01-15T14:00").success
    reports = []
    with listening(on_step=reports.append):
        result = train(
            url,
            trainer_for(tmp_path, tiny_model, iterations=1, decisions_per_trajectory=2, wandb_mode="disabled"),
            instance,
        )
    assert result.success
    (report,) = reports
    used = int(report.metrics["groups_used"])
    assert used >= 1 and report.metrics["sequences"] > 0
    # two decisions of every trained agent-window, where each played more than two
    assert report.metrics["sequences"] <= 2 * report.trajectories
    assert report.metrics["sequences"] % 2 == 0


def test_two_stores_trained_from_one_working_directory_never_share_a_lineage(instance, tmp_path, tiny_model):
    first, _ = scored_store(f"sqlite:///{tmp_path / 'first.db'}", instance, windows=2)
    trainer = trainer_for(tmp_path, tiny_model, iterations=1)  # one ART_PATH for both stores
    assert train(f"sqlite:///{tmp_path / 'first.db'}", trainer, instance).success
    second_url = f"sqlite:///{tmp_path / 'second.db'}"
    second, _ = scored_store(second_url, instance, windows=2)
    result = train(second_url, trainer, instance)
    assert not result.success
    assert TrainingRecords(second).checkpoints() == []  # nothing recorded in the second store
    with second.engine.connect() as connection:
        failed = connection.execute(select(table_of(TrainingBatch))).mappings().one()
    assert failed["status"] == "failed" and "CheckpointOwnerError" in failed["error"]
    first_id, _ = CheckpointRecords(first).owner()
    second_id, _ = CheckpointRecords(second).owner()
    assert first_id != second_id and first_id in failed["error"] and second_id in failed["error"]
    # the first store goes on training from its own checkpoint
    assert train(f"sqlite:///{tmp_path / 'first.db'}", trainer, instance).success
    assert [m.version for m in TrainingRecords(first).checkpoints()] == ["babylon-mmo@1", "babylon-mmo@2"]
    first.dispose()
    second.dispose()
