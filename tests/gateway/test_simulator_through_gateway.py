"""The simulator's LLM agents play through a running gateway on the embedded store, as the game's agents do."""

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

import uvicorn

from babylon_assets.core.eligibility import EligibilityRules
from babylon_assets.db.store import Store
from babylon_assets.gateway.app import Upstream, create_app
from babylon_assets.gateway.recording import GatewayRecorder
from babylon_assets.llm_agent import LlmEndpoint
from babylon_assets.simulate import SimulationPlan, simulate
from tests.conftest import NOW
from tests.doubles.openai_compatible import OpenAICompatibleTestDouble
from tests.gateway.test_gateway import wait_until

START = datetime(2025, 1, 15, 10, tzinfo=UTC)


@contextmanager
def running_gateway(store: Store, upstream: Upstream) -> Iterator[tuple[str, GatewayRecorder]]:
    """The gateway served by uvicorn on a free loopback port, in a thread of this process."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    recorder = GatewayRecorder(store, backoff_s=0.05)
    server = uvicorn.Server(uvicorn.Config(create_app(lambda: upstream, recorder), host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "the gateway did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}/v1", recorder
    finally:
        server.should_exit = True
        thread.join(timeout=20)


def test_simulated_llm_agents_play_through_the_gateway(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'sim.db'}", clock=lambda: NOW)
    store.upgrade()
    with OpenAICompatibleTestDouble(['{"action": "HOLD", "reasoning": "calm"}']) as double, \
            running_gateway(store, Upstream("openai/deployed", double.base_url, version="base@0")) as (url, recorder):
        endpoint = LlmEndpoint("openai/anything", url, via_gateway=True, retries=0)
        plan = SimulationPlan(agents=5, windows=1, duration_minutes=5, seed=7, start=START, llm=endpoint)
        simulate(store, plan, now=NOW)
        wait_until(lambda: recorder.counters.recorded == 25)
    read = store.read_window("2025-01-15T10:00", EligibilityRules(min_actions=5, min_agents=5))
    assert sorted(aw.trajectory_ids[0] for aw in read.eligible) == [
        f"gw-llm-agent-0{n}-{arch}-2025-01-15T10:00" for n, arch in
        enumerate(["conservative", "balanced", "aggressive", "momentum", "contrarian"], start=1)]
    assert all(aw.llm_decisions == 5 for aw in read.eligible)  # recorded once: by the gateway, not the simulator
    # the agents reported their simulated time and account: the steps carry them
    first = read.eligible[0].steps[0]
    assert first.timestamp == int(START.timestamp() * 1000) and first.environmentState.agentBalance == 10_000.0
    assert store.window_outcomes("2025-01-15T10:00").recorded
