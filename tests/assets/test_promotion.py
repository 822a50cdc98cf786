"""Promotion: paired held-out evaluation through the gateway, the blocking gate, deploy and rollback.

The policies here are served by the OpenAI-compatible TEST DOUBLE (POLICY_API_BASE), which answers by the
model name it is asked for, so each policy's behaviour is constructed; the tiny model served by llama.cpp
runs the same path in tests/promotion/test_promotion_local.py.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
from dagster import DagsterInstance
from sqlalchemy import select

from babylon_assets.db.evaluation_records import EvaluationRecords
from babylon_assets.db.schema import EvaluationPlay, LlmCallLog, TrainedModel, Trajectory, table_of
from babylon_assets.db.store import Store, StoreError
from babylon_assets.db.training_records import TrainingRecords
from babylon_assets.definitions import build_definitions
from babylon_assets.orchestration.pipeline import materialize_promotion
from babylon_assets.promotion.deploy import DeployError, DeployOptions, deploy_model, rollback
from babylon_assets.promotion.evaluation import listening
from babylon_assets.settings import Settings
from tests.doubles.openai_compatible import OpenAICompatibleTestDouble, ScriptedReply

BASE = "tiny-base"
HOLD = '{"action": "HOLD", "reasoning": "wait"}'
TICKER = re.compile(r"^\s+([A-Z]{2,6}) \$", re.M)


@pytest.fixture(autouse=True)
def offline_training(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests train on scripted play, which is not the policy's own: the offline path (ON_POLICY=false)."""
    monkeypatch.setenv("ON_POLICY", "false")


def policy_double(candidate: str) -> OpenAICompatibleTestDouble:
    """Base: always HOLD. Checkpoint: `hold`, `long` (opens a long at its first decision), or `babble`."""

    def answer(request: dict[str, Any]) -> ScriptedReply:
        if request["model"] == BASE or candidate == "hold":
            return ScriptedReply(HOLD)
        if candidate == "babble":
            return ScriptedReply("I think the market will go up, probably.")
        prompt = request["messages"][-1]["content"]
        if "decision 1 of" in prompt:
            ticker = TICKER.search(prompt).group(1)
            return ScriptedReply(
                json.dumps(
                    {"action": "OPEN_LONG", "ticker": ticker, "amount": 2000, "leverage": 3, "reasoning": "momentum"}
                )
            )
        return ScriptedReply(HOLD)

    return OpenAICompatibleTestDouble(answer)


def settings_for(tmp_path: Path, url: str, api_base: str, **overrides: Any) -> Settings:
    return Settings(
        DATABASE_URL=url,
        BASE_MODEL=BASE,
        POLICY_API_BASE=api_base,
        EVAL_SEEDS="5,6",
        EVAL_WINDOWS=1,
        EVAL_AGENTS=3,
        EVAL_DURATION_MINUTES=3,
        SERVING_FILE=str(tmp_path / "serving.json"),
        WANDB_DIR=str(tmp_path / "wandb"),
        EVAL_BOOTSTRAP_RESAMPLES=500,
        **overrides,
    )


def with_checkpoint(url: str, version: str = "babylon-mmo@2", storage: str = "/nowhere") -> Store:
    store = Store(url)
    store.upgrade()
    TrainingRecords(store).add_checkpoint(
        model_version=version,
        base_model=BASE,
        batch_id="batch-1",
        storage_path=storage,
        avg_reward=0.5,
        wandb_run_id=None,
    )
    return store


def promote(settings: Settings, deploy: bool = True):
    with DagsterInstance.ephemeral() as instance:
        run = materialize_promotion(build_definitions(settings), instance, deploy=deploy)
        checks = [
            e
            for e in instance.all_logs(run.run_id)
            if e.dagster_event is not None and e.dagster_event.event_type_value == "ASSET_CHECK_EVALUATION"
        ]
        materialized = {
            e.dagster_event.asset_key.path[-1]
            for e in instance.all_logs(run.run_id)
            if e.dagster_event is not None and e.dagster_event.event_type_value == "ASSET_MATERIALIZATION"
        }
    return run, [c.dagster_event.event_specific_data for c in checks], materialized


