"""The trainer: which backend trains (TRAIN_BACKEND), on what base model, with which run settings, and W&B."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from dagster import ConfigurableResource

from babylon_assets.db.store import Store
from babylon_assets.settings import BuiltFromSettings, lower_case_fields
from babylon_assets.training.run import TrainingOptions
from babylon_assets.training.tracking import WandbTracker

if TYPE_CHECKING:
    import art

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
    "TRAIN_PRECISION",
    "WANDB_MODE",
    "WANDB_DIR",
    "ON_POLICY",
    "MAX_STEPS_OFF_POLICY",
    "IMPORTANCE_WEIGHT_CAP",
    "MASK_FORCED_TOKENS",
)


class TrainerResource(BuiltFromSettings, ConfigurableResource):  # type: ignore[misc,type-arg]
    """Training settings (DESIGN 7); the backend itself is built per run (it holds a model in memory)."""

    train_backend: str
    base_model: str
    project_name: str
    model_name: str
    art_path: str
    learning_rate: float
    iterations: int
    windows_per_iteration: int
    decisions_per_trajectory: int
    train_seed: int
    lora_rank: int
    lora_alpha: int
    lora_dropout: float
    lora_target_modules: str
    kl_coef: float
    clip_epsilon: float
    max_grad_norm: float
    micro_batch_size: int
    max_sequence_tokens: int
    keep_checkpoints: int
    train_device: str
    train_precision: str
    wandb_mode: str
    wandb_dir: str
    on_policy: bool
    max_steps_off_policy: int
    importance_weight_cap: float
    mask_forced_tokens: bool

    SETTING_FIELDS: ClassVar[dict[str, str]] = lower_case_fields(*TRAINING_SETTINGS)

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
            on_policy=self.on_policy,
            max_steps_off_policy=self.max_steps_off_policy,
        )

    def backend(self, store: Store) -> art.Backend:
        """A fresh backend for one run, its checkpoint retention tied to the store's trained_models rows."""
        from babylon_assets.db.checkpoint_records import CheckpointRecords
        from babylon_assets.training.torch_backend import make_backend

        return make_backend(self.settings(), registry=CheckpointRecords(store))

    def tracker(self) -> WandbTracker | None:
        """The W&B run of a training run (WANDB_MODE=disabled: none)."""
        if self.wandb_mode == "disabled":
            return None
        return WandbTracker(project=self.project_name, mode=self.wandb_mode, directory=self.wandb_dir)
