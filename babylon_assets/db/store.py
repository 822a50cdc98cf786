"""The store: every read and write of the platform, one code path for SQLite and PostgreSQL."""

from __future__ import annotations

import hashlib
import json
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from functools import cached_property
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    Table,
    and_,
    bindparam,
    column,
    func,
    inspect,
    literal,
    or_,
    select,
)
from sqlalchemy import table as table_clause
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError

from babylon_assets.core.eligibility import (
    EligibilityRules,
    WindowRead,
    WindowSummary,
    WindowTally,
    split_window,
)
from babylon_assets.core.outcomes import PredictionOutcome, StockOutcome, WindowOutcomes
from babylon_assets.core.trajectory import (
    TRAJECTORY_COLUMNS,
    ParsedTrajectory,
    ParseRules,
    QuarantinedRow,
    TrajectoryRow,
    parse_trajectory_rows,
)
from babylon_assets.core.window_time import (
    Clock,
    as_utc,
    is_window_closed,
    lookback_window_ids,
    normalize_window_id,
    parse_window_id,
    utcnow,
    window_bounds,
    window_id_of,
)
from babylon_assets.db.engine import make_engine
from babylon_assets.db.inspection import game_schema_of
from babylon_assets.db.migrate import current_revision, head_revision, upgrade_to_head
from babylon_assets.db.schema import (
    GAME_USER_TABLE,
    DatasetMember,
    GroupMember,
    JudgeCacheEntry,
    JudgmentRecord,
    LlmCallLog,
    MarketOutcome,
    QuarantinedTrajectory,
    RewardJudgment,
    TrainingDatasetRecord,
    Trajectory,
    WindowState,
    WindowVerdict,
    table_of,
)
from babylon_assets.db.url import DatabaseTarget, resolve_database_url

DEFAULT_BATCH_SIZE = 1000


class StoreError(RuntimeError):
    """A store operation that cannot be done, with what to do about it."""


class GameReadOnlyError(StoreError):
    """A write into the game's tables while GAME_READ_ONLY is set."""


class NotOurStoreError(StoreError):
    """A simulator or fixture write into a database that holds the game's own players."""


class DuplicateTrajectoryError(StoreError):
    """A trajectoryId that is already recorded."""


class UnknownAgentError(StoreError):
    """An agentId that the game's "User" table does not have."""


def naive_utc(moment: datetime) -> datetime:
    """The form timestamps are stored in: UTC without a zone, as Prisma writes them."""
    return as_utc(moment).replace(tzinfo=None)


def new_id() -> str:
    """A TEXT id for a new row (Prisma's ids have no database default)."""
    return uuid.uuid4().hex


def _float(value: Decimal | float | None) -> float | None:
    return None if value is None else float(value)


@dataclass(frozen=True, slots=True)
class RecordedPlay:
    """Trajectory rows and their LLM call rows, written together."""

    trajectories: Sequence[dict[str, Any]]
    llm_calls: Sequence[dict[str, Any]] = ()


