"""A week's backfill as Dagster runs against the same core functions called directly, and the window
sensor's tick time over a large store.

    .venv/bin/python bench/backfill.py [--agents 8] [--sensor-windows 10000] [--sensor-rows 200000]

1. Backfill: 168 simulated windows (8 agents, 10 decisions each, outcome judge), twice on identical
   stores: once as `window_graph` runs on a Dagster instance on disk, made from the project's dagster.yaml
   as `babylon backfill` makes it (ranged runs, checks included), once by calling the store and core
   functions the assets call, in a plain loop. Goal:
   Dagster within 3x of direct. Dagster runs twice: the week in one run (the backfill policy) and in 7
   runs of 24 windows (how the sensor works through history).
2. Sensor: a store with --sensor-rows trajectories over --sensor-windows windows, all closed; the time of
   a first tick (empty cursor: bounded requests) and of a steady tick (everything already requested).
   Goal: under 1 s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from dagster import DagsterInstance

from babylon_assets.core.dropout import assign_groups, dropout_rate
from babylon_assets.core.judging import JudgeGroup, OutcomeJudge, validate_result
from babylon_assets.core.ranking import rank_members
from babylon_assets.core.sensing import rows_fingerprint
from babylon_assets.core.window_time import window_id_of
from babylon_assets.db.engine import naive_utc
from babylon_assets.db.play_records import PlayRecords
from babylon_assets.db.schema import MarketOutcome, Trajectory, table_of
from babylon_assets.db.store import Store
from babylon_assets.db.window_records import AgentWindowScore, WindowRecords
from babylon_assets.definitions import build_definitions
from babylon_assets.orchestration.instance import prepare_dagster_home
from babylon_assets.orchestration.pipeline import materialize_windows
from babylon_assets.play.simulator import SimulationPlan, simulate
from babylon_assets.resources.rules import WindowRulesResource
from babylon_assets.sensors import evaluate_window_sensor
from babylon_assets.settings import Settings

WEEK_START = datetime(2025, 1, 6, tzinfo=UTC)
NOW = WEEK_START + timedelta(days=8)
RULES = WindowRulesResource.from_settings(Settings())


def simulated_week(path: Path, agents: int) -> tuple[Store, list[str]]:
    store = Store(f"sqlite:///{path}", clock=lambda: NOW)
    store.upgrade()
    summary = simulate(
        store, SimulationPlan(agents=agents, windows=168, duration_minutes=10, seed=11, start=WEEK_START), now=NOW
    )
    return store, [w.window_id for w in summary.windows]


def direct_backfill(store: Store, window_ids: list[str]) -> int:
    """The work of the four window assets, through the same store and core calls, without Dagster."""
    rules = RULES.eligibility()
    judge = OutcomeJudge()
    scored = 0
    for window_id in window_ids:
        read = store.read_window(window_id, rules)
        PlayRecords(store).record_quarantine(read.quarantined)
        summary = read.summary()
        WindowRecords(store).save_window_state(summary, rules, WindowRecords(store).window_fingerprint(window_id))
        outcomes = store.window_outcomes(window_id)
        WindowRecords(store).save_verdicts("outcomes_present", [(window_id, outcomes.recorded, "")], None)
        read = store.read_window(window_id, rules)
        total = WindowRecords(store).eligible_in_lookback(window_id, RULES.lookback_hours, rules)
        rate = dropout_rate(total, RULES.target_trajectories, RULES.max_dropout)
        by_id = {aw.agent_window_id: aw for aw in read.eligible}
        memberships = assign_groups(
            window_id, list(by_id), rate=rate, max_per_group=RULES.max_per_group, ready=summary.is_ready(rules)
        )
        WindowRecords(store).replace_group_members(
            window_id,
            [
                {
                    "agent_window_id": m.agent_window_id,
                    "agent_id": by_id[m.agent_window_id].agent_id,
                    "trajectory_ids_json": json.dumps(by_id[m.agent_window_id].trajectory_ids),
                    "kept": m.kept,
                    "reason": m.reason,
                    "group_id": m.group_id,
                    "dropout_rate": rate,
                    "dropout_draw": m.draw,
                    "final_pnl": by_id[m.agent_window_id].final_pnl,
                }
                for m in memberships
            ],
        )
        grouped: dict[str, list[str]] = {}
        for m in memberships:
            if m.kept and m.group_id:
                grouped.setdefault(m.group_id, []).append(m.agent_window_id)
        read = store.read_window(window_id, rules)
        by_id = {aw.agent_window_id: aw for aw in read.eligible}
        groups = [JudgeGroup(g, window_id, [by_id[i] for i in ids], outcomes) for g, ids in sorted(grouped.items())]
        result = asyncio.run(judge.score(groups))
        validate_result(groups, result)
        judged = []
        for group in groups:
            ranks = {
                r.member: (r.rank, r.normalized)
                for r in rank_members(
                    {aw.agent_window_id: result.scores[aw.agent_window_id].score for aw in group.members}
                )
            }
            for aw in group.members:
                rank, normalized = ranks[aw.agent_window_id]
                verdict = result.scores[aw.agent_window_id]
                judged.append(
                    (
                        AgentWindowScore(
                            aw.agent_window_id, group.group_id, verdict.score, rank, normalized, verdict.reasoning
                        ),
                        aw.trajectory_ids,
                    )
                )
        WindowRecords(store).record_judgments(window_id, judge.name, judge.version, {"judge": judge.name}, judged)
        scored += len(judged)
    return scored


def dagster_backfill(store: Store, window_ids: list[str], home: Path, per_run: int) -> int:
    url = store.target.url.render_as_string(hide_password=False)
    defs = build_definitions(Settings(DATABASE_URL=url))
    # The instance as `babylon backfill` gets it: the project's dagster.yaml copied into DAGSTER_HOME.
    prepare_dagster_home(Settings(DAGSTER_HOME=str(home)), environ={})
    with DagsterInstance.get() as instance:
        runs = materialize_windows(defs, window_ids, instance, max_per_run=per_run)
        assert all(run.success for run in runs), runs
        print(
            f"  dagster: {len(runs)} runs of {', '.join(str(r.windows) for r in runs)} windows "
            f"({type(instance.event_log_storage).__name__})"
        )
    return sum(1 for w in window_ids for m in WindowRecords(store).group_members(w) if m.score is not None)


# A trajectory's one closed step: the shape the sensor benches fill stores with (their rows are counted, not read).
ONE_STEP = json.dumps(
    [
        {
            "stepNumber": 0,
            "timestamp": 0,
            "environmentState": {"agentBalance": 1.0, "agentPnL": 0.0, "openPositions": 0},
            "llmCalls": [],
            "action": {"actionType": "HOLD", "success": True},
            "reward": 0.0,
        }
    ]
)


def one_step_row(window_id: str, n: int, at: datetime) -> dict[str, object]:
    """A minimal trajectory row of a window: agent `a<n>`, one HOLD step at `at` (naive UTC)."""
    return {
        "id": f"r{window_id}-{n}",
        "trajectoryId": f"t{window_id}-{n}",
        "agentId": f"a{n}",
        "startTime": at,
        "endTime": at,
        "durationMs": 0,
        "windowId": window_id,
        "stepsJson": ONE_STEP,
        "rewardComponentsJson": "{}",
        "metricsJson": "{}",
        "metadataJson": "{}",
        "totalReward": 0.0,
        "episodeLength": 1,
        "finalStatus": "completed",
        "updatedAt": at,
    }


def sensor_store(path: Path, windows: int, rows: int) -> Store:
    store = Store(f"sqlite:///{path}", clock=lambda: NOW)
    store.upgrade()
    first = NOW - timedelta(hours=windows + 2)
    per_window = rows // windows
    batch: list[dict[str, object]] = []
    outcomes: list[dict[str, object]] = []
    with store.engine.begin() as connection:
        for w in range(windows):
            start = first + timedelta(hours=w)
            window_id = window_id_of(start)
            outcomes.append(
                {"id": f"o{w}", "windowId": window_id, "stockTicker": "NVDX", "startPrice": 1, "endPrice": 1}
            )
            for n in range(per_window):
                batch.append(one_step_row(window_id, n, naive_utc(start + timedelta(minutes=n % 60))))
            if len(batch) >= 20_000:
                connection.execute(table_of(Trajectory).insert(), batch)
                batch.clear()
        if batch:
            connection.execute(table_of(Trajectory).insert(), batch)
        connection.execute(table_of(MarketOutcome).insert(), outcomes)
    return store


def timed_tick(store: Store, cursor: str | None) -> tuple[float, object]:
    started = time.perf_counter()
    result = evaluate_window_sensor(store, RULES, cursor, NOW, "2020-01-01T00:00")
    return time.perf_counter() - started, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--agents", type=int, default=8)
    parser.add_argument("--sensor-windows", type=int, default=10_000)
    parser.add_argument("--sensor-rows", type=int, default=200_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        print(f"1. A week's backfill: 168 windows x {args.agents} agents, outcome judge, SQLite")
        direct_store, windows = simulated_week(folder / "direct.db", args.agents)
        started = time.perf_counter()
        direct_scored = direct_backfill(direct_store, windows)
        direct_s = time.perf_counter() - started
        print(f"  direct : {direct_s:6.2f} s  ({direct_scored} agent-windows scored)")
        for per_run, label in (
            (168, "a week in one run: the backfill policy, babylon backfill"),
            (24, "7 runs of 24: as the sensor chunks history"),
        ):
            dagster_store, _ = simulated_week(folder / f"dagster-{per_run}.db", args.agents)
            started = time.perf_counter()
            dagster_scored = dagster_backfill(dagster_store, windows, folder / f"home-{per_run}", per_run)
            dagster_s = time.perf_counter() - started
            assert direct_scored == dagster_scored, (direct_scored, dagster_scored)
            ratio = dagster_s / direct_s
            print(
                f"  dagster: {dagster_s:6.2f} s  ({dagster_scored} scored; {label}) = {ratio:.2f}x direct "
                f"({'within' if ratio <= 3 else 'OUTSIDE'} the 3x goal)"
            )

        print(f"\n2. Window sensor over {args.sensor_windows:,} windows and {args.sensor_rows:,} trajectories (SQLite)")
        started = time.perf_counter()
        store = sensor_store(folder / "sensor.db", args.sensor_windows, args.sensor_rows)
        print(f"  built in {time.perf_counter() - started:.1f} s")
        first_s, first = timed_tick(store, None)
        requested = {w: rows_fingerprint(n) for w, n in store.window_row_counts("2020-01-01T00:00").items()}
        full_cursor = json.dumps({"v": 1, "requested": requested})
        steady_s, steady = timed_tick(store, full_cursor)
        best_first = min(first_s, timed_tick(store, None)[0])
        best_steady = min(steady_s, timed_tick(store, full_cursor)[0])
        print(f"  first tick : {best_first * 1000:7.1f} ms -> {len(first.run_requests)} ranged run requests")  # type: ignore[union-attr]
        print(f"  steady tick: {best_steady * 1000:7.1f} ms -> {type(steady).__name__}")
        print(f"  goal under 1 s: {'met' if max(best_first, best_steady) < 1 else 'NOT met'}")


if __name__ == "__main__":
    main()
