"""The game's trajectory shape as typed models, and the one boundary where raw rows are parsed.

A row either parses into a `ParsedTrajectory` or becomes a `QuarantinedRow` with a reason; it is never
dropped silently and never stops the rest of its window.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Strict, TypeAdapter, ValidationError

from babylon_assets.core.window_time import as_utc, normalize_window_id, window_id_of

LlmPurpose = Literal["action", "reasoning", "evaluation", "response"]

_DECIMAL_STRING = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")


def _decimal_string_to_number(value: Any) -> Any:
    return float(value) if isinstance(value, str) and _DECIMAL_STRING.match(value.strip()) else value


# A number the game writes as a number: a string there is refused (quarantined as `number_as_string`), never
# coerced, since whatever wrote it is not the game's recorder.
Number = Annotated[float, Strict()]
Count = Annotated[int, Strict()]
# Prisma's Decimal columns (the "User" money columns the recorder copies into environmentState, the final balance
# and P&L its caller passes) go through JSON.stringify as strings ("10000.50"): there a numeric string is the number.
DecimalNumber = Annotated[float, BeforeValidator(_decimal_string_to_number), Strict()]


class _GameModel(BaseModel):
    # The game may add fields; unknown keys are ignored rather than failing the row.
    model_config = ConfigDict(extra="ignore", frozen=False)


class LlmCall(_GameModel):
    """One LLM call as the game records it inside a step."""

    model: str
    modelVersion: str | None = None
    systemPrompt: str
    userPrompt: str
    response: str
    reasoning: str | None = None
    temperature: Number
    maxTokens: Count
    latencyMs: Number | None = None
    purpose: LlmPurpose
    actionType: str | None = None


class Action(_GameModel):
    """What the agent did in a step, and how it went."""

    actionType: str
    parameters: dict[str, Any] = {}
    success: bool
    result: Any = None
    error: str | None = None
    reasoning: str | None = None


class EnvironmentState(_GameModel):
    """The agent's account as it stood when the step began."""

    agentBalance: DecimalNumber
    agentPnL: DecimalNumber
    openPositions: Count | list[Any]
    activeMarkets: Count | list[Any] | None = None


class ProviderAccess(_GameModel):
    """Data a provider handed to the agent during the step."""

    providerName: str
    data: Any = None
    purpose: str


class Step(_GameModel):
    """One step of a trajectory: state, data seen, LLM calls, action, reward."""

    stepNumber: Count
    timestamp: Count
    environmentState: EnvironmentState
    providerAccesses: list[ProviderAccess] = []
    llmCalls: list[LlmCall] = []
    action: Action
    reward: Number


class TrajectoryMetrics(_GameModel):
    """The game's `metricsJson`."""

    episodeLength: Count | None = None
    finalStatus: str | None = None
    finalBalance: DecimalNumber | None = None
    finalPnL: DecimalNumber | None = None
    tradesExecuted: Count | None = None
    postsCreated: Count | None = None
    errorCount: Count | None = None


STEPS_ADAPTER: TypeAdapter[list[Step]] = TypeAdapter(list[Step])
METRICS_ADAPTER: TypeAdapter[TrajectoryMetrics] = TypeAdapter(TrajectoryMetrics)
OBJECT_ADAPTER: TypeAdapter[dict[str, Any]] = TypeAdapter(dict[str, Any])

# The columns a row needs, in the order the store selects them.
TRAJECTORY_COLUMNS: tuple[str, ...] = (
    "id",
    "trajectoryId",
    "agentId",
    "startTime",
    "endTime",
    "windowId",
    "stepsJson",
    "rewardComponentsJson",
    "metricsJson",
    "metadataJson",
    "totalReward",
    "finalStatus",
    "finalBalance",
    "finalPnL",
    "tradesExecuted",
    "isTrainingData",
    "isEvaluation",
)


@dataclass(slots=True)
class TrajectoryRow:
    """A `trajectories` row as read from the store, before parsing."""

    id: str
    trajectoryId: str | None
    agentId: str | None
    startTime: datetime | None
    endTime: datetime | None
    windowId: str | None
    stepsJson: str | None
    rewardComponentsJson: str | None
    metricsJson: str | None
    metadataJson: str | None
    totalReward: float | None
    finalStatus: str | None
    finalBalance: float | None
    finalPnL: float | None
    tradesExecuted: int | None
    isTrainingData: bool | None
    isEvaluation: bool | None


