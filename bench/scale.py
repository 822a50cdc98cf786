"""The store and the orchestration at a game's scale, on PostgreSQL (issue 21, item 7), each against its bare
baseline in the same run, with the peak RSS of each (this process and its children: workers, their runs).

    .venv/bin/python bench/scale.py [--windows 10000] [--per-window 100] [--week-agents 8] [--skip-workers]

A fresh database on the local PostgreSQL server (BABYLON_BENCH_PG_URL, default postgres@127.0.0.1) holds
--windows x --per-window trajectories: the last week's 168 windows game-shaped (10 steps, LLM calls), the older
windows one step each. Then:

1. window sensor   a first tick (empty cursor) and a steady tick over every window, against a bare GROUP BY count
2. check-windows   the readiness report over the last week (`Store.window_summaries`), against a bare SELECT of
                   the week's rows + json.loads of their steps
3. one window      `Store.iter_window` (parsed, typed steps), against a bare SELECT + json.loads of that window
4. a week's backfill  168 simulated windows of --week-agents agents scored as 7 `window_graph` runs of 24, once
                   in-process, once submitted to two solo Celery workers on the cpu queue (RabbitMQ, Redis,
                   `dagster-daemon`). On 2 cores two workers cannot be faster than one process: this measures the
                   overhead of the distributed path, not a speed-up.

The databases, queues and Redis keys it makes are removed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("PYTHON_DOTENV_DISABLED", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import psycopg2  # noqa: E402
from sqlalchemy import text  # noqa: E402

from babylon_assets.core.window_time import window_id_of  # noqa: E402
from babylon_assets.db.engine import naive_utc  # noqa: E402
from babylon_assets.db.schema import MarketOutcome, Trajectory, table_of  # noqa: E402
from babylon_assets.db.store import Store  # noqa: E402
from bench.backfill import one_step_row  # noqa: E402
from bench.measure import PeakRss  # noqa: E402
from bench.window_read import make_row  # noqa: E402

ADMIN = os.environ.get("BABYLON_BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
AMQP_URL = os.environ.get("BABYLON_BENCH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")
REDIS_URL = os.environ.get("BABYLON_BENCH_REDIS_URL", "redis://127.0.0.1:6379/14")
NOW = datetime(2025, 1, 22, 0, 30, tzinfo=UTC)
WEEK_START = datetime(2025, 1, 15, 0, tzinfo=UTC)


def log(message: str) -> None:
    print(f"[{datetime.now(UTC):%H:%M:%S}] {message}", flush=True)


class Databases:
    """Databases made on the local server for this run, dropped at the end."""

    def __init__(self) -> None:
        self.names: list[str] = []
        self.admin = psycopg2.connect(ADMIN, connect_timeout=3)
        self.admin.autocommit = True
        dsn = psycopg2.extensions.parse_dsn(ADMIN)
        self.host, self.port, self.user = dsn.get("host", "127.0.0.1"), dsn.get("port", "5432"), dsn.get("user")

    def create(self, label: str) -> str:
        name = f"babylon_scale_{uuid.uuid4().hex[:8]}_{label}"
        with self.admin.cursor() as cursor:
            cursor.execute(f'CREATE DATABASE "{name}"')
        self.names.append(name)
        return name

    def url(self, name: str) -> str:
        return f"postgresql+psycopg2://{self.user}@{self.host}:{self.port}/{name}"

    def drop_all(self) -> None:
        with self.admin.cursor() as cursor:
            for name in self.names:
                cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        self.admin.close()


def fill(store: Store, windows: int, per_window: int) -> None:
    """--windows windows ending with the week before NOW: the week's rows game-shaped, the older ones one step."""
    rng = random.Random(42)
    first = WEEK_START - timedelta(hours=windows - 168)
    trajectories, outcomes = table_of(Trajectory), table_of(MarketOutcome)
    batch: list[dict] = []
    started = time.perf_counter()
    for w in range(windows):
        start = first + timedelta(hours=w)
        window_id = window_id_of(start)
        for n in range(per_window):
            if start >= WEEK_START:
                row = make_row(w * per_window + n, 10, rng)
                at = start + timedelta(minutes=n % 50)
                row |= {
                    "agentId": f"a{n}",
                    "windowId": window_id,
                    "startTime": naive_utc(at),
                    "endTime": naive_utc(at + timedelta(minutes=10)),
                }
            else:
                row = one_step_row(window_id, n, naive_utc(start + timedelta(minutes=n % 60)))
            batch.append(row)
        if len(batch) >= 20_000 or w == windows - 1:
            # Rows of two shapes: insert each shape on its own (executemany wants one set of keys).
            with store.engine.begin() as connection:
                for shape in {frozenset(r) for r in batch}:
                    connection.execute(trajectories.insert(), [r for r in batch if frozenset(r) == shape])
            batch.clear()
            print(f"  {(w + 1) * per_window:,} of {windows * per_window:,} rows", end="\r", flush=True)
    week = [window_id_of(WEEK_START + timedelta(hours=h)) for h in range(168)]
    with store.engine.begin() as connection:
        connection.execute(
            outcomes.insert(),
            [{"id": f"o{w}", "windowId": w, "stockTicker": "NVDX", "startPrice": 100, "endPrice": 101} for w in week],
        )
        connection.execute(text("ANALYZE trajectories"))
    log(f"filled {windows * per_window:,} rows in {time.perf_counter() - started:.0f} s")


