"""RULER judge throughput against a test double with a fixed latency, and the calls of a warm re-run.

    .venv/bin/python bench/judge.py [--windows 48] [--latency 0.2]

48 simulated windows (one group of 6 each) are scored by the `ruler` judge (pinned mode) against the
OpenAI-compatible TEST DOUBLE of the test suite, which answers every request after --latency seconds.
After one warm-up call, each concurrency (1, 4, 16) scores all groups from scratch; throughput is given
as a fraction of ideal (windows x latency / concurrency). Goal: >= 0.8 at 16. Then the same groups are
scored again with the store as cache: goal 0 calls.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import re
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from babylon_assets.core.eligibility import EligibilityRules  # noqa: E402
from babylon_assets.core.judging import JudgeGroup  # noqa: E402
from babylon_assets.db.store import Store  # noqa: E402
from babylon_assets.db.window_records import WindowRecords  # noqa: E402
from babylon_assets.judges.ruler import RulerJudge  # noqa: E402
from babylon_assets.play.simulator import SimulationPlan, simulate  # noqa: E402
from babylon_assets.resources.judge import JudgeResource  # noqa: E402
from babylon_assets.settings import Settings  # noqa: E402
from tests.doubles.openai_compatible import ScriptedReply, serve_until_stopped  # noqa: E402

START = datetime(2025, 1, 6, tzinfo=UTC)
LABEL = re.compile(r'<trajectory id=\\?"(\d+)\\?">')


class _Responder:
    def __init__(self, latency: float) -> None:
        self.latency = latency

    def __call__(self, request: dict) -> ScriptedReply:
        labels = LABEL.findall(request["messages"][-1]["content"])
        scores = [{"trajectory_id": label, "explanation": "ok", "score": int(label) / 10} for label in labels]
        return ScriptedReply(json.dumps({"scores": scores}), delay_s=self.latency)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--windows", type=int, default=48)
    parser.add_argument("--latency", type=float, default=0.2)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        store = Store(f"sqlite:///{Path(tmp) / 'judge.db'}", clock=lambda: START + timedelta(days=5))
        store.upgrade()
        summary = simulate(
            store,
            SimulationPlan(agents=6, windows=args.windows, duration_minutes=6, seed=5, start=START),
            now=START + timedelta(days=5),
        )
        groups = []
        for window in summary.windows:
            read = store.read_window(window.window_id, EligibilityRules(min_actions=5, min_agents=5))
            groups.append(
                JudgeGroup(
                    f"{window.window_id}#g1", window.window_id, read.eligible, store.window_outcomes(window.window_id)
                )
            )
        urls: multiprocessing.Queue = multiprocessing.Queue()  # type: ignore[type-arg]
        stop = multiprocessing.Event()
        # The double runs in a process of its own, so its HTTP work does not share the judge's interpreter.
        server = multiprocessing.Process(
            target=serve_until_stopped, args=(_Responder(args.latency), urls, stop), daemon=True
        )
        server.start()
        base_url = urls.get(timeout=30)
        try:

            def judge(concurrency: int, cache: WindowRecords | None = None) -> RulerJudge:
                settings = Settings(
                    JUDGE_MODEL="openai/judge-double",
                    JUDGE_API_BASE=base_url,
                    JUDGE_MODE="pinned",
                    JUDGE_MAX_CONCURRENCY=concurrency,
                    JUDGE_TIMEOUT_SECONDS=30,
                )
                return RulerJudge(JudgeResource.from_settings(settings).ruler_config(), cache=cache)

            asyncio.run(judge(1).score(groups[:1]))  # warm-up: imports, litellm's first client
            print(f"{len(groups)} windows, one group of 6 each, {args.latency * 1000:.0f} ms per call")
            for concurrency in (1, 4, 16):
                started = time.perf_counter()
                result = asyncio.run(judge(concurrency).score(groups))
                elapsed = time.perf_counter() - started
                assert not result.failures, result.failures
                ideal = len(groups) * args.latency / concurrency
                print(
                    f"  concurrency {concurrency:>2}: {elapsed:6.2f} s, ideal {ideal:5.2f} s, "
                    f"throughput {ideal / elapsed:.2f} of ideal"
                )
            asyncio.run(judge(16, cache=WindowRecords(store)).score(groups))
            warm = judge(16, cache=WindowRecords(store))
            result = asyncio.run(warm.score(groups))
            print(
                f"  warm re-run with the cache: {warm.stats.sent_groups} calls "
                f"({warm.stats.cache_hits} groups from the cache; goal 0 calls)"
            )
            assert len(result.scores) == sum(len(g.members) for g in groups)
        finally:
            stop.set()
            server.join(timeout=10)
        store.dispose()


if __name__ == "__main__":
    main()
