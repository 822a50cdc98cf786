"""Against the real local model: SmolLM2-135M on llama.cpp's llama-server (built by `make llm-build`).

These assert validity, never values: a 135M judge gives valid but meaningless scores."""

import json
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from dagster import DagsterInstance
from sqlalchemy import select

from babylon_assets.db.schema import LlmCallLog
from babylon_assets.db.store import Store
from babylon_assets.db.window_records import WindowRecords
from babylon_assets.definitions import build_definitions
from babylon_assets.gateway.server import free_port
from babylon_assets.llm import local_server
from babylon_assets.llm.agent import LlmEndpoint
from babylon_assets.orchestration.pipeline import materialize_windows
from babylon_assets.play.simulator import SimulationPlan, simulate
from babylon_assets.settings import Settings
from tests.conftest import NOW
from tests.gateway.keys import AUTH, TEST_KEYS

START = datetime(2025, 1, 15, 10, tzinfo=UTC)


@pytest.fixture(scope="module")
def llm_url(tmp_path_factory, llama_server) -> Iterator[str]:
    """The local server on a free port for this module (llama_server skips off CI when it is not built)."""
    port = free_port()
    folder = tmp_path_factory.mktemp("llm")
    state = local_server.serve(folder, port=port)
    try:
        yield state.base_url
    finally:
        local_server.stop(folder)


def small_window(tmp_path, llm: LlmEndpoint | None = None, agents: int = 3) -> Store:
    store = Store(f"sqlite:///{tmp_path / 'local.db'}", clock=lambda: NOW)
    store.upgrade()
    plan = SimulationPlan(agents=agents, windows=1, duration_minutes=2, seed=7, start=START, llm=llm)
    simulate(store, plan, now=NOW)
    return store


def test_ruler_scores_a_window_with_the_local_judge(tmp_path, llm_url):
    store = small_window(tmp_path)
    url = store.target.url.render_as_string(hide_password=False)
    settings = Settings(
        DATABASE_URL=url,
        MIN_AGENTS=3,
        MIN_ACTIONS=2,
        JUDGE_MODEL="openai/smollm2",
        JUDGE_API_BASE=llm_url,
        JUDGE_MODE="pinned",
        JUDGE_RETRIES=3,
        JUDGE_TIMEOUT_SECONDS=300,
    )
    with DagsterInstance.ephemeral() as instance:
        (run,) = materialize_windows(build_definitions(settings), ["2025-01-15T10:00"], instance)
        assert run.success
    members = WindowRecords(store).group_members("2025-01-15T10:00")
    assert len(members) == 3 and all(m.kept for m in members)
    assert all(m.score is not None and 0.0 <= m.score <= 1.0 for m in members)
    assert {m.judge_version for m in members} == {"ruler:openai/smollm2:trading-v1:pinned"}
    verdicts = WindowRecords(store).verdicts("scores_valid", window_ids=["2025-01-15T10:00"])
    assert [v["passed"] for v in verdicts] == [True]
    store.dispose()


def test_an_llm_agent_plays_through_the_local_model_with_logprobs(tmp_path, llm_url):
    endpoint = LlmEndpoint("openai/smollm2", llm_url, max_tokens=96, timeout_s=120, retries=1)
    store = small_window(tmp_path, llm=endpoint, agents=2)
    with store.engine.connect() as connection:
        rows = connection.execute(
            select(
                LlmCallLog.__table__.c.metadata,
                LlmCallLog.__table__.c.response,
                LlmCallLog.__table__.c.completionTokens,
            )
        ).all()
    assert len(rows) == 4  # 2 agents x 2 decisions, every call recorded
    for metadata, response, completion_tokens in rows:
        data = json.loads(metadata)
        assert data["logprobs"], "the local server returns token logprobs and they are recorded"
        assert all(isinstance(lp["logprob"], float) and lp["logprob"] <= 0 for lp in data["logprobs"])
        assert completion_tokens and completion_tokens > 0
        assert isinstance(response, str)
    store.dispose()


def test_the_gateway_records_the_local_models_logprobs(tmp_path, llm_url):
    from starlette.testclient import TestClient

    from babylon_assets.gateway.app import AGENT_HEADER, Upstream, create_app
    from babylon_assets.gateway.recording import GatewayRecorder
    from tests.gateway.test_gateway import body, wait_until

    store = Store(f"sqlite:///{tmp_path / 'gw.db'}", clock=lambda: NOW)
    store.upgrade()
    recorder = GatewayRecorder(store, backoff_s=0.05)
    app = create_app(
        lambda: Upstream("openai/smollm2", llm_url, version="smollm2@base"), recorder, lambda: START, keys=TEST_KEYS
    )
    with TestClient(app, headers=AUTH) as client:
        response = client.post(
            "/v1/chat/completions", json={**body("agent-1", 0), "max_tokens": 24}, headers={AGENT_HEADER: "agent-1"}
        )
        assert response.status_code == 200
        assert response.json()["choices"][0]["logprobs"]["content"]  # the upstream's answer, unchanged
        wait_until(lambda: recorder.counters.recorded == 1, timeout_s=30)
    with store.engine.connect() as connection:
        (metadata,) = connection.execute(select(LlmCallLog.__table__.c.metadata)).scalars().all()
    data = json.loads(metadata)
    assert data["logprobs"] and data["modelVersion"] == "smollm2@base"
    store.dispose()


def test_a_build_step_reports_cmakes_percentages_and_keeps_its_log(tmp_path):
    import subprocess
    import sys

    from babylon_assets.llm.local_server import _run_logged

    script = "print('-- Configuring'); print('[ 12%] Building C object a.o'); print('[100%] Linking CXX executable')"
    heard: list[int] = []
    with open(tmp_path / "build.log", "wb") as log:
        _run_logged([sys.executable, "-c", script], log, heard.append)
    assert heard == [12, 100]
    assert b"[ 12%] Building C object a.o" in (tmp_path / "build.log").read_bytes()
    with pytest.raises(subprocess.CalledProcessError):
        _run_logged([sys.executable, "-c", "raise SystemExit(3)"], None)
