"""The simulator's LLM agents play through a running gateway on the embedded store, as the game's agents do."""

from datetime import UTC, datetime

from babylon_assets.core.eligibility import EligibilityRules
from babylon_assets.db.store import Store
from babylon_assets.gateway.app import Upstream
from babylon_assets.gateway.server import gateway_in_thread
from babylon_assets.llm.agent import LlmEndpoint
from babylon_assets.play.simulator import SimulationPlan, simulate
from tests.conftest import NOW
from tests.doubles.openai_compatible import OpenAICompatibleTestDouble
from tests.gateway.test_gateway import wait_until

START = datetime(2025, 1, 15, 10, tzinfo=UTC)


def test_simulated_llm_agents_play_through_the_gateway(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'sim.db'}", clock=lambda: NOW)
    store.upgrade()
    with (
        OpenAICompatibleTestDouble(['{"action": "HOLD", "reasoning": "calm"}']) as double,
        gateway_in_thread(store, Upstream("openai/deployed", double.base_url, version="base@0")) as (
            url,
            recorder,
            key,
        ),
    ):
        endpoint = LlmEndpoint("openai/anything", url, api_key=key, via_gateway=True, retries=0)
        plan = SimulationPlan(agents=5, windows=1, duration_minutes=5, seed=7, start=START, llm=endpoint)
        simulate(store, plan, now=NOW)
        wait_until(lambda: recorder.counters.recorded == 25)
    read = store.read_window("2025-01-15T10:00", EligibilityRules(min_actions=5, min_agents=5))
    assert sorted(aw.trajectory_ids[0] for aw in read.eligible) == [
        f"gw-llm-agent-0{n}-{arch}-2025-01-15T10:00"
        for n, arch in enumerate(["conservative", "balanced", "aggressive", "momentum", "contrarian"], start=1)
    ]
    assert all(aw.llm_decisions == 5 for aw in read.eligible)  # recorded once: by the gateway, not the simulator
    # the agents reported their simulated time and account: the steps carry them
    first = read.eligible[0].steps[0]
    assert first.timestamp == int(START.timestamp() * 1000) and first.environmentState.agentBalance == 10_000.0
    assert store.window_outcomes("2025-01-15T10:00").recorded
