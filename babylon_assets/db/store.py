"""The store: the engine, the schema and every read of the platform, one code path for SQLite and PostgreSQL.

Writes live beside it by concern: play (play_records), the window graph (window_records), training
(training_records), evaluation (evaluation_records) and checkpoints (checkpoint_records); each takes the store,
its guards and its clock.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import datetime, timedelta
from decimal import Decimal
from functools import cached_property
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Engine,
    and_,
    bindparam,
    column,
    func,
    inspect,
    or_,
    select,
)
from sqlalchemy import table as table_clause

from babylon_assets.core.eligibility import (
    EligibilityRules,
    WindowRead,
    WindowSummary,
    WindowTally,
    split_window,
)
from babylon_assets.core.on_policy import SampledAnswer, sampled_answer
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
    window_id_day_range,
    window_id_of,
    window_id_prefix_ranges,
)
from babylon_assets.db.engine import make_engine, naive_utc
from babylon_assets.db.inspection import game_schema_of
from babylon_assets.db.migrate import current_revision, head_revision, upgrade_to_head
from babylon_assets.db.schema import (
    GAME_USER_TABLE,
    LlmCallLog,
    MarketOutcome,
    QuarantinedTrajectory,
    Trajectory,
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


def _float(value: Decimal | float | None) -> float | None:
    return None if value is None else float(value)


_ROW_COLUMNS = [table_of(Trajectory).c[name] for name in TRAJECTORY_COLUMNS]


def rows_of_window(window_id: str) -> tuple[ColumnElement[bool], dict[str, Any]]:
    """The candidate rows of one window: its windowId in any spelling of the hour, or no windowId and a start in
    it (a row whose windowId names another hour is that hour's), with the query's parameters."""
    start, end = window_bounds(window_id)
    (space_lo, space_hi), (t_lo, t_hi) = window_id_prefix_ranges(window_id)
    where = or_(
        and_(Trajectory.windowId >= bindparam("s_lo"), Trajectory.windowId < bindparam("s_hi")),
        and_(Trajectory.windowId >= bindparam("t_lo"), Trajectory.windowId < bindparam("t_hi")),
        and_(Trajectory.startTime >= bindparam("lo"), Trajectory.startTime < bindparam("hi")),
    )
    params = {
        "s_lo": space_lo,
        "s_hi": space_hi,
        "t_lo": t_lo,
        "t_hi": t_hi,
        "lo": naive_utc(start),
        "hi": naive_utc(end),
    }
    return where, params


def rows_of_windows(first: str, last: str) -> tuple[ColumnElement[bool], dict[str, Any]]:
    """The candidate rows of the windows from `first` to `last` (and some of their days' other hours: the caller
    keeps the rows whose window it wants), with the query's parameters."""
    day_lo, day_hi = window_id_day_range(first, last)
    where = or_(
        and_(Trajectory.windowId >= bindparam("day_lo"), Trajectory.windowId < bindparam("day_hi")),
        and_(Trajectory.startTime >= bindparam("lo"), Trajectory.startTime < bindparam("hi")),
    )
    lo, hi = parse_window_id(first), parse_window_id(last) + timedelta(hours=1)
    return where, {"day_lo": day_lo, "day_hi": day_hi, "lo": naive_utc(lo), "hi": naive_utc(hi)}


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
                max_abs_pnl=settings.MAX_ABS_PNL,
            ),
            clock=clock,
        )

    def now(self) -> datetime:
        """The store's clock as timestamps are stored in the game's tables: UTC without a zone."""
        return naive_utc(self.clock())

    def now_utc(self) -> datetime:
        """The store's clock, zone-aware (our tables store aware timestamps)."""
        return as_utc(self.clock())

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
        where, params = rows_of_window(window_id)
        yield from self._parse_stream(self._iter_rows(where, params, batch_size, True), {window_id})

    def iter_lookback(
        self, lookback_hours: int, until: datetime | None = None, batch_size: int = DEFAULT_BATCH_SIZE
    ) -> Iterator[ParsedTrajectory | QuarantinedRow]:
        """Stream every row of the windows in the lookback, parsed or quarantined, in time order."""
        window_ids = lookback_window_ids(lookback_hours, until or self.clock())
        where, params = rows_of_windows(window_ids[0], window_ids[-1])
        # In time order, as one window's read is: the same copy of a replayed row is quarantined either way.
        yield from self._parse_stream(self._iter_rows(where, params, batch_size, True), set(window_ids))

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

    def require_game_writes(self, what: str) -> None:
        """Refuse a write into the game's tables while GAME_READ_ONLY is set."""
        if self.game_read_only:
            raise GameReadOnlyError(f"GAME_READ_ONLY is set: refusing to write {what}")

    def require_own_store(self, what: str) -> None:
        """Refuse simulated or fixture play in a database that holds the game's players (DESIGN 2)."""
        self.require_game_writes(what)
        if self.is_game_database:
            raise NotOurStoreError(
                f"refusing to write {what} into {self.target.redacted()}: it has the game's "
                f'"{GAME_USER_TABLE}" table, so it is a game database. Simulated play goes to the '
                "embedded store (unset DATABASE_URL) or to a database made for it."
            )

    def require_known_agents(self, connection: Any, agent_ids: set[str]) -> None:
        """Refuse play of agents the game's "User" table does not have (in a game database)."""
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

    def existing_trajectory_ids(self, trajectory_ids: Iterable[str]) -> set[str]:
        """Which of these trajectoryIds are already recorded."""
        ids = sorted(set(trajectory_ids))
        if not ids:
            return set()
        statement = select(Trajectory.trajectoryId).where(Trajectory.trajectoryId.in_(bindparam("ids", expanding=True)))
        with self.engine.connect() as connection:
            return set(connection.execute(statement, {"ids": ids}).scalars())

    def sampled_answers(self, trajectory_ids: Iterable[str]) -> dict[tuple[str, int], SampledAnswer]:
        """The answers the gateway recorded with their sampled tokens (ids, engine logprobs, version, temperature),
        by (trajectoryId, stepNumber): what on-policy training learns from. Calls without token ids are left out."""
        ids = sorted(set(trajectory_ids))
        found: dict[tuple[str, int], SampledAnswer] = {}
        statement = select(
            LlmCallLog.trajectoryId, LlmCallLog.stepId, LlmCallLog.response, LlmCallLog.metadata_.label("metadata_json")
        ).where(LlmCallLog.trajectoryId.in_(bindparam("ids", expanding=True)), LlmCallLog.purpose == "action")
        with self.engine.connect() as connection:
            for start in range(0, len(ids), 500):
                for row in connection.execute(statement, {"ids": ids[start : start + 500]}):
                    prefix, _, number = str(row.stepId).rpartition(":")
                    if prefix != row.trajectoryId or not number.isdigit() or not row.metadata_json:
                        continue
                    try:
                        metadata = json.loads(row.metadata_json)
                    except json.JSONDecodeError:
                        continue
                    if not isinstance(metadata, dict):
                        continue
                    answer = sampled_answer(metadata, row.response or "", None)
                    if answer is not None:
                        found[(row.trajectoryId, int(number))] = answer
        return found

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

    def summarize_window(self, window_id: str, rules: EligibilityRules) -> WindowSummary:
        """Counts of one window (streamed: no steps kept in memory)."""
        tally = WindowTally(window_id)
        for item in self.iter_window(window_id):
            tally.add(item)
        return tally.finish(rules)

    def windows_with_rows(self, window_ids: Sequence[str]) -> set[str]:
        """Which of these windows have any candidate rows (one query, no JSON read)."""
        if not window_ids:
            return set()
        where, params = rows_of_windows(min(window_ids), max(window_ids))
        statement = select(Trajectory.windowId, Trajectory.startTime).where(where)
        wanted = set(window_ids)
        found: set[str] = set()
        with self.engine.connect() as connection:
            for window, start in connection.execute(statement, params):
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
            # From the start of its day: every spelling of an hour sorts within its day's prefix.
            for window, count in connection.execute(
                by_window, {"since": window_id_day_range(since_window, since_window)[0]}
            ):
                normalized = normalize_window_id(window)
                if normalized is not None and normalized >= since_window:
                    counts[normalized] += count
            for (start,) in connection.execute(unassigned, {"lo": naive_utc(parse_window_id(since_window))}):
                counts[window_id_of(start)] += 1
        return dict(counts)

    def all_windows_with_outcomes(self, since_window: str) -> set[str]:
        """Every window from `since_window` on that has market outcomes (from the (windowId) index)."""
        statement = select(MarketOutcome.windowId).where(MarketOutcome.windowId >= bindparam("since")).distinct()
        with self.engine.connect() as connection:
            return set(connection.execute(statement, {"since": since_window}).scalars())
