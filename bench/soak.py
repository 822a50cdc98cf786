"""A bounded soak of the gateway: 200 agents calling through it for 10 minutes while windows are scored beside it.

    .venv/bin/python bench/soak.py [--agents 200] [--seconds 600] [--pause 2.0] [--latency 0.05]

The upstream is an OpenAI-compatible TEST DOUBLE in its own process (a canned answer after --latency seconds); the
gateway runs in its own process recording into a SQLite store, authenticated with a game-server key; a third
process scores the store's simulated windows again and again (`babylon score`, the outcome judge) for the whole
soak. Each agent calls, waits --pause seconds, and calls again. Printed: the gateway process's RSS after warm-up
(a tenth of the soak) and at the end (goal: growth under 50 MB), calls answered against calls recorded (goal: none
lost), and the latency the gateway adds at p50 and p99 against the same agents calling the double directly for
the first tenth of the soak.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import psutil  # noqa: E402
from sqlalchemy import func, select  # noqa: E402

from babylon_assets.db.gateway_keys import GatewayKeyRecords  # noqa: E402
from babylon_assets.db.schema import LlmCallLog, table_of  # noqa: E402
from babylon_assets.db.store import Store  # noqa: E402
from babylon_assets.play.simulator import SimulationPlan, simulate  # noqa: E402
from bench.gateway import percentile, upstream_and_gateway  # noqa: E402


async def agents_calling(url: str, agents: int, seconds: float, pause: float, key: str | None) -> list[float]:
    """Each agent calls, pauses, calls again, until `seconds` pass; the latencies of the answered calls."""
    import aiohttp

    latencies: list[float] = []
    deadline = time.monotonic() + seconds
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

        async def agent(n: int) -> None:
            headers = {"X-Babylon-Agent": f"agent-{n:03d}", "Authorization": f"Bearer {key}"} if key else {}
            call = 0
            await asyncio.sleep(pause * n / agents)  # spread the agents over one pause
            while time.monotonic() < deadline:
                payload = {
                    "model": "deployed",
                    "max_tokens": 64,
                    "messages": [
                        {"role": "system", "content": f"You are agent {n}."},
                        {"role": "user", "content": f"Call {call}: NVDX $100.00."},
                    ],
                }
                started = time.perf_counter()
                async with session.post(f"{url}/chat/completions", json=payload, headers=headers) as response:
                    await response.read()
                    assert response.status == 200, await response.text()
                latencies.append(time.perf_counter() - started)
                call += 1
                await asyncio.sleep(pause)

        await asyncio.gather(*(agent(n) for n in range(agents)))
    return latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--agents", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=600.0)
    parser.add_argument("--pause", type=float, default=2.0)
    parser.add_argument("--latency", type=float, default=0.05)
    args = parser.parse_args()
    warm_up = args.seconds / 10
    with tempfile.TemporaryDirectory() as tmp:
        database_url = f"sqlite:///{Path(tmp) / 'soak.db'}"
        store = Store(database_url)
        store.upgrade()
        simulate(store, SimulationPlan(agents=8, windows=24, duration_minutes=10, seed=3), now=datetime.now(UTC))
        _, key = GatewayKeyRecords(store).create(agents=None, label="soak: the game server")
        with store.engine.connect() as connection:  # the simulated play's own calls are not the gateway's
            before = connection.execute(select(func.count()).select_from(table_of(LlmCallLog))).scalar_one()
        port = 18788
        with upstream_and_gateway(database_url, args.latency, port) as (upstream, gateway):
            through_url = f"http://127.0.0.1:{port}/v1"
            direct = asyncio.run(agents_calling(upstream, args.agents, warm_up, args.pause, None))
            env = {**os.environ, "DATABASE_URL": database_url, "DAGSTER_HOME": str(Path(tmp) / "home")}
            scorer = subprocess.Popen(
                ["bash", "-c", f"while true; do {sys.executable} -m babylon_assets.cli score >/dev/null 2>&1; done"],
                cwd=ROOT,
                env=env,
                start_new_session=True,
            )
            rss: dict[str, float] = {}

            async def soak() -> list[float]:
                async def sample() -> None:
                    await asyncio.sleep(warm_up)
                    rss["warm"] = psutil.Process(gateway.pid).memory_info().rss / 2**20

                sampler = asyncio.create_task(sample())
                latencies = await agents_calling(through_url, args.agents, args.seconds, args.pause, key)
                await sampler
                return latencies

            through = asyncio.run(soak())
            rss["end"] = psutil.Process(gateway.pid).memory_info().rss / 2**20
            os.killpg(scorer.pid, 15)
            scorer.wait(timeout=60)
            time.sleep(1.0)  # its child's last writes into DAGSTER_HOME
            deadline = time.monotonic() + 120
            while True:
                with store.engine.connect() as connection:
                    recorded = (
                        connection.execute(select(func.count()).select_from(table_of(LlmCallLog))).scalar_one() - before
                    )
                if recorded >= len(through) or time.monotonic() > deadline:
                    break
                time.sleep(0.5)
    print(f"{args.agents} agents, one call every {args.pause:g} s each, for {args.seconds:.0f} s; scoring beside it")
    print(
        f"gateway RSS: {rss['warm']:.0f} MB after warm-up, {rss['end']:.0f} MB at the end "
        f"(growth {rss['end'] - rss['warm']:+.0f} MB; goal under 50 MB)"
    )
    print(f"calls answered {len(through)}, recorded {recorded}, lost {len(through) - recorded} (goal 0)")
    for label, q in (("p50", 0.5), ("p99", 0.99)):
        added = (percentile(through, q) - percentile(direct, q)) * 1000
        print(
            f"{label}: direct {percentile(direct, q) * 1000:.1f} ms, through the gateway "
            f"{percentile(through, q) * 1000:.1f} ms, added {added:+.1f} ms"
        )


if __name__ == "__main__":
    main()
