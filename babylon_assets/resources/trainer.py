"""The trainer: which backend trains (TRAIN_BACKEND), on what base model, with which run settings, and W&B."""

from __future__ import annotations

from typing import Any

from dagster import ConfigurableResource

from babylon_assets.db.store import Store
from babylon_assets.settings import Settings
from babylon_assets.tracking import WandbTracker
from babylon_assets.training import TrainingOptions


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
    seed: int = 0
    lora_rank: int = 8
    lora_alpha: int = 16
    kl_coef: float = 0.0
    micro_batch_size: int = 4
    max_sequence_tokens: int = 2048
    keep_checkpoints: int = 3
    train_device: str = "auto"
    wandb_mode: str = "offline"
    wandb_dir: str = ".babylon/wandb"

    def options(self) -> TrainingOptions:
        """What a training run does."""
        return TrainingOptions(iterations=self.iterations, windows_per_iteration=self.windows_per_iteration,
                               learning_rate=self.learning_rate, model_name=self.model_name,
                               project=self.project_name, base_model=self.base_model, seed=self.seed)

    def backend(self, store: Store) -> Any:
        """A fresh backend for one run, its checkpoint retention tied to the store's trained_models rows."""
        from babylon_assets.db.checkpoints import CheckpointRecords
        from babylon_assets.trainer.torch_backend import make_backend

        settings = Settings(TRAIN_BACKEND=self.train_backend, BASE_MODEL=self.base_model,  # type: ignore[arg-type]
                            ART_PATH=self.art_path, PROJECT_NAME=self.project_name, MODEL_NAME=self.model_name,
                            TRAIN_SEED=self.seed, LORA_RANK=self.lora_rank, LORA_ALPHA=self.lora_alpha,
                            KL_COEF=self.kl_coef, MICRO_BATCH_SIZE=self.micro_batch_size,
                            MAX_SEQUENCE_TOKENS=self.max_sequence_tokens, KEEP_CHECKPOINTS=self.keep_checkpoints,
                            TRAIN_DEVICE=self.train_device)  # type: ignore[arg-type]
        return make_backend(settings, registry=CheckpointRecords(store))

    def tracker(self) -> WandbTracker | None:
        """The W&B run of a training run (WANDB_MODE=disabled: none)."""
        if self.wandb_mode == "disabled":
            return None
        return WandbTracker(project=self.project_name, mode=self.wandb_mode, directory=self.wandb_dir)
