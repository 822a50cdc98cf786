"""One full cycle of the live loop on the tiny model, with the sensors ticked by hand: live play through the
gateway -> window sensor -> score -> training sensor -> train -> promotion sensor -> evaluate -> gate ->
deploy -> the next hour is played by the deployed checkpoint; then the history report.

Before anything is deployed the agents' model is the OpenAI-compatible TEST DOUBLE (AGENT_MODEL), which
trades by archetype so the rewards of a window differ; after the deploy, the tiny model with its adapter on
llama.cpp answers (nonsense, parsed as HOLD: a random model)."""

import json
import re
from datetime import timedelta

import pytest
from dagster import DagsterInstance, SensorResult
from sqlalchemy import select

from babylon_assets.core.window_time import utcnow, window_id_of, window_start
from babylon_assets.db.evaluation_records import EvaluationRecords
from babylon_assets.db.schema import LlmCallLog, table_of
from babylon_assets.db.store import Store
from babylon_assets.definitions import build_definitions
from babylon_assets.gateway.server import free_port
from babylon_assets.llm import local_server
from babylon_assets.orchestration.pipeline import materialize_promotion, materialize_training, materialize_windows
from babylon_assets.play.live import LivePlan, platform_now, run_live
from babylon_assets.promotion.report import write_report
from babylon_assets.resources.rules import WindowRulesResource
from babylon_assets.sensors import evaluate_promotion_sensor, evaluate_training_sensor, evaluate_window_sensor
from babylon_assets.settings import Settings
from tests.doubles.openai_compatible import OpenAICompatibleTestDouble, ScriptedReply

TICKER = re.compile(r"^\s+([A-Z]{2,6}) \$", re.M)