def best_of(repeat: int, fn: Callable[[], object]) -> tuple[float, object]:
    best, value = float("inf"), None
    for _ in range(repeat):
        started = time.perf_counter()
        value = fn()
        best = min(best, time.perf_counter() - started)
    return best, value


def bare_steps(store: Store, where: str, params: dict) -> int:
    """The baseline read: the rows' stepsJson by a bare SELECT, each json.loads'ed; the steps counted."""
    with store.engine.connect() as connection:
        rows = connection.execute(text(f'SELECT "stepsJson" FROM trajectories WHERE {where}'), params)
        return sum(len(json.loads(steps)) for (steps,) in rows)


def store_reads(store: Store, rss: PeakRss, repeat: int) -> dict:
    from babylon_assets.core.sensing import rows_fingerprint
    from babylon_assets.resources.rules import WindowRulesResource
    from babylon_assets.sensors import evaluate_window_sensor
    from babylon_assets.settings import Settings

    rules = WindowRulesResource.from_settings(Settings())
    out: dict = {}

    def bare_counts() -> int:
        with store.engine.connect() as connection:
            return len(connection.execute(text('SELECT "windowId", count(*) FROM trajectories GROUP BY 1')).all())

    rss.phase = "sensor"
    baseline, windows = best_of(repeat, bare_counts)
    first, result = best_of(repeat, lambda: evaluate_window_sensor(store, rules, None, NOW, "2020-01-01T00:00"))
    requested = {w: rows_fingerprint(n) for w, n in store.window_row_counts("2020-01-01T00:00").items()}
    cursor = json.dumps({"v": 1, "requested": requested})
    steady, _ = best_of(repeat, lambda: evaluate_window_sensor(store, rules, cursor, NOW, "2020-01-01T00:00"))
    out["window_sensor"] = {
        "windows": windows,
        "baseline_group_by_s": round(baseline, 3),
        "first_tick_s": round(first, 3),
        "steady_tick_s": round(steady, 3),
        "first_over_baseline": round(first / baseline, 2),
        "steady_over_baseline": round(steady / baseline, 2),
        "peak_rss_gb": rss.peak("sensor"),
    }
    log(f"  sensor: {out['window_sensor']}")

    week_start, week_end = naive_utc(WEEK_START), naive_utc(WEEK_START + timedelta(hours=168))

    def bare_week() -> int:
        where = '"startTime" >= :a AND "startTime" < :b'
        return bare_steps(store, where, {"a": week_start, "b": week_end})

    rss.phase = "check-windows"
    baseline, _ = best_of(repeat, bare_week)
    report, summaries = best_of(repeat, lambda: store.window_summaries(rules.eligibility(), 168, NOW))
    out["check_windows_week"] = {
        "windows": len(summaries),  # type: ignore[arg-type]
        "baseline_select_json_s": round(baseline, 3),
        "report_s": round(report, 3),
        "report_over_baseline": round(report / baseline, 2),
        "peak_rss_gb": rss.peak("check-windows"),
    }
    log(f"  check-windows: {out['check_windows_week']}")

    window_id = window_id_of(WEEK_START + timedelta(hours=100))

    def bare_window() -> int:
        return bare_steps(store, '"windowId" = :w', {"w": window_id})

    rss.phase = "one window"
    baseline, _ = best_of(repeat, bare_window)
    read, rows = best_of(repeat, lambda: list(store.iter_window(window_id)))
    out["one_window_read"] = {
        "rows": len(rows),  # type: ignore[arg-type]
        "baseline_select_json_s": round(baseline, 4),
        "store_s": round(read, 4),
        "store_over_baseline": round(read / baseline, 2),
        "peak_rss_gb": rss.peak("one window"),
    }
    log(f"  one window: {out['one_window_read']}")
    return out


