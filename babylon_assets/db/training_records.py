"""Training records in the game's tables (DESIGN 2, 6) and their lineage in ours.

- `training_batches`: one row per training run, pending -> training -> completed, or failed with its error.
- `trained_models`: one row per checkpoint, status `trained` (never `ready` before the gate passes it).
- `trajectories.usedInTraining` / `trainedInBatch` on every game row a run learned from.
- `babylon_assets.training_step_members`: which agent-windows each step learned from, so `lineage()`
  lists, for any checkpoint, every window, trajectory and judgment that trained it.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, func, select, update

from babylon_assets.core.on_policy import split_version
from babylon_assets.db.engine import insert_many, naive_utc
from babylon_assets.db.schema import (
    JudgmentRecord,
    TrainedModel,
    TrainingBatch,
    TrainingStepMember,
    Trajectory,
    table_of,
)
from babylon_assets.db.store import Store


@dataclass(frozen=True, slots=True)
class TrainedModelRecord:
    """One `trained_models` row, named as the game names its columns (DESIGN 2, 6)."""

    id: str
    modelId: str
    version: str
    baseModel: str
    trainingBatch: str | None
    status: str
    deployedAt: datetime | None
    archivedAt: datetime | None
    storagePath: str
    benchmarkScore: float | None
    accuracy: float | None
    avgReward: float | None
    evalMetrics: Any
    wandbRunId: str | None
    wandbArtifactId: str | None
    agentsUsing: int
    totalInferences: int
    createdAt: datetime
    updatedAt: datetime

    @classmethod
    def from_row(cls, row: Mapping[Any, Any]) -> TrainedModelRecord:
        """The record of a selected row (columns the game may add are left out)."""
        return cls(**{name: row[name] for name in cls.__dataclass_fields__})

    @property
    def metrics(self) -> dict[str, Any]:
        """evalMetrics as a dict (empty before the evaluation)."""
        return self.evalMetrics if isinstance(self.evalMetrics, dict) else {}


@dataclass(frozen=True)
class StepMember:
    """One agent-window a step learned from."""

    agent_window_id: str
    window_id: str
    group_id: str
    trajectory_ids: tuple[str, ...]
    reward: float


@dataclass(frozen=True)
class Lineage:
    """Everything that trained a checkpoint."""

    model_version: str
    steps: list[int]
    windows: list[str]
    agent_windows: list[str]
    trajectory_ids: list[str]
    judgments: list[dict[str, Any]]
    batches: list[str]


class TrainingRecords:
    """Writes and reads the training records of one store."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def start_batch(self, batch_id: str, base_model: str, model_version: str) -> None:
        """A `pending` training_batches row (the run exists; nothing trained yet)."""
        self.store.require_game_writes("training_batches")
        with self.store.engine.begin() as connection:
            connection.execute(
                table_of(TrainingBatch).insert(),
                [
                    {
                        "id": uuid.uuid4().hex,
                        "batchId": batch_id,
                        "baseModel": base_model,
                        "modelVersion": model_version,
                        "trajectoryIds": "[]",
                        "rewardsJson": "[]",
                        "status": "pending",
                        "createdAt": self.store.now(),
                    }
                ],
            )

    def mark_training(self, batch_id: str) -> None:
        """The run started its first step."""
        self._update_batch(batch_id, status="training", startedAt=self.store.now())

    def complete_batch(
        self,
        batch_id: str,
        *,
        model_version: str,
        trajectory_ids: Sequence[str],
        rewards: Sequence[float],
        rankings: Sequence[dict[str, Any]],
        loss: float | None,
    ) -> None:
        """The run finished: what it trained on, its loss, and its trajectories marked used."""
        self._update_batch(
            batch_id,
            status="completed",
            completedAt=self.store.now(),
            modelVersion=model_version,
            trajectoryIds=json.dumps(list(trajectory_ids)),
            rewardsJson=json.dumps(list(rewards)),
            rankingsJson=json.dumps(list(rankings)),
            trainingLoss=loss,
        )
        trajectories = table_of(Trajectory)
        ids = sorted(set(trajectory_ids))
        with self.store.engine.begin() as connection:
            for start in range(0, len(ids), 500):
                connection.execute(
                    update(trajectories)
                    .where(trajectories.c.trajectoryId.in_(bindparam("ids", expanding=True)))
                    .values(usedInTraining=True, trainedInBatch=batch_id, updatedAt=self.store.now()),
                    {"ids": ids[start : start + 500]},
                )

    def fail_batch(self, batch_id: str, error: str) -> None:
        """The run failed: the row says so, with the error."""
        self._update_batch(batch_id, status="failed", completedAt=self.store.now(), error=error[:10_000])

    def _update_batch(self, batch_id: str, **values: Any) -> None:
        self.store.require_game_writes("training_batches")
        batches = table_of(TrainingBatch)
        with self.store.engine.begin() as connection:
            connection.execute(update(batches).where(batches.c.batchId == batch_id).values(**values))

    def batch(self, batch_id: str) -> dict[str, Any] | None:
        """One training_batches row."""
        batches = table_of(TrainingBatch)
        with self.store.engine.connect() as connection:
            row = connection.execute(select(batches).where(batches.c.batchId == batch_id)).mappings().first()
        return None if row is None else dict(row)

    def record_step(self, *, model_name: str, step: int, batch_id: str, members: Sequence[StepMember]) -> None:
        """What a step learned from (replacing a step redone after a crash)."""
        table = table_of(TrainingStepMember)
        with self.store.engine.begin() as connection:
            connection.execute(table.delete().where(table.c.model_name == model_name, table.c.step == step))
            insert_many(
                connection,
                table,
                [
                    {
                        "model_name": model_name,
                        "step": step,
                        "agent_window_id": m.agent_window_id,
                        "batch_id": batch_id,
                        "window_id": m.window_id,
                        "group_id": m.group_id,
                        "trajectory_ids": json.dumps(list(m.trajectory_ids)),
                        "reward": m.reward,
                    }
                    for m in members
                ],
            )

    def add_checkpoint(
        self,
        *,
        model_version: str,
        base_model: str,
        batch_id: str,
        storage_path: str,
        avg_reward: float | None,
        wandb_run_id: str | None,
    ) -> None:
        """A `trained` trained_models row for a checkpoint (idempotent on its version)."""
        self.store.require_game_writes("trained_models")
        models = table_of(TrainedModel)
        values = {
            "baseModel": base_model,
            "trainingBatch": batch_id,
            "status": "trained",
            "storagePath": storage_path,
            "avgReward": avg_reward,
            "wandbRunId": wandb_run_id,
            "updatedAt": self.store.now(),
        }
        with self.store.engine.begin() as connection:
            existing = connection.execute(select(models.c.id).where(models.c.modelId == model_version)).first()
            if existing:
                connection.execute(update(models).where(models.c.modelId == model_version).values(**values))
            else:
                connection.execute(
                    models.insert(),
                    [
                        {
                            "id": uuid.uuid4().hex,
                            "modelId": model_version,
                            "version": model_version,
                            "createdAt": self.store.now(),
                            **values,
                        }
                    ],
                )

    def checkpoints(self, batch_id: str | None = None) -> list[TrainedModelRecord]:
        """trained_models rows (of one batch), oldest first."""
        models = table_of(TrainedModel)
        query = select(models).order_by(models.c.createdAt, models.c.modelId)
        if batch_id is not None:
            query = query.where(models.c.trainingBatch == batch_id)
        with self.store.engine.connect() as connection:
            return [TrainedModelRecord.from_row(row) for row in connection.execute(query).mappings()]

    def scored_windows(self, window_ids: Sequence[str]) -> dict[str, datetime]:
        """Windows among these with judgments, and when each was last judged (UTC, naive)."""
        if not window_ids:
            return {}
        judgments = table_of(JudgmentRecord)
        query = (
            select(judgments.c.window_id, func.max(judgments.c.judged_at))
            .where(judgments.c.window_id.in_(bindparam("ids", expanding=True)))
            .group_by(judgments.c.window_id)
        )
        with self.store.engine.connect() as connection:
            rows = connection.execute(query, {"ids": list(window_ids)}).all()
        return {str(w): naive_utc(when) for w, when in rows}

    def latest_checkpoint_time(self) -> datetime | None:
        """When the newest checkpoint row was written (None before any)."""
        models = table_of(TrainedModel)
        with self.store.engine.connect() as connection:
            row = connection.execute(select(models.c.createdAt).order_by(models.c.createdAt.desc()).limit(1)).first()
        return None if row is None else naive_utc(row[0])

    def lineage(self, model_version: str) -> Lineage:
        """Every step, window, agent-window, game trajectory, judgment and batch behind `{name}@{step}`."""
        split = split_version(model_version)
        if split is None:
            raise ValueError(f"{model_version!r} is not a model version ({{MODEL_NAME}}@{{step}})")
        name, step = split
        table, judgments = table_of(TrainingStepMember), table_of(JudgmentRecord)
        with self.store.engine.connect() as connection:
            rows = [
                dict(r)
                for r in connection.execute(
                    select(table)
                    .where(table.c.model_name == name, table.c.step <= step)
                    .order_by(table.c.step, table.c.window_id, table.c.agent_window_id)
                ).mappings()
            ]
            agent_windows = sorted({r["agent_window_id"] for r in rows})
            judged: list[dict[str, Any]] = []
            for start in range(0, len(agent_windows), 500):
                judged.extend(
                    dict(j)
                    for j in connection.execute(
                        select(judgments)
                        .where(judgments.c.agent_window_id.in_(bindparam("ids", expanding=True)))
                        .order_by(judgments.c.window_id, judgments.c.agent_window_id, judgments.c.judge_version),
                        {"ids": agent_windows[start : start + 500]},
                    ).mappings()
                )
        return Lineage(
            model_version=model_version,
            steps=sorted({r["step"] for r in rows}),
            windows=sorted({r["window_id"] for r in rows}),
            agent_windows=agent_windows,
            trajectory_ids=sorted({t for r in rows for t in json.loads(r["trajectory_ids"])}),
            judgments=judged,
            batches=sorted({r["batch_id"] for r in rows}),
        )
