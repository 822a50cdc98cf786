"""Weights & Biases for training runs: one W&B run per training run, offline by default (DESIGN 7).

Offline runs write their files under `WANDB_DIR` (default `.babylon/wandb`, ignored by git); `wandb sync
<run folder>` uploads them later. With `WANDB_MODE=online` and a `WANDB_API_KEY` the same code logs live.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from babylon_assets.core.on_policy import split_version


@dataclass
class TrackedRun:
    """What a W&B run left behind."""

    run_id: str
    run_dir: str
    mode: str
    artifact_name: str | None = None


class WandbTracker:
    """Logs one training run's config, per-step metrics and adapter artifact."""

    def __init__(self, *, project: str, mode: str = "offline", directory: str = ".babylon/wandb") -> None:
        self.project = project
        self.mode = mode
        self.directory = Path(directory)
        self._run: Any = None

    def start(self, name: str, config: dict[str, Any], run_id: str | None = None) -> TrackedRun:
        """Open the run; with `run_id`, go on with that run (a checkpoint's evaluation joins its training run)."""
        # Never reach for the network in offline mode, whatever else the environment says.
        os.environ.setdefault("WANDB_SILENT", "true")
        import wandb

        self.directory.mkdir(parents=True, exist_ok=True)
        self._run = wandb.init(
            project=self.project,
            name=name,
            config=config,
            mode=self.mode,  # type: ignore[arg-type]
            dir=str(self.directory),
            reinit="finish_previous",
            id=run_id,
            resume="allow" if run_id else None,
        )
        return self.current()

    def current(self) -> TrackedRun:
        """The open run's id and folder."""
        run = self._run
        folder = Path(run.dir).parent if run is not None else self.directory
        return TrackedRun(run_id=str(run.id), run_dir=str(folder), mode=self.mode)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        """One training step's numbers."""
        if self._run is not None:
            self._run.log(metrics, step=step)

    def summarize(self, values: dict[str, Any]) -> None:
        """Numbers that describe the whole run (an evaluation's results), in its summary."""
        if self._run is not None:
            self._run.summary.update(values)

    def log_adapter(self, checkpoint: str, model_version: str) -> str:
        """The checkpoint's adapter files as a version of the model's one artifact (named after the model), aliased
        `step-N` and `latest`; returns the alias it was logged under. Offline runs keep it until `wandb sync`."""
        import wandb

        name, step = artifact_name_and_aliases(model_version)
        artifact = wandb.Artifact(name=name, type="model", metadata={"model_version": model_version})
        for file in sorted(Path(checkpoint).iterdir()):
            if file.name.startswith("adapter_"):
                artifact.add_file(str(file))
        self._run.log_artifact(artifact, aliases=[step, "latest"])
        return f"{name}:{step}"

    def finish(self, failed: bool = False) -> TrackedRun | None:
        """Close the run (exit code 1 when the training failed)."""
        if self._run is None:
            return None
        tracked = self.current()
        self._run.finish(exit_code=1 if failed else 0)
        self._run = None
        return tracked


def artifact_name_and_aliases(model_version: str) -> tuple[str, str]:
    """`babylon-mmo@3` -> the artifact `babylon-mmo` and its alias `step-3` (one artifact per model, not per step)."""
    split = split_version(model_version)
    if split is None:
        raise ValueError(f"{model_version!r} is not a checkpoint version like model@3")
    return split[0], f"step-{split[1]}"
