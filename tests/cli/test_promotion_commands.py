"""`babylon evaluate`, `babylon deploy` and `babylon rollback` from the command line."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from babylon_assets.cli import app
from babylon_assets.db.evaluation_records import EvaluationRecords
from babylon_assets.db.store import Store
from babylon_assets.db.training_records import TrainingRecords
from babylon_assets.settings import Settings
from tests.assets.test_promotion import policy_double

runner = CliRunner()


def checkpoints(*versions: str) -> Store:
    store = Store.from_settings(Settings())
    store.upgrade()
    for version in versions:
        TrainingRecords(store).add_checkpoint(
            model_version=version,
            base_model="tiny-base",
            batch_id="b",
            storage_path="/nowhere",
            avg_reward=0.5,
            wandb_run_id=None,
        )
    return store


def test_evaluate_prints_both_policies_the_interval_and_the_verdict(monkeypatch, tmp_path):
    store = checkpoints("babylon-mmo@1")
    with policy_double("babble") as double:
        for name, value in {
            "BASE_MODEL": "tiny-base",
            "POLICY_API_BASE": double.base_url,
            "EVAL_SEEDS": "5",
            "EVAL_WINDOWS": "1",
            "EVAL_AGENTS": "2",
            "EVAL_DURATION_MINUTES": "2",
            "EVAL_BOOTSTRAP_RESAMPLES": "200",
            "WANDB_MODE": "disabled",
            "SERVING_FILE": str(tmp_path / "serving.json"),
        }.items():
            monkeypatch.setenv(name, value)
        result = runner.invoke(app, ["evaluate"])
    assert result.exit_code == 1, result.output  # rejected
    for expected in (
        "Evaluation of babylon-mmo@1",
        "base:tiny-base",
        "Paired P&L difference",
        "over 2 agent-windows",
        "Gate: rejected",
        "unparseable responses rose",
    ):
        assert expected in result.output, expected
    assert EvaluationRecords(store).model("babylon-mmo@1").status == "rejected"
    store.dispose()


def test_deploy_refuses_an_ungated_model_then_deploys_and_rolls_back(monkeypatch, tmp_path):
    store = checkpoints("babylon-mmo@1", "babylon-mmo@2")
    monkeypatch.setenv("POLICY_API_BASE", "http://127.0.0.1:9/v1")
    monkeypatch.setenv("SERVING_FILE", str(tmp_path / "serving.json"))
    refused = runner.invoke(app, ["deploy", "babylon-mmo@1"])
    assert refused.exit_code == 2 and "not ready" in refused.output
    for version in ("babylon-mmo@1", "babylon-mmo@2"):
        EvaluationRecords(store).set_gate_status(version, True)
        deployed = runner.invoke(app, ["deploy", version])
        assert deployed.exit_code == 0, deployed.output
    assert "AGENT_MODEL=openai/babylon-mmo@2" in deployed.output and "previous: babylon-mmo@1" in deployed.output
    back = runner.invoke(app, ["rollback"])
    assert back.exit_code == 0 and "Deployed babylon-mmo@1" in back.output
    assert json.loads((tmp_path / "serving.json").read_text())["version"] == "babylon-mmo@1"
    store.dispose()