def _insert_many(connection: Connection, table: Table, rows: Sequence[dict[str, Any]]) -> None:
    """Insert rows in as few statements as possible; executemany needs one column set per statement."""
    by_columns: dict[frozenset[str], list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        by_columns[frozenset(row)].append(row)
    for group in by_columns.values():
        connection.execute(table.insert(), group)


_SCORE_FIELDS = ("score", "rank", "reasoning", "judge_name", "judge_version", "judged_at")


def _group_signatures(rows: Iterable[dict[str, Any]]) -> dict[str, frozenset[tuple[str, str]]]:
    """Each kept group's members and the rows they were stitched from."""
    groups: dict[str, set[tuple[str, str]]] = defaultdict(set)
    for row in rows:
        if row["kept"] and row["group_id"] is not None:
            groups[row["group_id"]].add((row["agent_window_id"], row["trajectory_ids_json"]))
    return {g: frozenset(members) for g, members in groups.items()}


_ROW_COLUMNS = [table_of(Trajectory).c[name] for name in TRAJECTORY_COLUMNS]


class Store:
    """Reads and writes the game's tables and ours at one database URL (DESIGN 2)."""

    def __init__(
        self,
        database_url: str,
        *,
        game_read_only: bool = False,
        parse_rules: ParseRules | None = None,
        clock: Clock = utcnow,
        engine: Engine | None = None,
    ) -> None:
        self.target: DatabaseTarget = resolve_database_url(database_url)
        self.engine: Engine = engine or make_engine(self.target)
        self.game_read_only = game_read_only
        self.parse_rules = parse_rules or ParseRules()
        self.clock = clock

    @classmethod
    def from_settings(cls, settings: Any, *, clock: Clock = utcnow) -> Store:
        """A store configured from `Settings`."""
        return cls(
            settings.DATABASE_URL,
            game_read_only=settings.GAME_READ_ONLY,
            parse_rules=ParseRules(
                max_chars=settings.MAX_TRAJECTORY_CHARS,
                future_tolerance=timedelta(minutes=settings.FUTURE_TOLERANCE_MINUTES),
            ),
            clock=clock,
        )

    def dispose(self) -> None:
        """Close pooled connections."""
        self.engine.dispose()

    # -- schema -------------------------------------------------------------------------------

    def upgrade(self) -> None:
        """Bring our schema to the newest revision; game tables only in a store of our own."""
        upgrade_to_head(self.engine)
        self.__dict__.pop("game_user_columns", None)

    def is_up_to_date(self) -> bool:
        """True when the database is at the newest revision."""
        return current_revision(self.engine) == head_revision()

    def ensure_schema(self) -> None:
        """Upgrade only when needed (cheap to call at every start)."""
        if not self.is_up_to_date():
            self.upgrade()

    @cached_property
    def game_user_columns(self) -> frozenset[str]:
        """The columns of the game's "User" table, empty when there is none (looked up once per store: the
        gateway's writes ask on every batch)."""
        with self.engine.connect() as connection:
            schema = game_schema_of(connection)
            if GAME_USER_TABLE not in inspect(connection).get_table_names(schema=schema):
                return frozenset()
            return frozenset(c["name"] for c in inspect(connection).get_columns(GAME_USER_TABLE, schema=schema))

    @property
    def is_game_database(self) -> bool:
        """True when the database holds the game's "User" table: the game's own players live here."""
        return bool(self.game_user_columns)

    # -- reading trajectories -------------------------------------------------------------------

    def _iter_rows(
        self, where: ColumnElement[bool], params: dict[str, Any], batch_size: int, ordered: bool
    ) -> Iterator[list[TrajectoryRow]]:
        statement = select(*_ROW_COLUMNS).where(where)
        if ordered:
            statement = statement.order_by(Trajectory.startTime, Trajectory.id)
        with self.engine.connect() as connection:
            result = connection.execution_options(stream_results=True, yield_per=batch_size).execute(statement, params)
            for partition in result.partitions(batch_size):
                yield [TrajectoryRow(*row) for row in partition]

    def _parse_stream(
        self, batches: Iterable[list[TrajectoryRow]], window_ids: set[str]
    ) -> Iterator[ParsedTrajectory | QuarantinedRow]:
        rows = (row for batch in batches for row in batch)
        for item in parse_trajectory_rows(rows, now=self.clock(), rules=self.parse_rules):
            # A candidate row can belong to another hour (a game windowId that differs from its
            # start hour); it is counted in that window, not here.
            if item.window_id in window_ids:
                yield item

    def iter_window(
        self, window_id: str, batch_size: int = DEFAULT_BATCH_SIZE
    ) -> Iterator[ParsedTrajectory | QuarantinedRow]:
        """Stream one window's rows, parsed or quarantined, in time order."""
        start, end = window_bounds(window_id)
        where = or_(
            Trajectory.windowId == bindparam("window_id"),
            and_(Trajectory.startTime >= bindparam("lo"), Trajectory.startTime < bindparam("hi")),
        )
        params = {"window_id": window_id, "lo": naive_utc(start), "hi": naive_utc(end)}
        yield from self._parse_stream(self._iter_rows(where, params, batch_size, True), {window_id})

    def iter_lookback(
        self, lookback_hours: int, until: datetime | None = None, batch_size: int = DEFAULT_BATCH_SIZE
    ) -> Iterator[ParsedTrajectory | QuarantinedRow]:
        """Stream every row of the windows in the lookback, parsed or quarantined (no order)."""
        window_ids = lookback_window_ids(lookback_hours, until or self.clock())
        lo = parse_window_id(window_ids[0])
        hi = parse_window_id(window_ids[-1]) + timedelta(hours=1)
        where = or_(
            Trajectory.windowId.in_(bindparam("window_ids", expanding=True)),
            and_(Trajectory.startTime >= bindparam("lo"), Trajectory.startTime < bindparam("hi")),
        )
        params = {"window_ids": window_ids, "lo": naive_utc(lo), "hi": naive_utc(hi)}
        yield from self._parse_stream(self._iter_rows(where, params, batch_size, False), set(window_ids))

    def read_window(self, window_id: str, rules: EligibilityRules) -> WindowRead:
        """One window: eligible agent-windows (stitched), exclusions with reasons, quarantined rows."""
        return split_window(window_id, self.iter_window(window_id), rules)

    def window_summaries(
        self,
        rules: EligibilityRules,
        lookback_hours: int,
        until: datetime | None = None,
        grace_minutes: int = 15,
        on_progress: Callable[[int], None] | None = None,
    ) -> list[WindowSummary]:
        """Per window with rows in the lookback: counts, exclusions and quarantine by reason."""
        until = until or self.clock()
        tallies: dict[str, WindowTally] = {}
        for count, item in enumerate(self.iter_lookback(lookback_hours, until), start=1):
            if on_progress is not None and count % 1000 == 0:
                on_progress(count)
            tally = tallies.get(item.window_id)
            if tally is None:
                tally = tallies[item.window_id] = WindowTally(item.window_id)
            tally.add(item)
        with_outcomes = self.windows_with_outcomes(list(tallies))
        summaries = []
        for window_id in sorted(tallies):
            summary = tallies[window_id].finish(rules)
            summary.outcomes_recorded = window_id in with_outcomes
            summary.closed = is_window_closed(
                window_id,
                outcomes_recorded=summary.outcomes_recorded,
                now=self.clock(),
                grace_minutes=grace_minutes,
            )
            summaries.append(summary)
        return summaries

    # -- outcomes -----------------------------------------------------------------------------------

    def windows_with_outcomes(self, window_ids: Sequence[str]) -> set[str]:
        """The windows among `window_ids` that have market outcomes recorded."""
        if not window_ids:
            return set()
        statement = (
            select(MarketOutcome.windowId)
            .where(MarketOutcome.windowId.in_(bindparam("ids", expanding=True)))
            .distinct()
        )
        with self.engine.connect() as connection:
            return set(connection.execute(statement, {"ids": list(window_ids)}).scalars())

    def window_outcomes(self, window_id: str) -> WindowOutcomes:
        """A window's ground truth: stock moves and resolved prediction markets."""
        statement = (
            select(MarketOutcome)
            .where(MarketOutcome.windowId == bindparam("window_id"))
            .order_by(MarketOutcome.stockTicker, MarketOutcome.predictionMarketId, MarketOutcome.id)
        )
        stocks: list[StockOutcome] = []
        predictions: list[PredictionOutcome] = []
        unrecognised = 0
        with self.engine.connect() as connection:
            for row in connection.execute(statement, {"window_id": window_id}).mappings():
                news = (
                    row["newsEvents"]
                    if isinstance(row["newsEvents"], list)
                    else ([] if row["newsEvents"] is None else [row["newsEvents"]])
                )
                if row["stockTicker"] is not None:
                    stocks.append(
                        StockOutcome(
                            ticker=row["stockTicker"],
                            start_price=_float(row["startPrice"]),
                            end_price=_float(row["endPrice"]),
                            change_percent=_float(row["changePercent"]),
                            sentiment=row["sentiment"],
                            news=news,
                        )
                    )
                elif row["predictionMarketId"] is not None or row["question"] is not None:
                    predictions.append(
                        PredictionOutcome(
                            market_id=row["predictionMarketId"],
                            question=row["question"],
                            outcome=row["outcome"],
                            final_probability=_float(row["finalProbability"]),
                            volume=_float(row["volume"]),
                            news=news,
                        )
                    )
                else:
                    unrecognised += 1
        return WindowOutcomes(window_id, stocks, predictions, unrecognised)

    # -- writes -----------------------------------------------------------------------------------

    def _require_game_writes(self, what: str) -> None:
        if self.game_read_only:
            raise GameReadOnlyError(f"GAME_READ_ONLY is set: refusing to write {what}")

    def require_own_store(self, what: str) -> None:
        """Refuse simulated or fixture play in a database that holds the game's players (DESIGN 2)."""
        self._require_game_writes(what)
        if self.is_game_database:
            raise NotOurStoreError(
                f"refusing to write {what} into {self.target.redacted()}: it has the game's "
                f'"{GAME_USER_TABLE}" table, so it is a game database. Simulated play goes to the '
                "embedded store (unset DATABASE_URL) or to a database made for it."
            )

    def _require_known_agents(self, connection: Any, agent_ids: set[str]) -> None:
        if not self.is_game_database:
            return
        users = table_clause(GAME_USER_TABLE, column("id"), schema=game_schema_of(connection))
        known = set(
            connection.execute(
                select(users.c.id).where(users.c.id.in_(bindparam("ids", expanding=True))),
                {"ids": sorted(agent_ids)},
            ).scalars()
        )
        unknown = sorted(agent_ids - known)
        if unknown:
            raise UnknownAgentError(
                f'agentId(s) {", ".join(unknown)} are not in the game\'s "User" table; '
                "record play only for the game's own agents"
            )

    def record_play(self, play: RecordedPlay) -> None:
        """Write trajectories and their LLM call logs in one transaction (recorder, gateway)."""
        self._require_game_writes("trajectories")
        now = naive_utc(self.clock())
        trajectories = [{"updatedAt": now, **row} for row in play.trajectories]
        with self.engine.begin() as connection:
            self._require_known_agents(connection, {row["agentId"] for row in trajectories})
            try:
                _insert_many(connection, table_of(Trajectory), trajectories)
                _insert_many(connection, table_of(LlmCallLog), play.llm_calls)
            except IntegrityError as error:
                ids = ", ".join(row["trajectoryId"] for row in trajectories)
                raise DuplicateTrajectoryError(
                    f"trajectory {ids} (or one of its LLM calls) is already recorded; nothing was written"
                ) from error

    def game_accounts(self, connection: Connection, agent_ids: Sequence[str]) -> dict[str, dict[str, float]]:
        """The game's own accounts of these agents ("User".lifetimePnL and virtualBalance), when it has them."""
        if not {"lifetimePnL", "virtualBalance"} <= self.game_user_columns:
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
        with self.engine.begin() as connection:
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
                values: dict[str, Any] = {"finalStatus": "completed", "updatedAt": naive_utc(self.clock())}
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
        self.require_own_store("simulated play")
        trajectories, calls = table_of(Trajectory), table_of(LlmCallLog)
        with self.engine.begin() as connection:
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
        self.require_own_store("simulated play")
        trajectories = table_of(Trajectory)
        changed = 0
        with self.engine.begin() as connection:
            for trajectory_id, books in sorted(closing.items()):
                values: dict[str, Any] = {
                    "finalStatus": "completed",
                    "finalPnL": books["finalPnL"],
                    "finalBalance": books["finalBalance"],
                    "tradesExecuted": books["tradesExecuted"],
                    "updatedAt": naive_utc(self.clock()),
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
        self._require_game_writes("gateway calls")
        now = naive_utc(self.clock())
        trajectories, calls = table_of(Trajectory), table_of(LlmCallLog)
        with self.engine.begin() as connection:
            seen = set(
                connection.execute(
                    select(calls.c.callId).where(calls.c.callId.in_(bindparam("ids", expanding=True))),
                    {"ids": [r.call_id for r in records]},
                ).scalars()
            )
            fresh = [r for r in records if r.call_id not in seen]
            if not fresh:
                return 0
            self._require_known_agents(connection, {r.agent_id for r in fresh})
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
                    ).where(trajectories.c.trajectoryId.in_(bindparam("ids", expanding=True))),
                    {"ids": list(by_trajectory)},
                )
            }
            call_rows = []
            for trajectory_id, batch in by_trajectory.items():
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

    def existing_trajectory_ids(self, trajectory_ids: Iterable[str]) -> set[str]:
        """Which of these trajectoryIds are already recorded."""
        ids = sorted(set(trajectory_ids))
        if not ids:
            return set()
        statement = select(Trajectory.trajectoryId).where(Trajectory.trajectoryId.in_(bindparam("ids", expanding=True)))
        with self.engine.connect() as connection:
            return set(connection.execute(statement, {"ids": ids}).scalars())

    def replace_market_outcomes(self, window_id: str, rows: Sequence[dict[str, Any]]) -> int:
        """Set a window's outcomes (simulator and fixtures only; idempotent: replaces, never adds)."""
        self.require_own_store("market outcomes")
        table = table_of(MarketOutcome)
        with self.engine.begin() as connection:
            connection.execute(
                table.delete().where(table.c.windowId == bindparam("window_id")), {"window_id": window_id}
            )
            _insert_many(connection, table, [{"id": new_id(), **row, "windowId": window_id} for row in rows])
        return len(rows)

    def record_quarantine(self, items: Iterable[QuarantinedRow]) -> int:
        """Store quarantined rows with their reasons; seeing one again updates it, never duplicates."""
        now = as_utc(self.clock())
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
        self._upsert(
            table_of(QuarantinedTrajectory),
            ["trajectory_row_id", "reason"],
            values,
            ["detail", "window_id", "last_seen_at"],
            increment="times_seen",
        )
        return len(values)

    def quarantine_counts(self, window_id: str | None = None) -> dict[str, int]:
        """Stored quarantined rows by reason (one window, or all)."""
        table = table_of(QuarantinedTrajectory)
        statement = select(table.c.reason, func.count()).group_by(table.c.reason)
        params: dict[str, Any] = {}
        if window_id is not None:
            statement = statement.where(table.c.window_id == bindparam("window_id"))
            params["window_id"] = window_id
        with self.engine.connect() as connection:
            return {reason: count for reason, count in connection.execute(statement, params)}

    # -- the window graph (our tables) ------------------------------------------------------------------

    def _upsert(
        self,
        table: Table,
        keys: list[str],
        rows: Sequence[dict[str, Any]],
        update: Sequence[str],
        increment: str | None = None,
    ) -> None:
        """Insert rows, or update `update` columns (and add 1 to `increment`) where the keys exist."""
        if not rows:
            return
        dialect_insert = postgresql.insert if self.engine.dialect.name == "postgresql" else sqlite.insert
        statement = dialect_insert(table)
        changes: dict[str, Any] = {name: statement.excluded[name] for name in update}
        if increment is not None:
            changes[increment] = table.c[increment] + literal(1)
        statement = statement.on_conflict_do_update(index_elements=keys, set_=changes)
        with self.engine.begin() as connection:
            connection.execute(statement, list(rows))

    def window_fingerprint(self, window_id: str) -> str:
        """A hash of the window's candidate rows (ids and update times): changes when late rows arrive."""
        start, end = window_bounds(window_id)
        statement = (
            select(Trajectory.id, Trajectory.updatedAt)
            .where(
                or_(
                    Trajectory.windowId == bindparam("window_id"),
                    and_(Trajectory.startTime >= bindparam("lo"), Trajectory.startTime < bindparam("hi")),
                )
            )
            .order_by(Trajectory.id)
        )
        digest = hashlib.sha256()
        with self.engine.connect() as connection:
            for row_id, updated in connection.execute(
                statement, {"window_id": window_id, "lo": naive_utc(start), "hi": naive_utc(end)}
            ):
                digest.update(f"{row_id}|{updated}\n".encode())
        return digest.hexdigest()

    def save_window_state(self, summary: WindowSummary, rules: EligibilityRules, fingerprint: str) -> None:
        """Remember what the `trajectories` asset found in a window."""
        self._upsert(
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
                    "updated_at": as_utc(self.clock()),
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
        with self.engine.connect() as connection:
            return {
                row["window_id"]: dict(row)
                for row in connection.execute(statement, {"ids": list(window_ids)}).mappings()
            }

    def summarize_window(self, window_id: str, rules: EligibilityRules) -> WindowSummary:
        """Counts of one window (streamed: no steps kept in memory)."""
        tally = WindowTally(window_id)
        for item in self.iter_window(window_id):
            tally.add(item)
        return tally.finish(rules)

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
            present = self.windows_with_rows(missing)
            for other in missing:
                if other in present:
                    summary = self.summarize_window(other, rules)
                    self.save_window_state(summary, rules, self.window_fingerprint(other))
                    total += summary.eligible_agents
        return total

    def windows_with_rows(self, window_ids: Sequence[str]) -> set[str]:
        """Which of these windows have any candidate rows (one query, no JSON read)."""
        if not window_ids:
            return set()
        lo = parse_window_id(min(window_ids))
        hi = parse_window_id(max(window_ids)) + timedelta(hours=1)
        statement = select(Trajectory.windowId, Trajectory.startTime).where(
            or_(
                Trajectory.windowId.in_(bindparam("ids", expanding=True)),
                and_(Trajectory.startTime >= bindparam("lo"), Trajectory.startTime < bindparam("hi")),
            )
        )
        wanted = set(window_ids)
        found: set[str] = set()
        with self.engine.connect() as connection:
            for window, start in connection.execute(
                statement, {"ids": list(window_ids), "lo": naive_utc(lo), "hi": naive_utc(hi)}
            ):
                candidate = normalize_window_id(window) or window_id_of(start)
                if candidate in wanted:
                    found.add(candidate)
        return found

    def window_row_counts(self, since_window: str) -> dict[str, int]:
        """Rows per window from `since_window` on, read from the (windowId) index (rows without a windowId by
        their start hour); a windowId that names no hour is left out (those rows are quarantined)."""
        counts: dict[str, int] = defaultdict(int)
        by_window = (
            select(Trajectory.windowId, func.count())
            .where(Trajectory.windowId >= bindparam("since"))
            .group_by(Trajectory.windowId)
        )
        unassigned = select(Trajectory.startTime).where(
            and_(Trajectory.windowId.is_(None), Trajectory.startTime >= bindparam("lo"))
        )
        with self.engine.connect() as connection:
            for window, count in connection.execute(by_window, {"since": since_window}):
                normalized = normalize_window_id(window)
                if normalized is not None:
                    counts[normalized] += count
            for (start,) in connection.execute(unassigned, {"lo": naive_utc(parse_window_id(since_window))}):
                counts[window_id_of(start)] += 1
        return dict(counts)

    def all_windows_with_outcomes(self, since_window: str) -> set[str]:
        """Every window from `since_window` on that has market outcomes (from the (windowId) index)."""
        statement = select(MarketOutcome.windowId).where(MarketOutcome.windowId >= bindparam("since")).distinct()
        with self.engine.connect() as connection:
            return set(connection.execute(statement, {"since": since_window}).scalars())

    def replace_group_members(self, window_id: str, rows: Sequence[dict[str, Any]]) -> int:
        """Set a window's membership (idempotent). A group whose members and rows are unchanged keeps its
        scores, so re-cutting the same groups never pays the judge twice; returns how many scores were kept."""
        previous = self.group_members(window_id)
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
        with self.engine.begin() as connection:
            connection.execute(members.delete().where(members.c.window_id == bindparam("w")), {"w": window_id})
            _insert_many(connection, members, values)
        return len(carried)

    def group_members(self, window_id: str) -> list[dict[str, Any]]:
        """A window's membership rows, kept and dropped."""
        members = table_of(GroupMember)
        statement = (
            select(members)
            .where(members.c.window_id == bindparam("w"))
            .order_by(members.c.group_id, members.c.agent_window_id)
        )
        with self.engine.connect() as connection:
            return [dict(row) for row in connection.execute(statement, {"w": window_id}).mappings()]

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
        now = as_utc(self.clock())
        members = table_of(GroupMember)
        with self.engine.begin() as connection:
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
        self._upsert(
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
        if self.game_read_only:
            return
        naive_now = naive_utc(now)
        criteria_json = json.dumps(criteria, sort_keys=True)
        trajectories = table_of(Trajectory)
        judgment_rows: list[dict[str, Any]] = []
        with self.engine.begin() as connection:
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
        self._upsert(
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

    def cached_judgment(self, cache_key: str) -> dict[str, Any] | None:
        """A cached group judgment: {"scores": {agent_window_id: [score, reasoning]}, usage...}, or None."""
        cache = table_of(JudgeCacheEntry)
        with self.engine.connect() as connection:
            row = (
                connection.execute(select(cache).where(cache.c.cache_key == bindparam("k")), {"k": cache_key})
                .mappings()
                .first()
            )
        if row is None:
            return None
        return {
            "scores": json.loads(row["scores_json"]),
            "tokens_in": row["tokens_in"],
            "tokens_out": row["tokens_out"],
            "dollars": row["dollars"],
        }

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
        self._upsert(
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
                    "created_at": as_utc(self.clock()),
                }
            ],
            ["scores_json", "tokens_in", "tokens_out", "dollars"],
        )

    def save_verdicts(self, check_name: str, verdicts: Sequence[tuple[str, bool, str]], run_id: str | None) -> None:
        """Store one check's per-window verdicts (window, passed, detail): the latest wins."""
        now = as_utc(self.clock())
        self._upsert(
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
        with self.engine.connect() as connection:
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
        with self.engine.connect() as connection:
            return [dict(row) for row in connection.execute(statement, {"ids": list(window_ids)}).mappings()]

    def save_dataset(self, record: dict[str, Any], members: Sequence[dict[str, Any]]) -> bool:
        """Store a dataset and its members; False when the same membership was already stored."""
        datasets = table_of(TrainingDatasetRecord)
        with self.engine.begin() as connection:
            exists_already = connection.execute(
                select(datasets.c.dataset_id).where(datasets.c.dataset_id == bindparam("d")),
                {"d": record["dataset_id"]},
            ).first()
            if exists_already:
                return False
            connection.execute(datasets.insert(), [record])
            _insert_many(
                connection, table_of(DatasetMember), [{**m, "dataset_id": record["dataset_id"]} for m in members]
            )
        return True

    def latest_dataset(self) -> tuple[dict[str, Any], list[dict[str, Any]]] | None:
        """The newest training dataset and its members, or None."""
        datasets, members = table_of(TrainingDatasetRecord), table_of(DatasetMember)
        with self.engine.connect() as connection:
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


@dataclass(frozen=True, slots=True)
class AgentWindowScore:
    """A judged agent-window, as stored."""

    agent_window_id: str
    group_id: str
    score: float
    rank: int
    normalized: float
    reasoning: str