def simulated_week(databases: Databases, label: str, agents: int) -> tuple[str, list[str]]:
    from babylon_assets.play.simulator import SimulationPlan, simulate

    url = databases.url(databases.create(label))
    store = Store(url, clock=lambda: NOW)
    store.upgrade()
    simulate(store, SimulationPlan(agents=agents, windows=168, duration_minutes=10, seed=7, start=WEEK_START), now=NOW)
    store.dispose()
    return url, [window_id_of(WEEK_START + timedelta(hours=h)) for h in range(168)]


def instance_env(databases: Databases, folder: Path, store_url: str, celery: dict[str, str] | None) -> dict[str, str]:
    env = {
        "DATABASE_URL": store_url,
        "DAGSTER_HOME": str(folder / "dagster"),
        "DAGSTER_PG_HOST": databases.host,
        "DAGSTER_PG_PORT": str(databases.port),
        "DAGSTER_PG_USERNAME": str(databases.user),
        "DAGSTER_PG_PASSWORD": "",
        "DAGSTER_PG_DB": databases.create("dagster"),
    }
    return env | (celery or {})


def backfill_in_process(databases: Databases, agents: int, rss: PeakRss, work: Path) -> dict:
    from dagster import DagsterInstance

    from babylon_assets.definitions import build_definitions
    from babylon_assets.orchestration.instance import prepare_dagster_home
    from babylon_assets.orchestration.pipeline import materialize_windows
    from babylon_assets.settings import Settings

    url, week = simulated_week(databases, "inprocess", agents)
    os.environ.update(instance_env(databases, work / "in-process", url, None))
    settings = Settings()
    prepare_dagster_home(settings)
    rss.phase = "backfill in-process"
    started = time.perf_counter()
    with DagsterInstance.get() as instance:
        runs = materialize_windows(build_definitions(settings), week, instance, max_per_run=24)
    seconds = time.perf_counter() - started
    assert all(run.success for run in runs), [run.run_id for run in runs if not run.success]
    return {"runs": len(runs), "seconds": round(seconds, 1), "peak_rss_gb": rss.peak("backfill in-process")}


