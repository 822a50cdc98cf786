"""Play writes: trajectories and their LLM calls (recorder, gateway, simulator), their closing books, market
outcomes and quarantined rows."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, and_, bindparam, column, select
from sqlalchemy import table as table_clause
from sqlalchemy.exc import IntegrityError

from babylon_assets.core.trajectory import QuarantinedRow
from babylon_assets.db.engine import insert_many, naive_utc, new_id, upsert
from babylon_assets.db.inspection import game_schema_of
from babylon_assets.db.schema import (
    GAME_USER_TABLE,
    LlmCallLog,
    MarketOutcome,
    QuarantinedGatewayCall,
    QuarantinedTrajectory,
    Trajectory,
    table_of,
)
from babylon_assets.db.store import DuplicateTrajectoryError, Store


@dataclass(frozen=True, slots=True)
class RecordedPlay:
    """Trajectory rows and their LLM call rows, written together."""

    trajectories: Sequence[dict[str, Any]]
    llm_calls: Sequence[dict[str, Any]] = ()


class PlayRecords:
    """Writes of play into the game's tables (and quarantine into ours), through one store."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def record_play(self, play: RecordedPlay) -> None:
        """Write trajectories and their LLM call logs in one transaction (recorder, gateway)."""
        self.store.require_game_writes("trajectories")
        now = self.store.now()
        trajectories = [{"updatedAt": now, **row} for row in play.trajectories]
        with self.store.engine.begin() as connection:
            self.store.require_known_agents(connection, {row["agentId"] for row in trajectories})
            try:
                insert_many(connection, table_of(Trajectory), trajectories)
                insert_many(connection, table_of(LlmCallLog), play.llm_calls)
            except IntegrityError as error:
                ids = ", ".join(row["trajectoryId"] for row in trajectories)
                raise DuplicateTrajectoryError(
                    f"trajectory {ids} (or one of its LLM calls) is already recorded; nothing was written"
                ) from error

    def game_accounts(self, connection: Connection, agent_ids: Sequence[str]) -> dict[str, dict[str, float]]:
        """The game's own accounts of these agents ("User".lifetimePnL and virtualBalance), when it has them."""
        if not {"lifetimePnL", "virtualBalance"} <= self.store.game_user_columns:
            return {}
        schema = game_schema_of(connection)
        users = table_clause(
            GAME_USER_TABLE, column("id"), column("lifetimePnL"), column("virtualBalance"), schema=schema
        )
        rows = connection.execute(
            select(users.c.id, users.c.lifetimePnL, users.c.virtualBalance).where(
                users.c.id.in_(bindparam("ids", expanding=True))
            ),
            {"ids": list(agent_ids)},
        )
        return {r.id: {"lifetimePnL": float(r.lifetimePnL), "virtualBalance": float(r.virtualBalance)} for r in rows}

    def close_gateway_windows(self, before_window: str) -> int:
        """Take the closing snapshot of the game's accounts for every gateway agent-hour that ended before
        `before_window`: P&L = lifetimePnL now - lifetimePnL when the hour opened. Returns how many changed."""
        trajectories = table_of(Trajectory)
        changed = 0
        with self.store.engine.begin() as connection:
            rows = connection.execute(
                select(trajectories.c.id, trajectories.c.agentId, trajectories.c.metadataJson).where(
                    and_(
                        trajectories.c.trajectoryId.like("gw-%"),
                        trajectories.c.windowId < bindparam("w"),
                        trajectories.c.finalStatus == "active",
                    )
                ),
                {"w": before_window},
            ).all()
            accounts = self.game_accounts(connection, sorted({r.agentId for r in rows}))
            for row in rows:
                metadata = json.loads(row.metadataJson or "{}")
                account = accounts.get(row.agentId)
                values: dict[str, Any] = {"finalStatus": "completed", "updatedAt": self.store.now()}
                if account is not None and "open" in metadata:
                    metadata["close"] = account
                    values.update(
                        finalPnL=account["lifetimePnL"] - metadata["open"]["lifetimePnL"],
                        finalBalance=account["virtualBalance"],
                        metadataJson=json.dumps(metadata),
                    )
                connection.execute(
                    trajectories.update()
                    .where(trajectories.c.id == bindparam("row_id"))
                    .values(**{k: bindparam(f"v_{k}") for k in values}),
                    {"row_id": row.id, **{f"v_{k}": v for k, v in values.items()}},
                )
                changed += 1
        return changed

    def discard_simulated_play(self, trajectory_ids: Iterable[str]) -> int:
        """Delete simulated agents' gateway trajectories (and their LLM calls) of an hour whose play did not
        finish, so playing it again starts clean instead of appending to half an hour of old calls."""
        ids = sorted(set(trajectory_ids))
        if not ids:
            return 0
        self.store.require_own_store("simulated play")
        trajectories, calls = table_of(Trajectory), table_of(LlmCallLog)
        with self.store.engine.begin() as connection:
            found = list(
                connection.execute(
                    select(trajectories.c.trajectoryId).where(
                        trajectories.c.trajectoryId.in_(bindparam("ids", expanding=True))
                    ),
                    {"ids": ids},
                ).scalars()
            )
            if not found:
                return 0
            connection.execute(
                calls.delete().where(calls.c.trajectoryId.in_(bindparam("ids", expanding=True))), {"ids": found}
            )
            connection.execute(
                trajectories.delete().where(trajectories.c.trajectoryId.in_(bindparam("ids", expanding=True))),
                {"ids": found},
            )
        return len(found)

    def settle_simulated_play(self, closing: dict[str, dict[str, Any]], *, held_out: bool) -> int:
        """Close the gateway's trajectories of simulated agents with the simulator's books (the game's books
        close its own agents' hours): {trajectoryId: {finalPnL, finalBalance, tradesExecuted}}. Held-out play
        is marked isEvaluation and not training data. Returns the rows changed."""
        if not closing:
            return 0
        self.store.require_own_store("simulated play")
        trajectories = table_of(Trajectory)
        changed = 0
        with self.store.engine.begin() as connection:
            for trajectory_id, books in sorted(closing.items()):
                values: dict[str, Any] = {
                    "finalStatus": "completed",
                    "finalPnL": books["finalPnL"],
                    "finalBalance": books["finalBalance"],
                    "tradesExecuted": books["tradesExecuted"],
                    "updatedAt": self.store.now(),
                }
                if held_out:
                    values.update(isEvaluation=True, isTrainingData=False)
                result = connection.execute(
                    trajectories.update().where(trajectories.c.trajectoryId == bindparam("tid")).values(**values),
                    {"tid": trajectory_id},
                )
                changed += int(result.rowcount or 0)
        return changed

    def append_gateway_calls(self, records: Sequence[Any]) -> int:
        """Add gateway calls to their agents' trajectories for the hour (each created by its first call) and to
        llm_call_logs, all in one transaction; calls already recorded (a retry) are skipped. Returns how many
        were written. P&L comes from the game's books when it has them: "User" is snapshotted at the hour's
        first call, and the P&L is the lifetime P&L since then."""
        self.store.require_game_writes("gateway calls")
        now = self.store.now()
        trajectories, calls = table_of(Trajectory), table_of(LlmCallLog)
        with self.store.engine.begin() as connection:
            seen = set(
                connection.execute(
                    select(calls.c.callId).where(calls.c.callId.in_(bindparam("ids", expanding=True))),
                    {"ids": [r.call_id for r in records]},
                ).scalars()
            )
            fresh = [r for r in records if r.call_id not in seen]
            if not fresh:
                return 0
            self.store.require_known_agents(connection, {r.agent_id for r in fresh})
            accounts = self.game_accounts(connection, sorted({r.agent_id for r in fresh}))
            by_trajectory: dict[str, list[Any]] = defaultdict(list)
            for record in sorted(fresh, key=lambda r: r.at):
                by_trajectory[record.trajectory_id].append(record)
            existing = {
                row.trajectoryId: row
                for row in connection.execute(
                    select(
                        trajectories.c.id,
                        trajectories.c.trajectoryId,
                        trajectories.c.stepsJson,
                        trajectories.c.startTime,
                        trajectories.c.metadataJson,
                    )
                    .where(trajectories.c.trajectoryId.in_(bindparam("ids", expanding=True)))
                    # Locked (on PostgreSQL) until this transaction ends: two gateways appending to one agent-hour
                    # take turns instead of one overwriting the other's steps; in one order, so they never deadlock.
                    .order_by(trajectories.c.trajectoryId)
                    .with_for_update(),
                    {"ids": sorted(by_trajectory)},
                )
            }
            call_rows = []
            for trajectory_id, batch in sorted(by_trajectory.items()):
                row = existing.get(trajectory_id)
                # Steps are appended as JSON: re-validating the whole hour on every call would cost the gateway.
                steps: list[Any] = [] if row is None else json.loads(row.stepsJson)
                metadata: dict[str, Any] = {"source": "gateway"} if row is None else json.loads(row.metadataJson)
                account = accounts.get(batch[0].agent_id)
                if account is not None:
                    metadata.setdefault("open", account)
                for record in batch:
                    if account is not None:
                        record.agent_state = {
                            "balance": account["virtualBalance"],
                            "pnl": account["lifetimePnL"] - metadata["open"]["lifetimePnL"],
                            **{k: v for k, v in record.agent_state.items() if k == "openPositions"},
                        }
                    steps.append(record.step(len(steps)).model_dump(mode="json"))
                    call_rows.append(record.call_row(len(steps) - 1))
                last = batch[-1]
                state = last.agent_state
                values = {
                    "stepsJson": json.dumps(steps),
                    "episodeLength": len(steps),
                    "endTime": naive_utc(last.at),
                    "finalBalance": state.get("balance"),
                    "finalPnL": state.get("pnl"),
                    "metricsJson": json.dumps(
                        {
                            "episodeLength": len(steps),
                            "finalStatus": "active",
                            "finalBalance": state.get("balance"),
                            "finalPnL": state.get("pnl"),
                        }
                    ),
                    "metadataJson": json.dumps(metadata),
                    "updatedAt": now,
                }
                if row is None:
                    first = batch[0]
                    connection.execute(
                        trajectories.insert(),
                        [
                            {
                                "id": f"row-{trajectory_id}",
                                "trajectoryId": trajectory_id,
                                "agentId": first.agent_id,
                                "startTime": naive_utc(first.at),
                                "windowId": first.window_id,
                                "rewardComponentsJson": "{}",
                                "totalReward": 0.0,
                                "finalStatus": "active",
                                "isEvaluation": first.is_evaluation,
                                "isTrainingData": not first.is_evaluation,
                                "durationMs": int((last.at - first.at).total_seconds() * 1000),
                                **values,
                            }
                        ],
                    )
                else:
                    values["durationMs"] = int((naive_utc(last.at) - row.startTime).total_seconds() * 1000)
                    connection.execute(
                        trajectories.update()
                        .where(trajectories.c.id == bindparam("row_id"))
                        .values(**{k: bindparam(f"v_{k}") for k in values}),
                        {"row_id": row.id, **{f"v_{k}": v for k, v in values.items()}},
                    )
            connection.execute(calls.insert(), call_rows)
        return len(fresh)

    def replace_market_outcomes(self, window_id: str, rows: Sequence[dict[str, Any]]) -> int:
        """Set a window's outcomes (simulator and fixtures only; idempotent: replaces, never adds)."""
        self.store.require_own_store("market outcomes")
        table = table_of(MarketOutcome)
        with self.store.engine.begin() as connection:
            connection.execute(
                table.delete().where(table.c.windowId == bindparam("window_id")), {"window_id": window_id}
            )
            insert_many(connection, table, [{"id": new_id(), **row, "windowId": window_id} for row in rows])
        return len(rows)

    def quarantine_gateway_call(self, call_id: str, agent_id: str, reason: str, record_json: str) -> None:
        """Keep a call the store refused for its content, whole, with the reason (idempotent on its id)."""
        upsert(
            self.store.engine,
            table_of(QuarantinedGatewayCall),
            ["call_id"],
            [
                {
                    "call_id": call_id,
                    "agent_id": agent_id,
                    "reason": reason[:2000],
                    "record_json": record_json,
                    "quarantined_at": self.store.now_utc(),
                }
            ],
            ["reason", "quarantined_at"],
        )

    def quarantine_windows(self, window_ids: Iterable[str], reason: str, detail: str) -> int:
        """Quarantine every row of these windows with one reason (windows no partition reads); returns how many."""
        items = [
            QuarantinedRow(item.row_id, item.trajectory_id, window_id, reason, detail)
            for window_id in window_ids
            for item in self.store.iter_window(window_id)
        ]
        return self.record_quarantine(items)

    def record_quarantine(self, items: Iterable[QuarantinedRow]) -> int:
        """Store quarantined rows with their reasons; seeing one again updates it, never duplicates."""
        now = self.store.now_utc()
        values = [
            {
                "trajectory_row_id": item.row_id,
                "trajectory_id": item.trajectory_id,
                "window_id": item.window_id,
                "reason": item.reason,
                "detail": item.detail[:2000],
                "first_seen_at": now,
                "last_seen_at": now,
            }
            for item in items
        ]
        if not values:
            return 0
        upsert(
            self.store.engine,
            table_of(QuarantinedTrajectory),
            ["trajectory_row_id", "reason"],
            values,
            ["detail", "window_id", "last_seen_at"],
            increment="times_seen",
        )
        return len(values)
