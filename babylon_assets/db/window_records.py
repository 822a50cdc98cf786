"""The window graph's records in our tables: window states, group membership, judgments (and the game's judge
columns), the judge cache, per-window verdicts and training datasets."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, bindparam, select
from sqlalchemy.exc import IntegrityError

from babylon_assets.core.eligibility import EligibilityRules, WindowSummary
from babylon_assets.core.judging import CachedJudgment
from babylon_assets.core.trajectory import ParsedTrajectory
from babylon_assets.core.window_time import lookback_window_ids, parse_window_id
from babylon_assets.db.engine import insert_many, naive_utc, new_id, upsert
from babylon_assets.db.schema import (
    DatasetMember,
    ExcludedTrajectory,
    GroupMember,
    JudgeCacheEntry,
    JudgeClaim,
    JudgmentRecord,
    RewardJudgment,
    TrainingDatasetRecord,
    Trajectory,
    WindowState,
    WindowVerdict,
    table_of,
)
from babylon_assets.db.store import Store, rows_of_window


@dataclass(frozen=True, slots=True)
class AgentWindowScore:
    """A judged agent-window, as stored."""

    agent_window_id: str
    group_id: str
    score: float
    rank: int
    normalized: float
    reasoning: str


@dataclass(frozen=True, slots=True)
class GroupMemberRecord:
    """One eligible agent-window of a window as stored: kept in a group or dropped (with the reason), with its
    dropout draw and, once judged, its score, rank and the judge that gave them."""

    window_id: str
    agent_window_id: str
    agent_id: str
    trajectory_ids_json: str
    kept: bool
    reason: str
    group_id: str | None
    dropout_rate: float
    dropout_draw: float
    final_pnl: float | None
    score: float | None
    rank: int | None
    reasoning: str | None
    judge_name: str | None
    judge_version: str | None
    judged_at: datetime | None

    @property
    def trajectory_ids(self) -> list[str]:
        """The game rows this agent-window was stitched from."""
        return list(json.loads(self.trajectory_ids_json))


_SCORE_FIELDS = ("score", "rank", "reasoning", "judge_name", "judge_version", "judged_at")


def _group_signatures(rows: Iterable[dict[str, Any]]) -> dict[str, frozenset[tuple[str, str]]]:
    """Each kept group's members and the rows they were stitched from."""
    groups: dict[str, set[tuple[str, str]]] = defaultdict(set)
    for row in rows:
        if row["kept"] and row["group_id"] is not None:
            groups[row["group_id"]].add((row["agent_window_id"], row["trajectory_ids_json"]))
    return {g: frozenset(members) for g, members in groups.items()}


