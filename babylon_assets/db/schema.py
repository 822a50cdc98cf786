"""SQLAlchemy models: the game's tables exactly as its Prisma schema creates them, and our own tables.

The game's tables use Prisma's naming (snake_case tables, quoted camelCase columns, TEXT ids without
defaults, `updatedAt` NOT NULL without default) so that `DATABASE_URL` can point at a real game
database. Our tables live in their own schema, `babylon_assets`, so Prisma never sees them as drift;
on SQLite the schema is translated away and they share the file.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any, cast

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Double,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    Numeric,
    String,
    Table,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

OUR_SCHEMA = "babylon_assets"
GAME_USER_TABLE = "User"

# Prisma's DateTime is TIMESTAMP(3) without a zone; values are UTC.
Timestamp = DateTime(timezone=False).with_variant(postgresql.TIMESTAMP(precision=3), "postgresql")
# Prisma's Json is JSONB on PostgreSQL.
Json = JSON().with_variant(postgresql.JSONB(), "postgresql")
Float: Double[float] = Double()


class GameBase(DeclarativeBase):
    """The game's tables (schema: the game's, `public` unless the URL names another)."""

    metadata = MetaData()


class OurBase(DeclarativeBase):
    """Our own tables, in schema `babylon_assets`."""

    metadata = MetaData(schema=OUR_SCHEMA)


class Trajectory(GameBase):
    """`trajectories`: one recorded episode or tick of one agent."""

    __tablename__ = "trajectories"
    __table_args__ = (
        Index("trajectories_trajectoryId_key", "trajectoryId", unique=True),
        Index("trajectories_windowId_idx", "windowId"),
        Index("trajectories_windowId_agentId_idx", "windowId", "agentId"),
        Index("trajectories_agentId_startTime_idx", "agentId", "startTime"),
        Index("trajectories_isTrainingData_usedInTraining_idx", "isTrainingData", "usedInTraining"),
        Index("trajectories_scenarioId_createdAt_idx", "scenarioId", "createdAt"),
        Index("trajectories_trainedInBatch_idx", "trainedInBatch"),
        Index("trajectories_aiJudgeReward_idx", "aiJudgeReward"),
    )

    id: Mapped[str] = mapped_column(Text, primary_key=True)
    trajectoryId: Mapped[str] = mapped_column(Text)
    agentId: Mapped[str] = mapped_column(Text)
    startTime: Mapped[datetime] = mapped_column(Timestamp)
    endTime: Mapped[datetime] = mapped_column(Timestamp)
    durationMs: Mapped[int] = mapped_column(Integer)
    windowId: Mapped[str | None] = mapped_column(String(50))
    windowHours: Mapped[int] = mapped_column(Integer, server_default=text("1"))
    episodeId: Mapped[str | None] = mapped_column(String(100))
    scenarioId: Mapped[str | None] = mapped_column(String(100))
    batchId: Mapped[str | None] = mapped_column(String(100))
    stepsJson: Mapped[str] = mapped_column(Text)
    rewardComponentsJson: Mapped[str] = mapped_column(Text)
    metricsJson: Mapped[str] = mapped_column(Text)
    metadataJson: Mapped[str] = mapped_column(Text)
    totalReward: Mapped[float] = mapped_column(Float)
    episodeLength: Mapped[int] = mapped_column(Integer)
    finalStatus: Mapped[str] = mapped_column(Text)
    finalBalance: Mapped[float | None] = mapped_column(Float)
    finalPnL: Mapped[float | None] = mapped_column(Float)
    tradesExecuted: Mapped[int | None] = mapped_column(Integer)
    postsCreated: Mapped[int | None] = mapped_column(Integer)
    aiJudgeReward: Mapped[float | None] = mapped_column(Float)
    aiJudgeReasoning: Mapped[str | None] = mapped_column(Text)
    judgedAt: Mapped[datetime | None] = mapped_column(Timestamp)
    isTrainingData: Mapped[bool] = mapped_column(Boolean, server_default=text("true"))
    isEvaluation: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))
    usedInTraining: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))
    trainedInBatch: Mapped[str | None] = mapped_column(Text)
    createdAt: Mapped[datetime] = mapped_column(Timestamp, server_default=func.current_timestamp())
    updatedAt: Mapped[datetime] = mapped_column(Timestamp)


class LlmCallLog(GameBase):
    """`llm_call_logs`: one LLM call of a trajectory step."""

    __tablename__ = "llm_call_logs"
    __table_args__ = (
        Index("llm_call_logs_callId_key", "callId", unique=True),
        Index("llm_call_logs_trajectoryId_idx", "trajectoryId"),
    )

    id: Mapped[str] = mapped_column(Text, primary_key=True)
    trajectoryId: Mapped[str] = mapped_column(Text)
    stepId: Mapped[str] = mapped_column(Text)
    callId: Mapped[str] = mapped_column(Text)
    timestamp: Mapped[datetime] = mapped_column(Timestamp)
    latencyMs: Mapped[int | None] = mapped_column(Integer)
    model: Mapped[str] = mapped_column(Text)
    purpose: Mapped[str] = mapped_column(Text)
    actionType: Mapped[str | None] = mapped_column(Text)
    systemPrompt: Mapped[str] = mapped_column(Text)
    userPrompt: Mapped[str] = mapped_column(Text)
    messagesJson: Mapped[str | None] = mapped_column(Text)
    response: Mapped[str] = mapped_column(Text)
    reasoning: Mapped[str | None] = mapped_column(Text)
    temperature: Mapped[float] = mapped_column(Float)
    maxTokens: Mapped[int] = mapped_column(Integer)
    topP: Mapped[float | None] = mapped_column(Float)
    promptTokens: Mapped[int | None] = mapped_column(Integer)
    completionTokens: Mapped[int | None] = mapped_column(Integer)
    totalTokens: Mapped[int | None] = mapped_column(Integer)
    metadata_: Mapped[str | None] = mapped_column("metadata", Text)
    createdAt: Mapped[datetime] = mapped_column(Timestamp, server_default=func.current_timestamp())


class MarketOutcome(GameBase):
    """`market_outcomes`: the ground truth of a window; a stock row or a prediction-market row."""

    __tablename__ = "market_outcomes"
    __table_args__ = (
        Index("market_outcomes_windowId_idx", "windowId"),
        Index("market_outcomes_windowId_stockTicker_idx", "windowId", "stockTicker"),
    )

    id: Mapped[str] = mapped_column(Text, primary_key=True)
    windowId: Mapped[str] = mapped_column(String(50))
    stockTicker: Mapped[str | None] = mapped_column(String(20))
    startPrice: Mapped[Decimal | None] = mapped_column(Numeric(10, 2))
    endPrice: Mapped[Decimal | None] = mapped_column(Numeric(10, 2))
    changePercent: Mapped[Decimal | None] = mapped_column(Numeric(5, 2))
    sentiment: Mapped[str | None] = mapped_column(String(20))
    newsEvents: Mapped[Any | None] = mapped_column(Json)
    predictionMarketId: Mapped[str | None] = mapped_column(Text)
    question: Mapped[str | None] = mapped_column(Text)
    outcome: Mapped[str | None] = mapped_column(String(20))
    finalProbability: Mapped[Decimal | None] = mapped_column(Numeric(5, 4))
    volume: Mapped[Decimal | None] = mapped_column(Numeric(15, 2))
    createdAt: Mapped[datetime] = mapped_column(Timestamp, server_default=func.current_timestamp())


class RewardJudgment(GameBase):
    """`reward_judgments`: the latest judgment of a trajectory."""

    __tablename__ = "reward_judgments"
    __table_args__ = (
        Index("reward_judgments_trajectoryId_key", "trajectoryId", unique=True),
        Index("reward_judgments_overallScore_idx", "overallScore"),
        Index("reward_judgments_groupId_rank_idx", "groupId", "rank"),
    )

    id: Mapped[str] = mapped_column(Text, primary_key=True)
    trajectoryId: Mapped[str] = mapped_column(
        Text,
        ForeignKey(
            "trajectories.trajectoryId",
            name="reward_judgments_trajectoryId_fkey",
            ondelete="CASCADE",
            onupdate="CASCADE",
        ),
    )
    judgeModel: Mapped[str] = mapped_column(Text)
    judgeVersion: Mapped[str] = mapped_column(Text)
    overallScore: Mapped[float] = mapped_column(Float)
    componentScoresJson: Mapped[str | None] = mapped_column(Text)
    rank: Mapped[int | None] = mapped_column(Integer)
    normalizedScore: Mapped[float | None] = mapped_column(Float)
    groupId: Mapped[str | None] = mapped_column(Text)
    reasoning: Mapped[str] = mapped_column(Text)
    strengthsJson: Mapped[str | None] = mapped_column(Text)
    weaknessesJson: Mapped[str | None] = mapped_column(Text)
    criteriaJson: Mapped[str] = mapped_column(Text)
    judgedAt: Mapped[datetime] = mapped_column(Timestamp, server_default=func.current_timestamp())


class TrainingBatch(GameBase):
    """`training_batches`: one training run over a set of trajectories."""

    __tablename__ = "training_batches"
    __table_args__ = (Index("training_batches_batchId_key", "batchId", unique=True),)

    id: Mapped[str] = mapped_column(Text, primary_key=True)
    batchId: Mapped[str] = mapped_column(Text)
    scenarioId: Mapped[str | None] = mapped_column(Text)
    baseModel: Mapped[str] = mapped_column(Text)
    modelVersion: Mapped[str] = mapped_column(Text)
    trajectoryIds: Mapped[str] = mapped_column(Text)
    rankingsJson: Mapped[str | None] = mapped_column(Text)
    rewardsJson: Mapped[str] = mapped_column(Text)
    trainingLoss: Mapped[float | None] = mapped_column(Float)
    policyImprovement: Mapped[float | None] = mapped_column(Float)
    status: Mapped[str] = mapped_column(Text, server_default=text("'pending'"))
    error: Mapped[str | None] = mapped_column(Text)
    createdAt: Mapped[datetime] = mapped_column(Timestamp, server_default=func.current_timestamp())
    startedAt: Mapped[datetime | None] = mapped_column(Timestamp)
    completedAt: Mapped[datetime | None] = mapped_column(Timestamp)


class TrainedModel(GameBase):
    """`trained_models`: a model version and where it stands (training ... deployed, archived)."""

    __tablename__ = "trained_models"
    __table_args__ = (Index("trained_models_modelId_key", "modelId", unique=True),)

    id: Mapped[str] = mapped_column(Text, primary_key=True)
    modelId: Mapped[str] = mapped_column(Text)
    version: Mapped[str] = mapped_column(Text)
    baseModel: Mapped[str] = mapped_column(Text)
    trainingBatch: Mapped[str | None] = mapped_column(Text)
    status: Mapped[str] = mapped_column(Text, server_default=text("'training'"))
    deployedAt: Mapped[datetime | None] = mapped_column(Timestamp)
    archivedAt: Mapped[datetime | None] = mapped_column(Timestamp)
    storagePath: Mapped[str] = mapped_column(Text)
    benchmarkScore: Mapped[float | None] = mapped_column(Float)
    accuracy: Mapped[float | None] = mapped_column(Float)
    avgReward: Mapped[float | None] = mapped_column(Float)
    evalMetrics: Mapped[Any | None] = mapped_column(Json)
    wandbRunId: Mapped[str | None] = mapped_column(Text)
    wandbArtifactId: Mapped[str | None] = mapped_column(Text)
    agentsUsing: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    totalInferences: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    createdAt: Mapped[datetime] = mapped_column(Timestamp, server_default=func.current_timestamp())
    updatedAt: Mapped[datetime] = mapped_column(Timestamp)


def table_of(model: type[GameBase] | type[OurBase]) -> Table:
    """The Core table of a model, typed as a Table (for inserts, deletes and upserts)."""
    return cast(Table, model.__table__)


GAME_TABLES = tuple(GameBase.metadata.sorted_tables)
GAME_TABLE_NAMES = frozenset(table.name for table in GAME_TABLES)


class QuarantinedTrajectory(OurBase):
    """A game row that did not parse, with the reason; one row per (trajectory row, reason)."""

    __tablename__ = "quarantined_trajectories"
    __table_args__ = (
        UniqueConstraint("trajectory_row_id", "reason", name="quarantined_trajectories_row_reason_key"),
        Index("quarantined_trajectories_window_idx", "window_id"),
    )

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    trajectory_row_id: Mapped[str] = mapped_column(Text)
    trajectory_id: Mapped[str | None] = mapped_column(Text)
    window_id: Mapped[str] = mapped_column(String(50))
    reason: Mapped[str] = mapped_column(String(64))
    detail: Mapped[str] = mapped_column(Text)
    first_seen_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    last_seen_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    times_seen: Mapped[int] = mapped_column(Integer, server_default=text("1"))


class QuarantinedGatewayCall(OurBase):
    """A gateway call the store refused for its content: the whole record as JSON (escaped, never altered: its
    logprobs belong to its text), and why."""

    __tablename__ = "quarantined_gateway_calls"

    call_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    agent_id: Mapped[str] = mapped_column(Text)
    reason: Mapped[str] = mapped_column(Text)
    record_json: Mapped[str] = mapped_column(Text)
    quarantined_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class GatewayKey(OurBase):
    """A caller key of the gateway, stored as a hash: the agents it may speak for (null: every agent of the game,
    the game server's key), and whether it may set the simulated clock or mark play held out."""

    __tablename__ = "gateway_keys"

    key_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    key_hash: Mapped[str] = mapped_column(String(64))
    agents_json: Mapped[str | None] = mapped_column(Text)
    may_set_clock: Mapped[bool] = mapped_column(Boolean)
    may_mark_evaluation: Mapped[bool] = mapped_column(Boolean)
    label: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class JudgeClaim(OurBase):
    """A group being judged right now, by whom: a second run waits for its cached answer instead of paying again."""

    __tablename__ = "judge_claims"

    cache_key: Mapped[str] = mapped_column(String(64), primary_key=True)
    owner: Mapped[str] = mapped_column(Text)
    claimed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class StoreIdentity(OurBase):
    """The one row naming this store: what its checkpoint folders are tied to (lineage never mixes stores)."""

    __tablename__ = "store_identity"

    store_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class ExcludedTrajectory(OurBase):
    """A row that parsed but is not trained on, with the reason: its own flags (evaluation, not training data) or
    its agent-window's (too few LLM decisions, no P&L); a window's set is replaced each time it is read."""

    __tablename__ = "excluded_trajectories"

    window_id: Mapped[str] = mapped_column(String(50), primary_key=True)
    trajectory_row_id: Mapped[str] = mapped_column(Text, primary_key=True)
    trajectory_id: Mapped[str] = mapped_column(Text)
    agent_id: Mapped[str] = mapped_column(Text)
    reason: Mapped[str] = mapped_column(String(64))
    recorded_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class WindowState(OurBase):
    """What the `trajectories` asset found in a window: counts, readiness and a fingerprint of its rows."""

    __tablename__ = "window_states"

    window_id: Mapped[str] = mapped_column(String(50), primary_key=True)
    rows: Mapped[int] = mapped_column(Integer)
    agents: Mapped[int] = mapped_column(Integer)
    eligible: Mapped[int] = mapped_column(Integer)
    excluded_json: Mapped[str] = mapped_column(Text)
    quarantined_json: Mapped[str] = mapped_column(Text)
    ready: Mapped[bool] = mapped_column(Boolean)
    rows_fingerprint: Mapped[str] = mapped_column(String(64))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class GroupMember(OurBase):
    """An eligible agent-window of a window: kept in a group or dropped, with the reason, and its score."""

    __tablename__ = "group_members"
    __table_args__ = (Index("group_members_group_idx", "group_id"),)

    window_id: Mapped[str] = mapped_column(String(50), primary_key=True)
    agent_window_id: Mapped[str] = mapped_column(Text, primary_key=True)
    agent_id: Mapped[str] = mapped_column(Text)
    trajectory_ids_json: Mapped[str] = mapped_column(Text)
    kept: Mapped[bool] = mapped_column(Boolean)
    reason: Mapped[str] = mapped_column(String(64))
    group_id: Mapped[str | None] = mapped_column(String(80))
    dropout_rate: Mapped[float] = mapped_column(Float)
    dropout_draw: Mapped[float] = mapped_column(Float)
    final_pnl: Mapped[float | None] = mapped_column(Float)
    score: Mapped[float | None] = mapped_column(Float)
    rank: Mapped[int | None] = mapped_column(Integer)
    reasoning: Mapped[str | None] = mapped_column(Text)
    judge_name: Mapped[str | None] = mapped_column(String(64))
    judge_version: Mapped[str | None] = mapped_column(String(200))
    judged_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class JudgmentRecord(OurBase):
    """Every judge's verdict on an agent-window: the history behind the game's latest reward_judgments row."""

    __tablename__ = "judgment_history"
    __table_args__ = (Index("judgment_history_key", "agent_window_id", "judge_version", "window_id", unique=True),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    window_id: Mapped[str] = mapped_column(String(50))
    agent_window_id: Mapped[str] = mapped_column(Text)
    group_id: Mapped[str] = mapped_column(String(80))
    judge_name: Mapped[str] = mapped_column(String(64))
    judge_version: Mapped[str] = mapped_column(String(200))
    score: Mapped[float] = mapped_column(Float)
    rank: Mapped[int | None] = mapped_column(Integer)
    reasoning: Mapped[str] = mapped_column(Text)
    judged_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    times_judged: Mapped[int] = mapped_column(Integer, server_default=text("1"))


class WindowVerdict(OurBase):
    """The latest verdict of an asset check on one window (a multi-partition run gives checks no partition)."""

    __tablename__ = "window_verdicts"
    __table_args__ = (Index("window_verdicts_run_idx", "run_id"),)

    window_id: Mapped[str] = mapped_column(String(50), primary_key=True)
    check_name: Mapped[str] = mapped_column(String(64), primary_key=True)
    passed: Mapped[bool] = mapped_column(Boolean)
    detail: Mapped[str] = mapped_column(Text)
    run_id: Mapped[str | None] = mapped_column(String(64))
    checked_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class TrainingDatasetRecord(OurBase):
    """A materialized training dataset; its id is a hash of its membership, so a rerun adds nothing."""

    __tablename__ = "training_datasets"

    dataset_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    until_window: Mapped[str] = mapped_column(String(50))
    lookback_hours: Mapped[int] = mapped_column(Integer)
    windows: Mapped[int] = mapped_column(Integer)
    groups: Mapped[int] = mapped_column(Integer)
    trajectories: Mapped[int] = mapped_column(Integer)
    dropped_json: Mapped[str] = mapped_column(Text)


class DatasetMember(OurBase):
    """One scored agent-window in a training dataset."""

    __tablename__ = "dataset_members"

    dataset_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    agent_window_id: Mapped[str] = mapped_column(Text, primary_key=True)
    window_id: Mapped[str] = mapped_column(String(50))
    group_id: Mapped[str] = mapped_column(String(80))
    reward: Mapped[float] = mapped_column(Float)


class TrainingStepMember(OurBase):
    """One agent-window a training step learned from: the lineage of every checkpoint at or after the step."""

    __tablename__ = "training_step_members"
    __table_args__ = (Index("training_step_members_batch", "batch_id"),)

    model_name: Mapped[str] = mapped_column(String(200), primary_key=True)
    step: Mapped[int] = mapped_column(Integer, primary_key=True)
    agent_window_id: Mapped[str] = mapped_column(Text, primary_key=True)
    batch_id: Mapped[str] = mapped_column(String(80))
    window_id: Mapped[str] = mapped_column(String(50))
    group_id: Mapped[str] = mapped_column(String(80))
    trajectory_ids: Mapped[str] = mapped_column(Text)  # JSON list: the game rows stitched into the agent-window
    reward: Mapped[float] = mapped_column(Float)


class EvaluationPlay(OurBase):
    """One agent-window of held-out evaluation play by one policy (a base model or a checkpoint version),
    stored as it finishes: a policy's play on an evaluation plan is played once and reused."""

    __tablename__ = "evaluation_plays"

    plan_key: Mapped[str] = mapped_column(String(64), primary_key=True)
    policy: Mapped[str] = mapped_column(String(300), primary_key=True)
    seed: Mapped[int] = mapped_column(Integer, primary_key=True)
    window_id: Mapped[str] = mapped_column(String(50), primary_key=True)
    slot: Mapped[str] = mapped_column(String(80), primary_key=True)
    final_pnl: Mapped[float] = mapped_column(Float)
    decisions: Mapped[int] = mapped_column(Integer)
    unparseable: Mapped[int] = mapped_column(Integer)
    max_drawdown: Mapped[float] = mapped_column(Float)
    trajectory_id: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class JudgeCacheEntry(OurBase):
    """A judged group, keyed by a hash of (judge view, judge model, rubric version): never sent twice."""

    __tablename__ = "judge_cache"

    cache_key: Mapped[str] = mapped_column(String(64), primary_key=True)
    judge_version: Mapped[str] = mapped_column(String(200))
    window_id: Mapped[str] = mapped_column(String(50))
    group_id: Mapped[str] = mapped_column(String(80))
    scores_json: Mapped[str] = mapped_column(Text)
    tokens_in: Mapped[int] = mapped_column(Integer)
    tokens_out: Mapped[int] = mapped_column(Integer)
    dollars: Mapped[float] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