def price_lines(prompt: str) -> list[str]:
    return [line for line in prompt.splitlines() if TICKER.match(line)]


def test_both_policies_face_identical_markets_and_a_passing_checkpoint_is_deployed(database_url, tmp_path):
    store = with_checkpoint(database_url)
    with policy_double("long") as double:
        settings = settings_for(tmp_path, database_url, double.base_url, GATE_MIN_PNL_DELTA=-1e9)
        heard: list[tuple[str, int, int]] = []
        with listening(lambda policy, seed, plays: heard.append((policy, seed, plays))):
            run, checks, materialized = promote(settings)
        calls = len(double.requests)
        # what `babylon evaluate` counts: each policy's markets, as they are played
        assert heard == [
            (f"base:{BASE}", 5, 3),
            (f"base:{BASE}", 6, 3),
            ("babylon-mmo@2", 5, 3),
            ("babylon-mmo@2", 6, 3),
        ]
        assert run.success and materialized == {"checkpoint_evaluation", "deployed_model"}
        assert [c.passed for c in checks] == [True]
        assert calls == 2 * 2 * 3 * 3  # 2 policies x 2 seeds x 3 agents x 3 decisions

        row = EvaluationRecords(store).model("babylon-mmo@2")
        assert row.status == "deployed" and row.deployedAt is not None
        metrics = row.evalMetrics
        assert metrics["paired_pnl_difference"]["pairs"] == 6 and metrics["gate"]["passed"]
        assert metrics["base_policy"] == f"base:{BASE}" and metrics["candidate_policy"] == "babylon-mmo@2"
        assert row.benchmarkScore == pytest.approx(metrics["candidate"]["mean_pnl"])
        assert metrics["base"]["mean_pnl"] == 0.0  # holding all hour makes nothing
        assert metrics["candidate"]["mean_pnl"] != 0.0 and metrics["candidate"]["mean_judge_score"] is not None
        logged = b"".join(p.read_bytes() for p in Path(settings.WANDB_DIR).rglob("*.wandb"))
        assert b"eval/paired_pnl_mean" in logged and b"eval/checkpoint_unparseable_rate" in logged
        serving = json.loads(Path(settings.SERVING_FILE).read_text())
        assert serving == {
            "model": "openai/babylon-mmo@2",
            "api_base": double.base_url,
            "api_key": None,
            "version": "babylon-mmo@2",
        }

        # Every call went through the gateway into held-out trajectories that carry the simulator's books.
        with store.engine.connect() as connection:
            rows = connection.execute(select(table_of(Trajectory))).mappings().all()
            prompts = connection.execute(
                select(
                    table_of(LlmCallLog).c.trajectoryId,
                    table_of(LlmCallLog).c.userPrompt,
                    table_of(LlmCallLog).c.timestamp,
                )
            ).all()
            plays = connection.execute(select(table_of(EvaluationPlay))).mappings().all()
        assert len(rows) == 12 and all(r["isEvaluation"] and not r["isTrainingData"] for r in rows)
        assert all(r["trajectoryId"].startswith("gw-eval-") and r["finalStatus"] == "completed" for r in rows)
        assert {round(r["finalPnL"], 2) for r in rows} == {round(p["final_pnl"], 2) for p in plays}
        assert len(prompts) == calls and len(plays) == 12

        # Identical market paths: at every decision, each pair saw the same prices, whatever either did.
        by_trajectory: dict[str, list[str]] = defaultdict(list)
        for trajectory_id, prompt, _ in sorted(prompts, key=lambda p: (p[0], p[2])):
            by_trajectory[trajectory_id].append(prompt)
        pairs = defaultdict(list)
        for play in plays:
            pairs[(play["seed"], play["window_id"], play["slot"])].append(by_trajectory[play["trajectory_id"]])
        assert len(pairs) == 6
        for base_prompts, candidate_prompts in pairs.values():
            assert [price_lines(p) for p in base_prompts] == [price_lines(p) for p in candidate_prompts]
            assert base_prompts[0] == candidate_prompts[0]
        assert any(a != b for a, b in pairs.values())  # and the policies did play differently

        # A second evaluation reuses the stored play: no call is made again, nothing is duplicated.
        heard.clear()
        with listening(lambda policy, seed, plays: heard.append((policy, seed, plays))):
            run, checks, _ = promote(settings, deploy=False)
        assert len(heard) == 4  # reused markets count as played
        assert run.success and len(double.requests) == calls
        with store.engine.connect() as connection:
            assert len(connection.execute(select(table_of(EvaluationPlay))).all()) == 12
    store.dispose()


