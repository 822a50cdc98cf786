"""Reading + parsing a week of trajectories through the store, against a bare SELECT + json.loads.

    .venv/bin/python bench/window_read.py [--rows 100000] [--steps 10] [--postgres URL]

Builds (once, cached under bench/.data/) a store with `--rows` game-shaped trajectories of `--steps`
steps spread over 168 hourly windows, then times, in the same process and on the same rows:
  baseline  SELECT of the store's columns for the week + json.loads of the four JSON columns
  store     Store.iter_lookback(168): the same rows streamed, parsed into typed steps, windows assigned
  report    Store.window_summaries(...): the store read plus stitching and eligibility counts
Each is run --repeat times (best kept, order alternated); peak Python memory is traced in a separate
pass. The goal is store/baseline within 1.5x.
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import time
import tracemalloc
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import text

from babylon_assets.core.eligibility import EligibilityRules
from babylon_assets.core.trajectory import TRAJECTORY_COLUMNS
from babylon_assets.core.window_time import lookback_window_ids, window_id_of
from babylon_assets.db.engine import naive_utc
from babylon_assets.db.store import Store

UNTIL = datetime(2025, 1, 22, 0, 0, tzinfo=UTC)
WEEK_START = UNTIL - timedelta(hours=168)
DATA = Path(__file__).parent / ".data"
SYSTEM_PROMPT = (
    "You are {agent}, a {style} trader in Babylon. You trade perpetual futures on fictional companies "
    "and yes/no prediction markets. Reply with one JSON object with action, ticker, size, reasoning."
)


def make_row(n: int, steps: int, rng: random.Random) -> dict:
    agent = f"agent-{n % 400}"
    start = WEEK_START + timedelta(seconds=rng.randrange(168 * 3600 - 1200))
    step_list = []
    pnl = 0.0
    for number in range(steps):
        pnl += rng.gauss(0, 25)
        price = 100 + rng.gauss(0, 5)
        step_list.append(
            {
                "stepNumber": number,
                "timestamp": int((start + timedelta(minutes=number)).timestamp() * 1000),
                "environmentState": {"agentBalance": 10_000 + pnl, "agentPnL": pnl, "openPositions": 1},
                "providerAccesses": [
                    {"providerName": "market", "data": {"NVDX": round(price, 2)}, "purpose": "prices"}
                ],
                "llmCalls": [
                    {
                        "model": "babylon-mmo",
                        "modelVersion": "babylon-mmo@3",
                        "systemPrompt": SYSTEM_PROMPT.format(agent=agent, style="balanced"),
                        "userPrompt": f"Minute {number}. NVDX ${price:.2f}, TSLR $41.20. "
                        f"Balance ${10_000 + pnl:,.2f}, P&L ${pnl:,.2f}. News: none.",
                        "response": json.dumps(
                            {"action": "BUY", "ticker": "NVDX", "size": 10, "reasoning": "momentum up"}
                        ),
                        "temperature": 0.7,
                        "maxTokens": 256,
                        "latencyMs": 420,
                        "purpose": "action",
                        "actionType": "BUY",
                    }
                ],
                "action": {
                    "actionType": "BUY",
                    "parameters": {"ticker": "NVDX", "size": 10},
                    "success": True,
                    "result": {"filled": round(price, 2)},
                },
                "reward": round(pnl / 1000, 4),
            }
        )
    end = start + timedelta(minutes=steps)
    return {
        "id": f"row-{n}",
        "trajectoryId": f"traj-{n}",
        "agentId": agent,
        "startTime": naive_utc(start),
        "endTime": naive_utc(end),
        "durationMs": steps * 60_000,
        "windowId": window_id_of(start),
        "windowHours": 1,
        "stepsJson": json.dumps(step_list),
        "rewardComponentsJson": json.dumps({"pnl": pnl}),
        "metricsJson": json.dumps({"episodeLength": steps, "finalStatus": "completed", "finalPnL": pnl}),
        "metadataJson": json.dumps({"archetype": "balanced"}),
        "totalReward": pnl / 1000,
        "episodeLength": steps,
        "finalStatus": "completed",
        "finalBalance": 10_000 + pnl,
        "finalPnL": pnl,
        "tradesExecuted": steps,
        "isTrainingData": True,
        "isEvaluation": False,
        "usedInTraining": False,
        "createdAt": naive_utc(end),
        "updatedAt": naive_utc(end),
    }


def fill(store: Store, rows: int, steps: int) -> None:
    rng = random.Random(42)
    table = store.engine.dialect.name
    chunk = 5_000
    started = time.perf_counter()
    with store.engine.begin() as connection:
        connection.execute(text("DELETE FROM trajectories"))
    for offset in range(0, rows, chunk):
        batch = [make_row(n, steps, rng) for n in range(offset, min(rows, offset + chunk))]
        with store.engine.begin() as connection:
            from babylon_assets.db.schema import Trajectory

            connection.execute(Trajectory.__table__.insert(), batch)
        print(f"  filled {min(rows, offset + chunk):,}/{rows:,} rows ({table})", end="\r", flush=True)
    print(f"  filled {rows:,} rows in {time.perf_counter() - started:.1f}s{' ' * 20}")


def count_rows(store: Store) -> int:
    with store.engine.connect() as connection:
        return connection.execute(text("SELECT count(*) FROM trajectories")).scalar_one()


def baseline_reader(store: Store) -> Callable[[], int]:
    """A bare SELECT of the same columns and rows, with json.loads of each JSON column."""
    columns = ", ".join(f'"{c}"' for c in TRAJECTORY_COLUMNS)
    window_ids = lookback_window_ids(168, UNTIL)
    lo, hi = naive_utc(WEEK_START), naive_utc(UNTIL)
    placeholders_sqlite = ", ".join("?" for _ in window_ids)
    json_columns = [
        TRAJECTORY_COLUMNS.index(c) for c in ("stepsJson", "rewardComponentsJson", "metricsJson", "metadataJson")
    ]

    def run() -> int:
        loads = json.loads
        total = 0
        raw = store.engine.raw_connection()
        try:
            cursor = raw.cursor()
            if store.engine.dialect.name == "sqlite":
                cursor.execute(
                    f'SELECT {columns} FROM trajectories WHERE "windowId" IN ({placeholders_sqlite}) '
                    'OR ("startTime" >= ? AND "startTime" < ?)',
                    [*window_ids, str(lo), str(hi)],
                )
            else:
                cursor.close()
                cursor = raw.cursor(name="baseline")  # server-side, streamed like the store's
                cursor.itersize = 1000
                cursor.execute(
                    f'SELECT {columns} FROM trajectories WHERE "windowId" = ANY(%s) '
                    'OR ("startTime" >= %s AND "startTime" < %s)',
                    (window_ids, lo, hi),
                )
            while batch := cursor.fetchmany(1000):
                for row in batch:
                    for index in json_columns:
                        loads(row[index])
                    total += 1
            cursor.close()
        finally:
            raw.close()
        return total

    return run


def timed(fn: Callable[[], int]) -> tuple[float, int]:
    gc.collect()
    started = time.perf_counter()
    result = fn()
    return time.perf_counter() - started, result


def peak_mb(fn: Callable[[], int]) -> float:
    gc.collect()
    tracemalloc.start()
    fn()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak / 1e6


def bench(store: Store, label: str, repeat: int) -> None:
    rules = EligibilityRules(min_actions=5, min_agents=5, min_ready_windows=3)
    contenders: dict[str, Callable[[], int]] = {
        "baseline": baseline_reader(store),
        "store": lambda: sum(1 for _ in store.iter_lookback(168, UNTIL)),
        "report": lambda: sum(s.rows for s in store.window_summaries(rules, 168, UNTIL)),
    }
    best: dict[str, float] = {}
    counts: dict[str, int] = {}
    for attempt in range(repeat):
        order = list(contenders) if attempt % 2 == 0 else list(reversed(contenders))
        for name in order:
            seconds, counts[name] = timed(contenders[name])
            best[name] = min(best.get(name, float("inf")), seconds)
    assert len(set(counts.values())) == 1, f"contenders read different rows: {counts}"
    peaks = {name: peak_mb(fn) for name, fn in contenders.items()}
    rows = counts["baseline"]
    print(f"\n{label}: {rows:,} rows of the week, best of {repeat}")
    print(f"  {'reader':<10}{'seconds':>10}{'rows/s':>12}{'vs baseline':>14}{'peak MB':>10}")
    for name in contenders:
        ratio = best[name] / best["baseline"]
        print(f"  {name:<10}{best[name]:>10.2f}{rows / best[name]:>12,.0f}{ratio:>13.2f}x{peaks[name]:>10.1f}")
    verdict = "within" if best["store"] / best["baseline"] <= 1.5 else "OUTSIDE"
    print(f"  store/baseline = {best['store'] / best['baseline']:.2f}x ({verdict} the 1.5x goal)")


def prepare(url: str, rows: int, steps: int) -> Store:
    store = Store(url, clock=lambda: UNTIL)
    store.upgrade()
    if count_rows(store) != rows:
        fill(store, rows, steps)
    return store


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--postgres", help="also run on this PostgreSQL database (it is filled)")
    args = parser.parse_args()
    DATA.mkdir(exist_ok=True)
    sqlite_path = DATA / f"window_read_{args.rows}x{args.steps}.db"
    store = prepare(f"sqlite:///{sqlite_path}", args.rows, args.steps)
    size = sqlite_path.stat().st_size / 1e6
    bench(store, f"SQLite ({size:,.0f} MB file)", args.repeat)
    store.dispose()
    if args.postgres:
        pg = prepare(args.postgres, args.rows, args.steps)
        bench(pg, "PostgreSQL", args.repeat)
        pg.dispose()


if __name__ == "__main__":
    main()
