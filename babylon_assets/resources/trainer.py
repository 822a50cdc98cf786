"""The trainer: which backend trains (TRAIN_BACKEND), on what base model, with which run settings, and W&B."""

from __future__ import annotations

from typing import Any

from dagster import ConfigurableResource

from babylon_assets.db.store import Store
from babylon_assets.settings import Settings, carried_fields, settings_of
from babylon_assets.training.run import TrainingOptions
from babylon_assets.training.tracking import WandbTracker

# Every setting a training run reads (DESIGN 7). The resource carries each as the field of the same name in
# lower case, so the launchpad shows them all and none can be dropped on the way to the backend.
TRAINING_SETTINGS = (
    "TRAIN_BACKEND",
    "BASE_MODEL",
    "PROJECT_NAME",
    "MODEL_NAME",
    "ART_PATH",
    "LEARNING_RATE",
    "ITERATIONS",
    "WINDOWS_PER_ITERATION",
    "DECISIONS_PER_TRAJECTORY",
    "TRAIN_SEED",
    "LORA_RANK",
    "LORA_ALPHA",
    "LORA_DROPOUT",
    "LORA_TARGET_MODULES",
    "KL_COEF",
    "CLIP_EPSILON",
    "MAX_GRAD_NORM",
    "MICRO_BATCH_SIZE",
    "MAX_SEQUENCE_TOKENS",
    "KEEP_CHECKPOINTS",
    "TRAIN_DEVICE",
    "WANDB_MODE",
    "WANDB_DIR",
)


class TrainerResource(ConfigurableResource):  # type: ignore[type-arg]
    """Training settings (DESIGN 7); the backend itself is built per run (it holds a model in memory)."""

    train_backend: str = "torch"
    base_model: str = "HuggingFaceTB/SmolLM2-135M-Instruct"
    project_name: str = "babylon-agents"
    model_name: str = "babylon-mmo"
    art_path: str = ".art"
    learning_rate: float = 5e-5
    iterations: int = 10
    windows_per_iteration: int = 20
    decisions_per_trajectory: int = 0
    train_seed: int = 0
    lora_rank: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    lora_target_modules: str = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"
    kl_coef: float = 0.0
    clip_epsilon: float = 0.2
    max_grad_norm: float = 1.0
    micro_batch_size: int = 4
    max_sequence_tokens: int = 2048
    keep_checkpoints: int = 3
    train_device: str = "auto"
    wandb_mode: str = "offline"
    wandb_dir: str = ".babylon/wandb"

    @classmethod
    def from_settings(cls, settings: Settings) -> TrainerResource:
        """The resource for these settings."""
        return cls(**carried_fields(settings, TRAINING_SETTINGS))

    def settings(self) -> Settings:
        """The training settings this resource carries, validated as the environment's would be."""
        return settings_of(self, TRAINING_SETTINGS)

    def options(self) -> TrainingOptions:
        """What a training run does."""
        return TrainingOptions(
            iterations=self.iterations,
            windows_per_iteration=self.windows_per_iteration,
            decisions_per_trajectory=self.decisions_per_trajectory,
            learning_rate=self.learning_rate,
            model_name=self.model_name,
            project=self.project_name,
            base_model=self.base_model,
            seed=self.train_seed,
        )

    def backend(self, store: Store) -> Any:
        """A fresh backend for one run, its checkpoint retention tied to the store's trained_models rows."""
        from babylon_assets.db.checkpoint_records import CheckpointRecords
        from babylon_assets.training.torch_backend import make_backend

        return make_backend(self.settings(), registry=CheckpointRecords(store))

    def tracker(self) -> WandbTracker | None:
        """The W&B run of a training run (WANDB_MODE=disabled: none)."""
        if self.wandb_mode == "disabled":
            return None
        return WandbTracker(project=self.project_name, mode=self.wandb_mode, directory=self.wandb_dir)