def test_the_gate_blocks_a_checkpoint_whose_responses_stop_parsing(tmp_path):
    url = f"sqlite:///{tmp_path / 'store.db'}"
    store = with_checkpoint(url)
    with policy_double("babble") as double:
        settings = settings_for(tmp_path, url, double.base_url, GATE_MIN_PNL_DELTA=-1e9)
        run, checks, materialized = promote(settings)
    assert materialized == {"checkpoint_evaluation"}  # deployed_model never ran
    assert [c.passed for c in checks] == [False]
    assert "unparseable responses rose from 0.0% to 100.0%" in checks[0].description
    row = EvaluationRecords(store).model("babylon-mmo@2")
    assert row.status == "rejected" and row.deployedAt is None
    assert not Path(settings.SERVING_FILE).exists()
    with pytest.raises(DeployError, match="rejected.*unparseable responses rose"):
        deploy_model(store, DeployOptions.from_settings(settings), "babylon-mmo@2")
    store.dispose()


def test_the_gate_blocks_when_the_interval_does_not_clear_the_threshold(tmp_path):
    url = f"sqlite:///{tmp_path / 'store.db'}"
    store = with_checkpoint(url)
    with policy_double("hold") as double:  # the checkpoint plays exactly as the base: every difference is 0
        settings = settings_for(tmp_path, url, double.base_url)
        run, checks, materialized = promote(settings)
    assert materialized == {"checkpoint_evaluation"} and [c.passed for c in checks] == [False]
    assert "lower bound not above +0.00" in checks[0].description
    assert EvaluationRecords(store).model("babylon-mmo@2").status == "rejected"
    store.dispose()


def test_deploy_and_rollback_update_trained_models_and_the_serving_file(database_url, tmp_path):
    store = with_checkpoint(database_url, "babylon-mmo@1")
    records = TrainingRecords(store)
    records.add_checkpoint(
        model_version="babylon-mmo@2",
        base_model=BASE,
        batch_id="batch-1",
        storage_path="/nowhere",
        avg_reward=0.5,
        wandb_run_id=None,
    )
    evaluations = EvaluationRecords(store)
    evaluations.set_gate_status("babylon-mmo@1", True)
    evaluations.set_gate_status("babylon-mmo@2", True)
    options = DeployOptions(serving_file=tmp_path / "serving.json", policy_api_base="http://127.0.0.1:9/v1")

    def statuses() -> dict[str, str]:
        with store.engine.connect() as connection:
            return dict(
                connection.execute(select(table_of(TrainedModel).c.modelId, table_of(TrainedModel).c.status)).all()
            )

    def serving() -> str:
        return json.loads(options.serving_file.read_text())["version"]

    with pytest.raises(DeployError, match="nothing to roll back to"):
        rollback(store, options)
    first = deploy_model(store, options, "babylon-mmo@1")
    assert first.previous is None and statuses() == {"babylon-mmo@1": "deployed", "babylon-mmo@2": "ready"}
    second = deploy_model(store, options, "babylon-mmo@2")
    assert second.previous == "babylon-mmo@1" and serving() == "babylon-mmo@2"
    assert statuses() == {"babylon-mmo@1": "archived", "babylon-mmo@2": "deployed"}
    back = rollback(store, options)
    assert back.model_id == "babylon-mmo@1" and back.previous == "babylon-mmo@2" and serving() == "babylon-mmo@1"
    assert statuses() == {"babylon-mmo@1": "deployed", "babylon-mmo@2": "archived"}
    assert evaluations.rollback_target().modelId == "babylon-mmo@2"
    assert back.agent_settings(8787) == {
        "AGENT_MODEL": "openai/babylon-mmo@1",
        "AGENT_API_BASE": "http://127.0.0.1:8787/v1",
    }
    store.dispose()