class WindowRecords:
    """What the window assets store about each window, through one store."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def window_fingerprint(self, window_id: str) -> str:
        """A hash of the window's candidate rows (ids and update times): changes when late rows arrive."""
        where, params = rows_of_window(window_id)
        statement = select(Trajectory.id, Trajectory.updatedAt).where(where).order_by(Trajectory.id)
        digest = hashlib.sha256()
        with self.store.engine.connect() as connection:
            for row_id, updated in connection.execute(statement, params):
                digest.update(f"{row_id}|{updated}\n".encode())
        return digest.hexdigest()

    def replace_exclusions(self, window_id: str, excluded: Sequence[tuple[ParsedTrajectory, str]]) -> int:
        """Set a window's excluded rows and their reasons (idempotent: replaces, never adds)."""
        table = table_of(ExcludedTrajectory)
        now = self.store.now_utc()
        rows = [
            {
                "window_id": window_id,
                "trajectory_row_id": row.row_id,
                "trajectory_id": row.trajectory_id,
                "agent_id": row.agent_id,
                "reason": reason,
                "recorded_at": now,
            }
            for row, reason in excluded
        ]
        with self.store.engine.begin() as connection:
            connection.execute(table.delete().where(table.c.window_id == bindparam("w")), {"w": window_id})
            insert_many(connection, table, rows)
        return len(rows)

    def exclusions(self, window_id: str) -> dict[str, str]:
        """A window's excluded rows: trajectory row id -> reason."""
        table = table_of(ExcludedTrajectory)
        statement = select(table.c.trajectory_row_id, table.c.reason).where(table.c.window_id == bindparam("w"))
        with self.store.engine.connect() as connection:
            return {row_id: reason for row_id, reason in connection.execute(statement, {"w": window_id})}

    def save_window_state(self, summary: WindowSummary, rules: EligibilityRules, fingerprint: str) -> None:
        """Remember what the `trajectories` asset found in a window."""
        upsert(
            self.store.engine,
            table_of(WindowState),
            ["window_id"],
            [
                {
                    "window_id": summary.window_id,
                    "rows": summary.rows,
                    "agents": summary.agents,
                    "eligible": summary.eligible_agents,
                    "excluded_json": json.dumps(dict(summary.excluded), sort_keys=True),
                    "quarantined_json": json.dumps(dict(summary.quarantined), sort_keys=True),
                    "ready": summary.is_ready(rules),
                    "rows_fingerprint": fingerprint,
                    "updated_at": self.store.now_utc(),
                }
            ],
            [
                "rows",
                "agents",
                "eligible",
                "excluded_json",
                "quarantined_json",
                "ready",
                "rows_fingerprint",
                "updated_at",
            ],
        )

    def window_states(self, window_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """Stored window states by window id."""
        if not window_ids:
            return {}
        states = table_of(WindowState)
        statement = select(states).where(states.c.window_id.in_(bindparam("ids", expanding=True)))
        with self.store.engine.connect() as connection:
            return {
                row["window_id"]: dict(row)
                for row in connection.execute(statement, {"ids": list(window_ids)}).mappings()
            }

    def eligible_in_lookback(self, window_id: str, lookback_hours: int, rules: EligibilityRules) -> int:
        """Eligible agent-windows in the `lookback_hours` ending with `window_id` (DESIGN 4's total).

        Windows the `trajectories` asset has seen are counted from their stored state; the others are
        read now and their state stored, so the total never depends on the order of materialization.
        """
        ids = lookback_window_ids(lookback_hours, parse_window_id(window_id) + timedelta(hours=1))
        states = self.window_states(ids)
        total = sum(state["eligible"] for state in states.values())
        missing = [w for w in ids if w not in states]
        if missing:
            present = self.store.windows_with_rows(missing)
            for other in missing:
                if other in present:
                    summary = self.store.summarize_window(other, rules)
                    self.save_window_state(summary, rules, self.window_fingerprint(other))
                    total += summary.eligible_agents
        return total

    def replace_group_members(self, window_id: str, rows: Sequence[dict[str, Any]]) -> int:
        """Set a window's membership (idempotent). A group whose members and rows are unchanged keeps its
        scores, so re-cutting the same groups never pays the judge twice; returns how many scores were kept."""
        previous = [dataclasses.asdict(m) for m in self.group_members(window_id)]
        old_groups = _group_signatures(previous)
        new_groups = _group_signatures(rows)
        unchanged = {g for g, signature in new_groups.items() if old_groups.get(g) == signature}
        carried = {
            m["agent_window_id"]: {k: m[k] for k in _SCORE_FIELDS}
            for m in previous
            if m["group_id"] in unchanged and m["score"] is not None
        }
        members = table_of(GroupMember)
        values = [
            {
                **{k: None for k in _SCORE_FIELDS},
                **row,
                **carried.get(row["agent_window_id"], {}),
                "window_id": window_id,
            }
            for row in rows
        ]
        with self.store.engine.begin() as connection:
            connection.execute(members.delete().where(members.c.window_id == bindparam("w")), {"w": window_id})
            insert_many(connection, members, values)
        return len(carried)

    def group_members(self, window_id: str) -> list[GroupMemberRecord]:
        """A window's membership rows, kept and dropped."""
        members = table_of(GroupMember)
        statement = (
            select(members)
            .where(members.c.window_id == bindparam("w"))
            .order_by(members.c.group_id, members.c.agent_window_id)
        )
        with self.store.engine.connect() as connection:
            return [GroupMemberRecord(**row) for row in connection.execute(statement, {"w": window_id}).mappings()]

    def record_judgments(
        self,
        window_id: str,
        judge_name: str,
        judge_version: str,
        criteria: dict[str, Any],
        judged: Sequence[tuple[AgentWindowScore, list[str]]],
    ) -> None:
        """Store scores: our membership rows and judgment history, and (unless GAME_READ_ONLY) the game's judge
        columns of every stitched row and its latest `reward_judgments` row."""
        now = self.store.now_utc()
        members = table_of(GroupMember)
        # One transaction: a store cut midway must leave no score without its history and the game's rows, since a
        # rerun that finds the scores judges nothing again and would never write the rest.
        with self.store.engine.begin() as connection:
            for item, _ in judged:
                connection.execute(
                    members.update()
                    .where(and_(members.c.window_id == bindparam("w"), members.c.agent_window_id == bindparam("aw")))
                    .values(
                        score=bindparam("score"),
                        rank=bindparam("rank"),
                        reasoning=bindparam("reasoning"),
                        judge_name=bindparam("judge"),
                        judge_version=bindparam("version"),
                        judged_at=bindparam("at"),
                    ),
                    {
                        "w": window_id,
                        "aw": item.agent_window_id,
                        "score": item.score,
                        "rank": item.rank,
                        "reasoning": item.reasoning,
                        "judge": judge_name,
                        "version": judge_version,
                        "at": now,
                    },
                )
            history = table_of(JudgmentRecord)
            upsert(
                connection,
                history,
                ["agent_window_id", "judge_version", "window_id"],
                [
                    {
                        "window_id": window_id,
                        "agent_window_id": item.agent_window_id,
                        "group_id": item.group_id,
                        "judge_name": judge_name,
                        "judge_version": judge_version,
                        "score": item.score,
                        "rank": item.rank,
                        "reasoning": item.reasoning,
                        "judged_at": now,
                    }
                    for item, _ in judged
                ],
                ["group_id", "score", "rank", "reasoning", "judged_at"],
                increment="times_judged",
            )
            if self.store.game_read_only:
                return
            naive_now = naive_utc(now)
            criteria_json = json.dumps(criteria, sort_keys=True)
            trajectories = table_of(Trajectory)
            judgment_rows: list[dict[str, Any]] = []
            for item, trajectory_ids in judged:
                connection.execute(
                    trajectories.update()
                    .where(trajectories.c.trajectoryId.in_(bindparam("ids", expanding=True)))
                    .values(
                        aiJudgeReward=bindparam("score"),
                        aiJudgeReasoning=bindparam("reasoning"),
                        judgedAt=bindparam("at"),
                        updatedAt=bindparam("at"),
                    ),
                    {"ids": trajectory_ids, "score": item.score, "reasoning": item.reasoning, "at": naive_now},
                )
                judgment_rows.extend(
                    {
                        "id": new_id(),
                        "trajectoryId": tid,
                        "judgeModel": judge_name,
                        "judgeVersion": judge_version,
                        "overallScore": item.score,
                        "rank": item.rank,
                        "normalizedScore": item.normalized,
                        "groupId": item.group_id,
                        "reasoning": item.reasoning,
                        "criteriaJson": criteria_json,
                        "judgedAt": naive_now,
                    }
                    for tid in trajectory_ids
                )
            upsert(
                connection,
                table_of(RewardJudgment),
                ["trajectoryId"],
                judgment_rows,
                [
                    "judgeModel",
                    "judgeVersion",
                    "overallScore",
                    "rank",
                    "normalizedScore",
                    "groupId",
                    "reasoning",
                    "criteriaJson",
                    "judgedAt",
                ],
            )

    def cached_judgment(self, cache_key: str) -> CachedJudgment | None:
        """A cached group judgment (each member's score and reasoning, and the call's cost), or None."""
        cache = table_of(JudgeCacheEntry)
        with self.store.engine.connect() as connection:
            row = (
                connection.execute(select(cache).where(cache.c.cache_key == bindparam("k")), {"k": cache_key})
                .mappings()
                .first()
            )
        if row is None:
            return None
        return CachedJudgment(
            scores={
                member: (float(score), str(reasoning))
                for member, (score, reasoning) in json.loads(row["scores_json"]).items()
            },
            tokens_in=int(row["tokens_in"]),
            tokens_out=int(row["tokens_out"]),
            dollars=float(row["dollars"]),
        )

    def claim_judgment(self, cache_key: str, owner: str, stale_after_s: float) -> bool:
        """Claim a group before paying the judge for it: True when this owner holds the claim now (a claim older
        than `stale_after_s` was left by a run that died and is taken over)."""
        table = table_of(JudgeClaim)
        now = self.store.now_utc()
        try:
            with self.store.engine.begin() as connection:
                connection.execute(
                    table.delete().where(
                        and_(table.c.cache_key == bindparam("k"), table.c.claimed_at < bindparam("stale"))
                    ),
                    {"k": cache_key, "stale": now - timedelta(seconds=stale_after_s)},
                )
                connection.execute(table.insert(), [{"cache_key": cache_key, "owner": owner, "claimed_at": now}])
        except IntegrityError:
            return False
        return True

    def claim_holder(self, cache_key: str) -> str | None:
        """Who holds the claim on a group now, if anyone."""
        table = table_of(JudgeClaim)
        with self.store.engine.connect() as connection:
            return connection.execute(
                select(table.c.owner).where(table.c.cache_key == bindparam("k")), {"k": cache_key}
            ).scalar()

    def release_judgment(self, cache_key: str, owner: str) -> None:
        """Give a claim up (the answer is cached, or the call failed and another run may try)."""
        table = table_of(JudgeClaim)
        with self.store.engine.begin() as connection:
            connection.execute(
                table.delete().where(and_(table.c.cache_key == bindparam("k"), table.c.owner == bindparam("o"))),
                {"k": cache_key, "o": owner},
            )

    def cache_judgment(
        self,
        cache_key: str,
        judge_version: str,
        window_id: str,
        group_id: str,
        scores: dict[str, tuple[float, str]],
        tokens_in: int,
        tokens_out: int,
        dollars: float,
    ) -> None:
        """Remember a group's judgment (idempotent)."""
        upsert(
            self.store.engine,
            table_of(JudgeCacheEntry),
            ["cache_key"],
            [
                {
                    "cache_key": cache_key,
                    "judge_version": judge_version,
                    "window_id": window_id,
                    "group_id": group_id,
                    "scores_json": json.dumps({k: list(v) for k, v in scores.items()}, sort_keys=True),
                    "tokens_in": tokens_in,
                    "tokens_out": tokens_out,
                    "dollars": dollars,
                    "created_at": self.store.now_utc(),
                }
            ],
            ["scores_json", "tokens_in", "tokens_out", "dollars"],
        )

    def save_verdicts(self, check_name: str, verdicts: Sequence[tuple[str, bool, str]], run_id: str | None) -> None:
        """Store one check's per-window verdicts (window, passed, detail): the latest wins."""
        now = self.store.now_utc()
        upsert(
            self.store.engine,
            table_of(WindowVerdict),
            ["window_id", "check_name"],
            [
                {
                    "window_id": w,
                    "check_name": check_name,
                    "passed": ok,
                    "detail": detail,
                    "run_id": run_id,
                    "checked_at": now,
                }
                for w, ok, detail in verdicts
            ],
            ["passed", "detail", "run_id", "checked_at"],
        )

    def verdicts(
        self, check_name: str, *, run_id: str | None = None, window_ids: Sequence[str] | None = None
    ) -> list[dict[str, Any]]:
        """Stored verdicts of a check, for one run or some windows."""
        table = table_of(WindowVerdict)
        statement = select(table).where(table.c.check_name == bindparam("c")).order_by(table.c.window_id)
        params: dict[str, Any] = {"c": check_name}
        if run_id is not None:
            statement = statement.where(table.c.run_id == bindparam("r"))
            params["r"] = run_id
        if window_ids is not None:
            statement = statement.where(table.c.window_id.in_(bindparam("ids", expanding=True)))
            params["ids"] = list(window_ids)
        with self.store.engine.connect() as connection:
            return [dict(row) for row in connection.execute(statement, params).mappings()]

    def scored_members(self, window_ids: Sequence[str]) -> list[dict[str, Any]]:
        """Kept members of these windows with their groups and scores (unscored ones too, score None)."""
        if not window_ids:
            return []
        members = table_of(GroupMember)
        statement = (
            select(members)
            .where(and_(members.c.window_id.in_(bindparam("ids", expanding=True)), members.c.kept.is_(True)))
            .order_by(members.c.window_id, members.c.group_id, members.c.agent_window_id)
        )
        with self.store.engine.connect() as connection:
            return [dict(row) for row in connection.execute(statement, {"ids": list(window_ids)}).mappings()]

    def save_dataset(self, record: dict[str, Any], members: Sequence[dict[str, Any]]) -> bool:
        """Store a dataset and its members; False when the same membership was already stored."""
        datasets = table_of(TrainingDatasetRecord)
        with self.store.engine.begin() as connection:
            exists_already = connection.execute(
                select(datasets.c.dataset_id).where(datasets.c.dataset_id == bindparam("d")),
                {"d": record["dataset_id"]},
            ).first()
            if exists_already:
                return False
            connection.execute(datasets.insert(), [record])
            insert_many(
                connection, table_of(DatasetMember), [{**m, "dataset_id": record["dataset_id"]} for m in members]
            )
        return True

    def latest_dataset(self) -> tuple[dict[str, Any], list[dict[str, Any]]] | None:
        """The newest training dataset and its members, or None."""
        datasets, members = table_of(TrainingDatasetRecord), table_of(DatasetMember)
        with self.store.engine.connect() as connection:
            record = (
                connection.execute(
                    select(datasets).order_by(datasets.c.created_at.desc(), datasets.c.dataset_id).limit(1)
                )
                .mappings()
                .first()
            )
            if record is None:
                return None
            rows = (
                connection.execute(
                    select(members)
                    .where(members.c.dataset_id == bindparam("d"))
                    .order_by(members.c.window_id, members.c.group_id, members.c.agent_window_id),
                    {"d": record["dataset_id"]},
                )
                .mappings()
                .all()
            )
        return dict(record), [dict(row) for row in rows]