def backfill_on_workers(databases: Databases, agents: int, rss: PeakRss, work: Path) -> dict:
    from dagster import DagsterInstance

    from babylon_assets.orchestration.instance import prepare_dagster_home
    from babylon_assets.orchestration.submit import submit_runs, window_submissions
    from babylon_assets.orchestration.workers import remove_prefix
    from babylon_assets.settings import Settings

    prefix = f"scale-{uuid.uuid4().hex[:8]}-"
    celery = {
        "CELERY_BROKER_URL": AMQP_URL,
        "CELERY_BACKEND_URL": REDIS_URL,
        "CELERY_QUEUE_PREFIX": prefix,
        "CELERY_HEARTBEAT_SECONDS": "5",
    }
    url, week = simulated_week(databases, "workers", agents)
    os.environ.update(instance_env(databases, work / "workers", url, celery))
    settings = Settings()
    prepare_dagster_home(settings)
    # Two cpu workers may run at once (the instance file allows one run per queue, for one worker each).
    config = Path(settings.DAGSTER_HOME) / "dagster.yaml"
    config.write_text(config.read_text().replace("      limit: 1\n", "      limit: 2\n"))
    logs = work / "workers-logs"
    logs.mkdir()
    processes = []
    try:
        with DagsterInstance.get() as instance:
            for name, command in (
                ("daemon", [str(Path(sys.executable).parent / "dagster-daemon"), "run", "-w", "workspace.yaml"]),
                (
                    "cpu-1",
                    [sys.executable, "-m", "babylon_assets.cli", "worker", "--queue", "cpu", "--name", "cpu-1@%h"],
                ),
                (
                    "cpu-2",
                    [sys.executable, "-m", "babylon_assets.cli", "worker", "--queue", "cpu", "--name", "cpu-2@%h"],
                ),
            ):
                out = (logs / f"{name}.log").open("wb")
                processes.append(subprocess.Popen(command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT))
            time.sleep(10)  # the workers connect and the daemon loads the code location
            rss.phase = "backfill on workers"
            started = time.perf_counter()
            submitted = submit_runs(instance, window_submissions(week, 24))
            ids = [run.run_id for run in submitted]
            while True:
                runs = [instance.get_run_by_id(run_id) for run_id in ids]
                if all(run is not None and run.is_finished for run in runs):
                    break
                time.sleep(1)
            seconds = time.perf_counter() - started
            workers = {run.tags.get("babylon/worker", "?").split("@")[0] for run in runs if run is not None}
            failed = [run.run_id for run in runs if run is not None and run.status.value != "SUCCESS"]
            assert not failed, f"failed runs {failed}; logs in {logs}"
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
        remove_prefix(AMQP_URL, REDIS_URL, prefix)
    return {
        "runs": len(ids),
        "seconds": round(seconds, 1),
        "workers_used": sorted(workers),
        "peak_rss_gb": rss.peak("backfill on workers"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--windows", type=int, default=10_000)
    parser.add_argument("--per-window", type=int, default=100)
    parser.add_argument("--week-agents", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--skip-workers", action="store_true")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    databases = Databases()
    results: dict = {"trajectories": args.windows * args.per_window, "windows": args.windows, "cores": os.cpu_count()}
    rss = PeakRss()
    try:
        with rss.running(), tempfile.TemporaryDirectory(prefix="babylon-scale-") as scratch:
            work = Path(scratch)
            store = Store(databases.url(databases.create("store")), clock=lambda: NOW)
            store.upgrade()
            log(f"filling {args.windows * args.per_window:,} trajectories over {args.windows:,} windows")
            rss.phase = "fill"
            fill(store, args.windows, args.per_window)
            results |= store_reads(store, rss, args.repeat)
            store.dispose()
            if not args.skip_workers:
                log(f"a week's backfill ({args.week_agents} agents a window), in-process")
                results["backfill_in_process"] = backfill_in_process(databases, args.week_agents, rss, work)
                log(f"  {results['backfill_in_process']}")
                log("the same week through two cpu workers")
                results["backfill_two_workers"] = backfill_on_workers(databases, args.week_agents, rss, work)
                log(f"  {results['backfill_two_workers']}")
                results["workers_over_in_process"] = round(
                    results["backfill_two_workers"]["seconds"] / results["backfill_in_process"]["seconds"], 2
                )
    finally:
        databases.drop_all()
    print(json.dumps(results, indent=2))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