@pytest.fixture(autouse=True)
def offline_training(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests train on scripted play, which is not the policy's own: the offline path (ON_POLICY=false)."""
    monkeypatch.setenv("ON_POLICY", "false")


def trader_by_archetype(request: dict) -> ScriptedReply:
    prompt = request["messages"][-1]["content"]
    ticker = TICKER.search(prompt).group(1)
    identity = prompt[prompt.index("You are ") :]  # who the agent is follows the market in its observation
    if "decision 1 of" in prompt and ("momentum" in identity or "aggressive" in identity):
        return ScriptedReply(json.dumps({"action": "OPEN_LONG", "ticker": ticker, "amount": 3000, "leverage": 3}))
    if "decision 1 of" in prompt and "contrarian" in identity:
        return ScriptedReply(json.dumps({"action": "OPEN_SHORT", "ticker": ticker, "amount": 3000, "leverage": 3}))
    return ScriptedReply('{"action": "HOLD", "reasoning": "wait"}')


def test_one_full_cycle_of_the_live_loop_on_the_tiny_model(tmp_path, tiny_model, llama_server):
    url = f"sqlite:///{tmp_path / 'store.db'}"
    store = Store(url)
    store.upgrade()
    start = window_start(utcnow()) - timedelta(hours=8)
    serving = tmp_path / "serving" / "serving.json"
    with OpenAICompatibleTestDouble(trader_by_archetype) as double:
        settings = Settings(
            DATABASE_URL=url,
            BASE_MODEL=str(tiny_model),
            AGENT_MODEL="openai/trader-double",
            AGENT_API_BASE=double.base_url,
            SERVING_FILE=str(serving),
            LIVE_CLOCK_FILE=str(tmp_path / "clock.json"),
            LOCAL_LLM_PORT=free_port(),
            ART_PATH=str(tmp_path / ".art"),
            WANDB_MODE="disabled",
            ITERATIONS=1,
            LEARNING_RATE=1e-3,
            MAX_SEQUENCE_TOKENS=256,
            EVAL_SEEDS="3",
            EVAL_WINDOWS=2,  # two markets: the bootstrap resamples markets, and one gives no interval
            EVAL_AGENTS=2,
            EVAL_DURATION_MINUTES=2,
            EVAL_MAX_TOKENS=16,
            EVAL_BOOTSTRAP_RESAMPLES=200,
            # a random model answers nonsense for both policies: the gate is opened so the deploy runs
            GATE_MIN_PNL_DELTA=-1e9,
            GATE_MAX_UNPARSEABLE_RISE=1.0,
        )
        defs = build_definitions(settings)
        rules = WindowRulesResource.from_settings(Settings(LOOKBACK_HOURS=168))
        plan = LivePlan(
            agents=5, llm=True, window_seconds=0.2, start=start, windows=3, duration_minutes=5, max_tokens=64
        )
        local_llm_folder = serving.parent / "llm"
        try:
            with DagsterInstance.ephemeral() as instance:
                # 1. three simulated hours of live play through the gateway, by the double (nothing deployed yet)
                played = run_live(store, settings, plan)
                assert [w.window_id for w in played] == [window_id_of(start + timedelta(hours=i)) for i in range(3)]
                assert all(w.models == ["trader-double"] and w.decisions == 25 for w in played), played
                now = platform_now(settings.LIVE_CLOCK_FILE)
                assert now == start + timedelta(hours=3)  # the published simulated clock

                # 2. the window sensor requests the closed hours; they are scored
                tick = evaluate_window_sensor(store, rules, None, now, settings.PARTITION_START)
                assert isinstance(tick, SensorResult)
                requested = sorted(
                    {
                        w
                        for r in tick.run_requests
                        for w in _range(
                            r.tags["dagster/asset_partition_range_start"], r.tags["dagster/asset_partition_range_end"]
                        )
                    }
                )
                assert requested == [w.window_id for w in played]
                assert all(run.success for run in materialize_windows(defs, requested, instance))

                # 3. the training sensor launches training; a checkpoint is trained on the tiny model
                launch = evaluate_training_sensor(store, instance, rules, None, now, new_before_retrain=6)
                assert isinstance(launch, SensorResult) and launch.run_requests
                assert materialize_training(defs, instance).success

                # 4. the promotion sensor evaluates it on llama.cpp; the gate passes it; it is deployed
                promote = evaluate_promotion_sensor(instance, None)
                assert isinstance(promote, SensorResult)
                assert promote.run_requests[0].tags["babylon/model_version"] == "babylon-mmo@1"
                run = materialize_promotion(defs, instance)
                assert run.evaluated and run.deployed
            assert EvaluationRecords(store).model("babylon-mmo@1").status == "deployed"
            assert json.loads(serving.read_text())["version"] == "babylon-mmo@1"

            # 5. the next hour is played by the deployed checkpoint, recorded with its version
            (after,) = run_live(
                store,
                settings,
                LivePlan(
                    agents=5,
                    llm=True,
                    window_seconds=0.2,
                    start=start + timedelta(hours=3),
                    windows=1,
                    duration_minutes=5,
                    max_tokens=16,
                ),
            )
            assert after.models == ["babylon-mmo@1"]
            with store.engine.connect() as connection:
                versions = {
                    json.loads(m)["modelVersion"]
                    for m in connection.execute(
                        select(table_of(LlmCallLog).c.metadata).where(
                            table_of(LlmCallLog).c.trajectoryId.like(f"%-{after.window_id}")
                        )
                    ).scalars()
                }
            assert versions == {"babylon-mmo@1"}
        finally:
            local_server.stop(local_llm_folder)

    # 6. the history report shows the checkpoint, its evaluation and the windows that trained it
    path, count = write_report(store, tmp_path / "report.html", model_name="babylon-mmo")
    page = path.read_text()
    assert count == 1 and "babylon-mmo@1" in page and "deployed" in page
    assert any(w.window_id in page for w in played) and "<svg" in page
    store.dispose()


def _range(first: str, last: str) -> list[str]:
    from babylon_assets.core.window_time import parse_window_id

    hours = int((parse_window_id(last) - parse_window_id(first)).total_seconds() // 3600)
    return [window_id_of(parse_window_id(first) + timedelta(hours=i)) for i in range(hours + 1)]
