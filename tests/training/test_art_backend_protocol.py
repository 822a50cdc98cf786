"""The training call follows ART's backend protocol exactly (issue 21): checked against the real `LocalBackend` and
`ServerlessBackend` classes' signatures and result types. Neither can run here (CUDA with unsloth and vLLM; W&B's
hosted service), so a TEST DOUBLE stands in for each: every call our training makes is bound to the real class's
method signature (a keyword the real backend refuses fails the bind), and train() answers with the real result type.
"""

from __future__ import annotations

import inspect
from typing import Any

import pytest
from art.local import LocalBackend
from art.serverless import ServerlessBackend
from art.types import LocalTrainResult, ServerlessTrainResult
from dagster import DagsterInstance

from babylon_assets.db.store import Store
from babylon_assets.db.training_records import TrainingRecords
from babylon_assets.definitions import build_definitions
from babylon_assets.orchestration.pipeline import materialize_training_dataset, materialize_windows
from babylon_assets.play.simulator import SimulationPlan, simulate
from babylon_assets.settings import Settings
from babylon_assets.training.run import WANDB_ARTIFACT_SCHEME, checkpoint_of, run_training
from tests.conftest import NOW, SIM_START

WINDOWS = ["2025-01-15T10:00", "2025-01-15T11:00"]


class SignatureBoundBackendDouble:
    """A TEST DOUBLE for one of ART's backends: binds each call to the real class's signature, counts steps, and
    answers train() with what `result(step)` makes (the real class's result type)."""

    def __init__(self, real: type, result: Any) -> None:
        self.real, self.result, self.step = real, result, 0
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def _bind(self, method: str, *args: Any, **kwargs: Any) -> None:
        inspect.signature(getattr(self.real, method)).bind(self, *args, **kwargs)  # TypeError on a refused keyword
        self.calls.append((method, kwargs))

    async def register(self, model: Any) -> None:
        self._bind("register", model)

    async def _prepare_backend_for_training(self, model: Any, config: Any = None) -> tuple[str, str]:
        self._bind("_prepare_backend_for_training", model, config)
        return "http://127.0.0.1:9/v1", "test-double-key"

    def _model_inference_name(self, model: Any, step: int | None = None) -> str:
        self._bind("_model_inference_name", model, step=step)
        return model.name

    async def _get_step(self, model: Any) -> int:
        self._bind("_get_step", model)
        return self.step

    async def close(self) -> None:
        self._bind("close")

    async def train(self, model: Any, trajectory_groups: Any, **kwargs: Any) -> Any:
        groups = list(trajectory_groups)
        self._bind("train", model, groups, **kwargs)
        assert groups and all(len(group.trajectories) >= 2 for group in groups)
        self.step += 1
        return self.result(self.step)


@pytest.fixture
def scored(tmp_path, monkeypatch) -> Store:
    monkeypatch.setenv("ON_POLICY", "false")  # scripted play: the offline path
    url = f"sqlite:///{tmp_path / 'store.db'}"
    store = Store(url, clock=lambda: NOW)
    store.upgrade()
    simulate(store, SimulationPlan(agents=6, windows=2, duration_minutes=6, seed=7, start=SIM_START), now=NOW)
    defs = build_definitions(Settings(DATABASE_URL=url))
    with DagsterInstance.ephemeral() as instance:
        assert all(run.success for run in materialize_windows(defs, WINDOWS, instance))
        assert materialize_training_dataset(defs, instance, until="2025-01-15T14:00").success
    return store


@pytest.mark.parametrize(
    ("real", "result", "stored_as"),
    [
        (
            LocalBackend,
            lambda step: LocalTrainResult(step=step, metrics={"loss": 0.1}, checkpoint_path=f"/ckpt/{step:04d}"),
            "/ckpt/0002",
        ),
        (
            ServerlessBackend,
            lambda step: ServerlessTrainResult(
                step=step, metrics={"loss": 0.1}, artifact_name=f"team/babylon/m:step{step}"
            ),
            f"{WANDB_ARTIFACT_SCHEME}team/babylon/m:step2",
        ),
    ],
    ids=["LocalBackend", "ServerlessBackend"],
)
def test_training_drives_arts_own_backends_by_their_protocol(scored, tmp_path, real, result, stored_as):
    settings = Settings(DATABASE_URL="sqlite:///unused.db", ITERATIONS=2, ART_PATH=str(tmp_path / ".art"))
    options = build_definitions(settings).resources["trainer"].options()  # type: ignore[attr-defined]
    backend = SignatureBoundBackendDouble(real, result)
    outcome = run_training(scored, backend, options)  # type: ignore[arg-type]
    trained = [kwargs for method, kwargs in backend.calls if method == "train"]
    assert len(trained) == 2 and all(set(kwargs) == {"learning_rate"} for kwargs in trained)
    assert backend.calls[-1][0] == "close"  # the run's trainer is closed with it
    assert outcome.model_version == f"{settings.MODEL_NAME}@2"
    assert TrainingRecords(scored).checkpoints()[-1].storagePath == stored_as


def test_a_keyword_the_real_backend_refuses_fails_the_double():
    backend = SignatureBoundBackendDouble(LocalBackend, lambda step: None)
    with pytest.raises(TypeError, match="data_position"):
        backend._bind("train", object(), [], data_position=3)


def test_the_checkpoint_is_read_from_each_result_type():
    assert checkpoint_of(LocalTrainResult(step=1, checkpoint_path="/a/0001")) == "/a/0001"
    assert checkpoint_of(LocalTrainResult(step=1)) is None
    assert checkpoint_of(ServerlessTrainResult(step=3, artifact_name="e/p/m:step3")) == "wandb-artifact://e/p/m:step3"
    assert checkpoint_of(ServerlessTrainResult(step=3)) is None