@dataclass(slots=True)
class ParsedTrajectory:
    """A row that parsed: typed steps and the window it belongs to."""

    row_id: str
    trajectory_id: str
    agent_id: str
    window_id: str
    start_time: datetime
    end_time: datetime
    steps: list[Step]
    metrics: TrajectoryMetrics
    reward_components: dict[str, Any]
    metadata: dict[str, Any]
    total_reward: float
    final_status: str
    final_balance: float | None
    final_pnl: float | None
    is_training_data: bool
    is_evaluation: bool
    window_id_from_start: bool = False
    trades_executed: int | None = None  # the row's tradesExecuted column (the books' count of trades)

    @property
    def llm_decisions(self) -> int:
        """How many of its steps carry an LLM call."""
        return sum(1 for step in self.steps if step.llmCalls)

    @property
    def row_exclusion(self) -> str | None:
        """Why this row is kept out of training before stitching, or None."""
        if self.is_evaluation:
            return "evaluation"
        if not self.is_training_data:
            return "not_training_data"
        return None


@dataclass(slots=True)
class QuarantinedRow:
    """A row that did not parse, with a reason code (for counting) and a detail (for a person)."""

    row_id: str
    trajectory_id: str | None
    window_id: str
    reason: str
    detail: str


@dataclass(frozen=True, slots=True)
class ParseRules:
    """Limits applied at the parse boundary."""

    max_chars: int = 2_000_000
    future_tolerance: timedelta = timedelta(minutes=5)
    # |P&L| beyond this is a recording error, not play (MAX_ABS_PNL).
    max_abs_pnl: float = 10_000_000.0


