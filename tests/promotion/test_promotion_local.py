"""Promotion on the tiny model served by llama.cpp (DESIGN 6): the checkpoint's adapter exported to GGUF,
both policies played through the gateway against local servers, the gate, and the deploy that restarts
the local server with the adapter and switches the gateway to it."""

import json
from pathlib import Path

import torch
from dagster import DagsterInstance
from peft import LoraConfig, get_peft_model
from sqlalchemy import select

from babylon_assets.db.evaluation_records import EvaluationRecords
from babylon_assets.db.schema import LlmCallLog, table_of
from babylon_assets.db.store import Store
from babylon_assets.db.training_records import TrainingRecords
from babylon_assets.definitions import build_definitions
from babylon_assets.gateway.app import Upstream
from babylon_assets.gateway.server import free_port, gateway_in_thread
from babylon_assets.gateway.serving import ServingFile
from babylon_assets.llm import local_server
from babylon_assets.orchestration.pipeline import materialize_promotion
from babylon_assets.settings import Settings
from babylon_assets.training.base_models import load_causal_lm


def adapter_checkpoint(base: Path, folder: Path) -> Path:
    """A LoRA checkpoint of the tiny model whose B matrices are not zero, so it changes the policy."""
    torch.manual_seed(0)
    model = get_peft_model(load_causal_lm(base), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.5)
    model.save_pretrained(folder)
    return folder


def test_the_tiny_model_is_evaluated_on_llama_cpp_and_deployed_with_its_adapter(tmp_path, tiny_model, llama_server):
    checkpoint = adapter_checkpoint(tiny_model, tmp_path / "checkpoints" / "0001")
    url = f"sqlite:///{tmp_path / 'store.db'}"
    store = Store(url)
    store.upgrade()
    TrainingRecords(store).add_checkpoint(
        model_version="babylon-mmo@1",
        base_model=str(tiny_model),
        batch_id="batch-1",
        storage_path=str(checkpoint),
        avg_reward=0.5,
        wandb_run_id=None,
    )
    port = free_port()
    # A random model answers nonsense for both policies: the gate's thresholds are opened so the deploy runs.
    settings = Settings(
        DATABASE_URL=url,
        BASE_MODEL=str(tiny_model),
        EVAL_SEEDS="3",
        EVAL_WINDOWS=2,  # two markets: the bootstrap resamples markets, and one gives no interval
        EVAL_AGENTS=2,
        EVAL_DURATION_MINUTES=2,
        EVAL_MAX_TOKENS=24,
        GATE_MIN_PNL_DELTA=-1e9,
        GATE_MAX_UNPARSEABLE_RISE=1.0,
        EVAL_BOOTSTRAP_RESAMPLES=200,
        LOCAL_LLM_PORT=port,
        SERVING_FILE=str(tmp_path / "serving" / "serving.json"),
        WANDB_DIR=str(tmp_path / "wandb"),
    )
    llm_folder = tmp_path / "serving" / "llm"
    try:
        with DagsterInstance.ephemeral() as instance:
            run = materialize_promotion(build_definitions(settings), instance)
        assert run.success
        row = EvaluationRecords(store).model("babylon-mmo@1")
        assert row.status == "deployed"
        assert row.evalMetrics["paired_pnl_difference"]["pairs"] == 4  # 2 markets x 2 seats
        assert row.evalMetrics["paired_pnl_difference"]["markets"] == 2
        assert row.evalMetrics["candidate"]["decisions"] == 8
        assert (checkpoint / "adapter.gguf").is_file()
        # the evaluation servers are gone; the deployed one serves the base GGUF with the adapter under its version
        assert local_server.status(tmp_path / "serving" / "eval" / "base") is None
        served = local_server.status(llm_folder)
        assert served is not None and served.healthy and served.port == port and served.alias == "babylon-mmo@1"
        assert [p.name for p in served.lora] == ["adapter.gguf"]
        serving = json.loads(Path(settings.SERVING_FILE).read_text())
        assert serving["model"] == "openai/babylon-mmo@1" and serving["api_base"] == served.base_url

        # the gateway reads the serving file: an agent's next call is answered by the deployed model and
        # recorded with its version
        upstream = ServingFile(Path(settings.SERVING_FILE), Upstream("openai/none"))
        import httpx

        with gateway_in_thread(store, upstream) as (gateway_url, recorder, key):
            answer = httpx.post(
                f"{gateway_url}/chat/completions",
                timeout=60,
                headers={"X-Babylon-Agent": "agent-x", "Authorization": f"Bearer {key}"},
                json={"messages": [{"role": "user", "content": "Hello"}], "max_tokens": 4},
            )
            assert answer.status_code == 200, answer.text
            assert answer.json()["model"] == "babylon-mmo@1"
            recorder.drain_from_thread()
        with store.engine.connect() as connection:
            metadata = connection.execute(
                select(table_of(LlmCallLog).c.metadata).where(table_of(LlmCallLog).c.trajectoryId.like("gw-agent-x-%"))
            ).scalar_one()
        assert json.loads(metadata)["modelVersion"] == "babylon-mmo@1"
    finally:
        local_server.stop(llm_folder)
        store.dispose()