def test_only_a_gated_model_is_deployed_unless_forced(tmp_path):
    store = with_checkpoint(f"sqlite:///{tmp_path / 'store.db'}")
    options = DeployOptions(serving_file=tmp_path / "serving.json", policy_api_base="http://127.0.0.1:9/v1")
    with pytest.raises(DeployError, match="'trained', not ready"):
        deploy_model(store, options, "babylon-mmo@2")
    assert not options.serving_file.exists()
    with pytest.raises(StoreError, match="no trained model 'babylon-mmo@9'"):
        deploy_model(store, options, "babylon-mmo@9")
    assert deploy_model(store, options, "babylon-mmo@2", force=True).model_id == "babylon-mmo@2"
    store.dispose()


def test_the_promotion_sensor_requests_the_newest_checkpoint_once(tmp_path):
    from dagster import AssetMaterialization, DagsterRunStatus, SensorResult, SkipReason
    from dagster._core.storage.dagster_run import DagsterRun

    from babylon_assets.sensors import evaluate_promotion_sensor

    with DagsterInstance.ephemeral() as instance:
        assert isinstance(evaluate_promotion_sensor(instance, None), SkipReason)
        for version in ("babylon-mmo@1", "babylon-mmo@2"):
            instance.report_runless_asset_event(
                AssetMaterialization("trained_checkpoint", metadata={"model_version": version})
            )
        first = evaluate_promotion_sensor(instance, None)
        assert isinstance(first, SensorResult) and len(first.run_requests) == 1
        assert first.run_requests[0].tags["babylon/model_version"] == "babylon-mmo@2"  # the newest only
        again = evaluate_promotion_sensor(instance, first.cursor)
        assert isinstance(again, SkipReason) and "no new checkpoint" in again.skip_message

        # a training run that made no checkpoint moves the cursor without a request
        instance.report_runless_asset_event(AssetMaterialization("trained_checkpoint", metadata={"model_version": ""}))
        empty = evaluate_promotion_sensor(instance, first.cursor)
        assert isinstance(empty, SensorResult) and not empty.run_requests and empty.cursor != first.cursor

        # nothing while a promotion run is in flight; the checkpoint waits for the next tick
        instance.report_runless_asset_event(
            AssetMaterialization("trained_checkpoint", metadata={"model_version": "babylon-mmo@3"})
        )
        instance.add_run(DagsterRun(job_name="promotion_job", run_id="r" * 32, status=DagsterRunStatus.STARTED))
        waiting = evaluate_promotion_sensor(instance, empty.cursor)
        assert isinstance(waiting, SkipReason) and "babylon-mmo@3 waits" in waiting.skip_message


def test_the_promotion_sensor_skips_with_the_reason_while_no_policy_can_be_served(tmp_path, monkeypatch):
    from dagster import AssetMaterialization, SensorResult, SkipReason, build_sensor_context

    from babylon_assets.llm import local_server
    from babylon_assets.promotion.evaluation import why_no_policy_server
    from babylon_assets.sensors import evaluate_promotion_sensor, promotion_sensor

    monkeypatch.setattr(local_server, "server_binary", lambda version=None: tmp_path / "not-built" / "llama-server")
    reason = why_no_policy_server(None)
    assert reason is not None and "make llm-build" in reason
    assert why_no_policy_server("http://127.0.0.1:9/v1") is None  # a remote server needs nothing local
    with DagsterInstance.ephemeral() as instance:
        instance.report_runless_asset_event(
            AssetMaterialization("trained_checkpoint", metadata={"model_version": "babylon-mmo@1"})
        )
        with build_sensor_context(instance=instance) as context:
            skipped = promotion_sensor(context)
        assert isinstance(skipped, SkipReason) and "babylon-mmo@1 waits: llama-server is not built" in str(
            skipped.skip_message
        )
        # once a server can be had, the same checkpoint is requested (the skip kept the cursor)
        ready = evaluate_promotion_sensor(instance, None, no_server=None)
        assert isinstance(ready, SensorResult) and len(ready.run_requests) == 1
