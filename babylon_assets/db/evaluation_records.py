"""Evaluation and deployment records.

- `babylon_assets.evaluation_plays`: every held-out agent-window a policy played, stored as each market
  finishes, so a policy is played once per evaluation plan (the base is reused for every checkpoint) and
  an interrupted evaluation resumes.
- The evaluation play itself lives in the game's `trajectories` (written by the gateway, `isEvaluation`,
  never trained on); its closing P&L comes from the simulator's books.
- `trained_models`: evalMetrics and benchmarkScore of an evaluation; status trained -> ready or rejected
  (the gate), ready -> deployed -> archived (DESIGN 6), with deployedAt / archivedAt.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import and_, bindparam, select, update

from babylon_assets.core.paired_stats import PlayResult
from babylon_assets.db.engine import insert_many
from babylon_assets.db.schema import EvaluationPlay, TrainedModel, table_of
from babylon_assets.db.store import Store, StoreError
from babylon_assets.db.training_records import TrainedModelRecord

GATE_STATUSES = ("ready", "rejected")


class EvaluationRecords:
    """Evaluation play, evaluation results and model status on a Store."""

    def __init__(self, store: Store) -> None:
        self.store = store

    # --- evaluation play ---------------------------------------------------------------------------------

    def plays(self, plan_key: str, policy: str) -> list[PlayResult]:
        """A policy's stored plays on a plan, in (seed, window, slot) order."""
        table = table_of(EvaluationPlay)
        query = (
            select(table)
            .where(and_(table.c.plan_key == plan_key, table.c.policy == policy))
            .order_by(table.c.seed, table.c.window_id, table.c.slot)
        )
        with self.store.engine.connect() as connection:
            rows = connection.execute(query).mappings().all()
        return [
            PlayResult(
                policy=row["policy"],
                seed=row["seed"],
                window_id=row["window_id"],
                slot=row["slot"],
                final_pnl=row["final_pnl"],
                decisions=row["decisions"],
                unparseable=row["unparseable"],
                max_drawdown=row["max_drawdown"],
                trajectory_id=row["trajectory_id"],
            )
            for row in rows
        ]

    def save_plays(self, plan_key: str, plays: Sequence[PlayResult]) -> int:
        """Store plays (those already stored are left as they are); how many were new."""
        if not plays:
            return 0
        table = table_of(EvaluationPlay)
        keys = {(p.policy, p.seed, p.window_id, p.slot) for p in plays}
        with self.store.engine.begin() as connection:
            existing = {
                (r.policy, r.seed, r.window_id, r.slot)
                for r in connection.execute(
                    select(table.c.policy, table.c.seed, table.c.window_id, table.c.slot).where(
                        and_(table.c.plan_key == plan_key, table.c.policy.in_(bindparam("policies", expanding=True)))
                    ),
                    {"policies": sorted({k[0] for k in keys})},
                )
            }
            now = self.store.now_utc()
            fresh = [
                {
                    "plan_key": plan_key,
                    "policy": p.policy,
                    "seed": p.seed,
                    "window_id": p.window_id,
                    "slot": p.slot,
                    "final_pnl": p.final_pnl,
                    "decisions": p.decisions,
                    "unparseable": p.unparseable,
                    "max_drawdown": p.max_drawdown,
                    "trajectory_id": p.trajectory_id or "",
                    "created_at": now,
                }
                for p in plays
                if (p.policy, p.seed, p.window_id, p.slot) not in existing
            ]
            insert_many(connection, table, fresh)
        return len(fresh)

    # --- trained_models -----------------------------------------------------------------------------------

    def model(self, model_id: str) -> TrainedModelRecord:
        """A trained_models row by modelId (or version); a clear error when there is none."""
        models = table_of(TrainedModel)
        with self.store.engine.connect() as connection:
            row = (
                connection.execute(
                    select(models).where((models.c.modelId == model_id) | (models.c.version == model_id))
                )
                .mappings()
                .first()
            )
        if row is None:
            raise StoreError(f"no trained model {model_id!r} in trained_models")
        return TrainedModelRecord.from_row(row)

    def newest_checkpoint(self, model_name: str) -> TrainedModelRecord | None:
        """The newest trained_models row of a model (by step), whatever its status."""
        models = table_of(TrainedModel)
        with self.store.engine.connect() as connection:
            rows = connection.execute(select(models).where(models.c.modelId.like(f"{model_name}@%"))).mappings().all()
        steps = [
            (int(row["modelId"].rsplit("@", 1)[1]), TrainedModelRecord.from_row(row))
            for row in rows
            if row["modelId"].rsplit("@", 1)[1].isdigit()
        ]
        return max(steps, key=lambda item: item[0])[1] if steps else None

    def record_evaluation(self, model_id: str, eval_metrics: dict[str, Any], benchmark_score: float) -> None:
        """Store an evaluation's results on the model's row (evalMetrics, benchmarkScore)."""
        self.store.require_game_writes("trained_models (evaluation results)")
        models = table_of(TrainedModel)
        with self.store.engine.begin() as connection:
            connection.execute(
                update(models)
                .where(models.c.modelId == model_id)
                .values(evalMetrics=eval_metrics, benchmarkScore=benchmark_score, updatedAt=self.store.now())
            )

    def set_gate_status(self, model_id: str, passed: bool) -> str:
        """The gate's verdict: trained -> ready or rejected. A deployed or archived model keeps its status."""
        self.store.require_game_writes("trained_models (gate)")
        status = "ready" if passed else "rejected"
        models = table_of(TrainedModel)
        with self.store.engine.begin() as connection:
            connection.execute(
                update(models)
                .where(and_(models.c.modelId == model_id, models.c.status.in_(("trained", *GATE_STATUSES))))
                .values(status=status, updatedAt=self.store.now())
            )
        return status

    def mark_deployed(self, model_id: str) -> str | None:
        """The model becomes `deployed` and the one deployed before it `archived`; returns that one's id."""
        self.store.require_game_writes("trained_models (deploy)")
        models = table_of(TrainedModel)
        now = self.store.now()
        with self.store.engine.begin() as connection:
            previous = (
                connection.execute(
                    select(models.c.modelId).where(and_(models.c.status == "deployed", models.c.modelId != model_id))
                )
                .scalars()
                .all()
            )
            if previous:
                connection.execute(
                    update(models)
                    .where(models.c.modelId.in_(previous))
                    .values(status="archived", archivedAt=now, updatedAt=now)
                )
            connection.execute(
                update(models)
                .where(models.c.modelId == model_id)
                .values(status="deployed", deployedAt=now, archivedAt=None, updatedAt=now)
            )
        return previous[-1] if previous else None

    def deployed(self) -> TrainedModelRecord | None:
        """The deployed model's row, if any."""
        models = table_of(TrainedModel)
        with self.store.engine.connect() as connection:
            row = (
                connection.execute(
                    select(models).where(models.c.status == "deployed").order_by(models.c.deployedAt.desc())
                )
                .mappings()
                .first()
            )
        return None if row is None else TrainedModelRecord.from_row(row)

    def rollback_target(self) -> TrainedModelRecord | None:
        """The model deployed before the current one: the most recently deployed of the others."""
        current = self.deployed()
        models = table_of(TrainedModel)
        query = select(models).where(models.c.deployedAt.is_not(None)).order_by(models.c.deployedAt.desc())
        if current is not None:
            query = query.where(models.c.modelId != current.modelId)
        with self.store.engine.connect() as connection:
            row = connection.execute(query).mappings().first()
        return None if row is None else TrainedModelRecord.from_row(row)