class _Quarantine(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


_REQUIRED_COLUMNS = ("trajectoryId", "agentId", "startTime", "stepsJson")


def _describe_validation_error(column: str, error: ValidationError) -> _Quarantine:
    first = error.errors(include_url=False)[0]
    location = ".".join(str(part) for part in first["loc"])
    where = f"{column}[{location}]" if location else column
    given = first.get("input")
    if first["type"] in ("float_type", "int_type") and isinstance(given, str) and _DECIMAL_STRING.match(given.strip()):
        return _Quarantine(
            "number_as_string",
            f"{where} is the string {given[:40]!r}; the game's recorder writes a number",
        )
    if first["type"] == "json_invalid":
        return _Quarantine("invalid_json", f"{column}: {first['msg']}")
    if first["type"] == "missing":
        return _Quarantine("missing_field", f"{where} is missing")
    return _Quarantine("invalid_field", f"{where}: {first['msg']} ({error.error_count()} error(s))")


def _finite_or_none(column: str, value: float | None) -> float | None:
    if value is None:
        return None
    number = float(value)
    if not math.isfinite(number):
        raise _Quarantine("non_finite_pnl", f"{column} is {number}")
    return number


def _parse_json_object(column: str, text: str | None) -> dict[str, Any]:
    if text is None or text == "":
        return {}
    try:
        return OBJECT_ADAPTER.validate_json(text)
    except ValidationError as error:
        raise _describe_validation_error(column, error) from None


def _window_of(row: TrajectoryRow, start: datetime) -> tuple[str, bool]:
    if row.windowId is None:
        return window_id_of(start), True
    normalized = normalize_window_id(row.windowId)
    if normalized is None:
        raise _Quarantine("unrecognised_window_id", f"windowId {row.windowId!r} does not name a UTC hour")
    return normalized, False


def _parse(row: TrajectoryRow, rules: ParseRules, now: datetime) -> ParsedTrajectory:
    for column in _REQUIRED_COLUMNS:
        if getattr(row, column) is None:
            raise _Quarantine("missing_field", f"{column} is null")
    assert row.startTime is not None and row.stepsJson is not None
    start = as_utc(row.startTime)
    end = as_utc(row.endTime) if row.endTime is not None else start
    size = sum(
        len(text) for text in (row.stepsJson, row.metricsJson, row.rewardComponentsJson, row.metadataJson) if text
    )
    if size > rules.max_chars:
        raise _Quarantine("oversized", f"{size:,} characters of JSON > limit {rules.max_chars:,}")
    if start > now + rules.future_tolerance:
        raise _Quarantine("future_timestamp", f"startTime {start.isoformat()} is after now")
    if end < start:
        raise _Quarantine("invalid_time_range", f"endTime {end.isoformat()} is before startTime")
    window_id, from_start = _window_of(row, start)
    final_pnl = _finite_or_none("finalPnL", row.finalPnL)
    final_balance = _finite_or_none("finalBalance", row.finalBalance)
    try:
        steps = STEPS_ADAPTER.validate_json(row.stepsJson)
    except ValidationError as error:
        raise _describe_validation_error("stepsJson", error) from None
    try:
        metrics = METRICS_ADAPTER.validate_json(row.metricsJson) if row.metricsJson else TrajectoryMetrics()
    except ValidationError as error:
        raise _describe_validation_error("metricsJson", error) from None
    if final_pnl is None:
        final_pnl = _finite_or_none("metricsJson.finalPnL", metrics.finalPnL)
    if final_balance is None:
        final_balance = _finite_or_none("metricsJson.finalBalance", metrics.finalBalance)
    for step in steps:
        if not (math.isfinite(step.environmentState.agentPnL) and math.isfinite(step.reward)):
            raise _Quarantine("non_finite_pnl", f"stepsJson[{step.stepNumber}] has a non-finite P&L or reward")
        if abs(step.environmentState.agentPnL) > rules.max_abs_pnl:
            raise _Quarantine(
                "pnl_out_of_range",
                f"stepsJson[{step.stepNumber}].environmentState.agentPnL {step.environmentState.agentPnL:,.2f} "
                f"is beyond MAX_ABS_PNL {rules.max_abs_pnl:,.0f}",
            )
    if final_pnl is not None and abs(final_pnl) > rules.max_abs_pnl:
        raise _Quarantine(
            "pnl_out_of_range", f"final P&L {final_pnl:,.2f} is beyond MAX_ABS_PNL {rules.max_abs_pnl:,.0f}"
        )
    return ParsedTrajectory(
        row_id=row.id,
        trajectory_id=row.trajectoryId or "",
        agent_id=row.agentId or "",
        window_id=window_id,
        start_time=start,
        end_time=end,
        steps=steps,
        metrics=metrics,
        reward_components=_parse_json_object("rewardComponentsJson", row.rewardComponentsJson),
        metadata=_parse_json_object("metadataJson", row.metadataJson),
        total_reward=float(row.totalReward) if row.totalReward is not None else 0.0,
        final_status=row.finalStatus or "",
        final_balance=final_balance,
        final_pnl=final_pnl,
        is_training_data=True if row.isTrainingData is None else bool(row.isTrainingData),
        is_evaluation=bool(row.isEvaluation),
        window_id_from_start=from_start,
        trades_executed=row.tradesExecuted if isinstance(row.tradesExecuted, int) else None,
    )


def _fallback_window(row: TrajectoryRow) -> str:
    normalized = normalize_window_id(row.windowId)
    if normalized is not None:
        return normalized
    if row.startTime is not None:
        return window_id_of(row.startTime)
    return "unknown"


def parse_trajectory_row(
    row: TrajectoryRow, *, now: datetime, rules: ParseRules = ParseRules()
) -> ParsedTrajectory | QuarantinedRow:
    """Parse one row at the boundary; a row that does not parse comes back quarantined with a reason."""
    try:
        return _parse(row, rules, as_utc(now))
    except _Quarantine as problem:
        return QuarantinedRow(
            row_id=row.id,
            trajectory_id=row.trajectoryId,
            window_id=_fallback_window(row),
            reason=problem.reason,
            detail=problem.detail,
        )


def parse_trajectory_rows(
    rows: Iterable[TrajectoryRow], *, now: datetime, rules: ParseRules = ParseRules()
) -> Iterator[ParsedTrajectory | QuarantinedRow]:
    """Parse rows in order. A trajectoryId seen before in the same stream is quarantined as a duplicate, and so is
    a replayed copy: a training row whose steps equal, canonically, those of an earlier training row of the same
    window."""
    seen: set[str] = set()
    steps_seen: dict[tuple[str, bytes], str] = {}
    for row in rows:
        if row.trajectoryId is not None and row.trajectoryId in seen:
            yield QuarantinedRow(
                row_id=row.id,
                trajectory_id=row.trajectoryId,
                window_id=_fallback_window(row),
                reason="duplicate_trajectory_id",
                detail=f"trajectoryId {row.trajectoryId!r} appears more than once",
            )
            continue
        if row.trajectoryId is not None:
            seen.add(row.trajectoryId)
        item = parse_trajectory_row(row, now=now, rules=rules)
        if isinstance(item, ParsedTrajectory) and item.row_exclusion is None:
            # Only rows that could be trained on: held-out play may face (and answer) exactly a training market.
            # Canonical: the validated steps serialised again (key order, spacing and number spelling gone).
            key = (item.window_id, hashlib.sha256(STEPS_ADAPTER.dump_json(item.steps)).digest())
            original = steps_seen.setdefault(key, item.trajectory_id)
            if original != item.trajectory_id:
                yield QuarantinedRow(
                    row_id=row.id,
                    trajectory_id=row.trajectoryId,
                    window_id=item.window_id,
                    reason="replayed_copy",
                    detail=f"its steps are those of trajectory {original!r} of the same window",
                )
                continue
        yield item
