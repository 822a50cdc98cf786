"""Faults against this machine's real processes: `babylon score` killed with SIGKILL mid-judging, then run again.
The judge is a TEST DOUBLE (an OpenAI-compatible server on 127.0.0.1) that answers slowly."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import time

import pytest
from dagster import DagsterInstance, DagsterRunStatus
from sqlalchemy import func, select

from babylon_assets.core.window_time import utcnow
from babylon_assets.db.schema import JudgeClaim, JudgmentRecord, RewardJudgment, table_of
from babylon_assets.db.store import Store
from babylon_assets.play.simulator import SimulationPlan, simulate
from tests.doubles.openai_compatible import OpenAICompatibleTestDouble
from tests.judges.test_ruler import good
from tests.orchestration.test_instance import ROOT


@pytest.fixture(autouse=True)
def offline_training(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests train on scripted play, which is not the policy's own: the offline path (ON_POLICY=false)."""
    monkeypatch.setenv("ON_POLICY", "false")


def rows(store: Store, model) -> int:
    with store.engine.connect() as connection:
        return connection.execute(select(func.count()).select_from(table_of(model))).scalar_one()


def test_a_score_killed_mid_judging_is_failed_and_the_rerun_pays_only_the_call_in_flight_again(tmp_path):
    url = f"sqlite:///{tmp_path / 'store.db'}"
    store = Store(url)
    store.upgrade()
    simulate(store, SimulationPlan(agents=6, windows=3, duration_minutes=6, seed=5), now=utcnow())

    def slow(request):
        return dataclasses.replace(good(request), delay_s=1.5)

    with OpenAICompatibleTestDouble(slow) as double:
        env = {
            **os.environ,
            "DATABASE_URL": url,
            "DAGSTER_HOME": str(tmp_path / "home"),
            "JUDGE_MODEL": "openai/judge-double",
            "JUDGE_API_BASE": double.base_url,
            "JUDGE_MODE": "pinned",
            "JUDGE_MAX_CONCURRENCY": "1",
            "JUDGE_RETRIES": "0",
        }
        command = [sys.executable, "-m", "babylon_assets.cli", "score"]
        first = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        while len(double.requests) < 2:  # one group judged and cached, the next one in flight
            assert first.poll() is None, first.stdout.read().decode() if first.stdout else ""
            assert time.monotonic() < deadline, "the judge was never called"
            time.sleep(0.05)
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
        again = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert again.returncode == 0, again.stdout + again.stderr
        assert "marked failed" in again.stdout + again.stderr  # the killed run, found and failed
        paid = len(double.requests)
    assert paid == 3 + 1  # three groups, and only the call in flight at the kill paid twice
    assert rows(store, JudgmentRecord) == rows(store, RewardJudgment) == 18  # no duplicates
    assert rows(store, JudgeClaim) == 0
    with store.engine.connect() as connection:
        assert set(connection.execute(select(table_of(JudgmentRecord).c.times_judged)).scalars()) == {1}
    os.environ["DAGSTER_HOME"] = str(tmp_path / "home")
    with DagsterInstance.get() as instance:
        statuses = sorted(run.status.value for run in instance.get_runs())
    assert statuses == sorted([DagsterRunStatus.FAILURE.value, DagsterRunStatus.SUCCESS.value])
    store.dispose()


def test_a_train_killed_mid_training_fails_its_batch_with_the_reason_and_the_next_train_completes(tmp_path, tiny_model):
    from babylon_assets.db.schema import TrainingBatch

    url = f"sqlite:///{tmp_path / 'store.db'}"
    store = Store(url)
    store.upgrade()
    simulate(store, SimulationPlan(agents=6, windows=3, duration_minutes=6, seed=7), now=utcnow())
    env = {
        **os.environ,
        "DATABASE_URL": url,
        "DAGSTER_HOME": str(tmp_path / "home"),
        "BASE_MODEL": str(tiny_model),
        "ART_PATH": str(tmp_path / ".art"),
        "WANDB_MODE": "disabled",
        "MAX_SEQUENCE_TOKENS": "256",
    }
    command = [
        sys.executable,
        "-m",
        "babylon_assets.cli",
        "train",
        "--iterations",
        "40",
        "--windows-per-iteration",
        "1",
    ]
    first = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

    def batches() -> list[dict]:
        with store.engine.connect() as connection:
            return [dict(r) for r in connection.execute(select(table_of(TrainingBatch))).mappings()]

    deadline = time.monotonic() + 240
    while not any(b["status"] == "training" for b in batches()):
        assert first.poll() is None, first.stdout.read().decode() if first.stdout else ""
        assert time.monotonic() < deadline, "training never started"
        time.sleep(0.2)
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=30)
    (killed,) = batches()
    assert killed["status"] == "training"  # what a kill leaves behind: nobody else will ever finish it
    again = subprocess.run(
        [*command[:-4], "--iterations", "1", "--windows-per-iteration", "1"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert again.returncode == 0, again.stdout + again.stderr
    by_id = {b["batchId"]: b for b in batches()}
    assert by_id[killed["batchId"]]["status"] == "failed" and "died" in by_id[killed["batchId"]]["error"]
    assert sorted(b["status"] for b in by_id.values()) == ["completed", "failed"]
    store.dispose()


@pytest.mark.postgres
def test_postgres_backends_cut_mid_run_then_a_rerun_completes_with_nothing_twice(fresh_pg_url, postgres_server):
    import threading

    import psycopg2

    from babylon_assets.db.schema import GroupMember
    from babylon_assets.definitions import build_definitions
    from babylon_assets.orchestration.pipeline import materialize_windows
    from babylon_assets.settings import Settings

    store = Store(fresh_pg_url)
    store.upgrade()
    summary = simulate(store, SimulationPlan(agents=6, windows=6, duration_minutes=6, seed=9), now=utcnow())
    windows = [w.window_id for w in summary.windows]
    database = fresh_pg_url.rsplit("/", 1)[1]
    stop = threading.Event()
    cut = []

    def cutter() -> None:
        admin = psycopg2.connect(postgres_server)
        admin.autocommit = True
        with admin.cursor() as cursor:
            while not stop.is_set():
                cursor.execute(
                    "select pg_terminate_backend(pid) from pg_stat_activity "
                    "where datname = %s and pid <> pg_backend_pid()",
                    (database,),
                )
                cut.extend(row[0] for row in cursor.fetchall() if row[0])
                time.sleep(0.15)
        admin.close()

    defs = build_definitions(Settings(DATABASE_URL=fresh_pg_url))
    thread = threading.Thread(target=cutter)
    with DagsterInstance.ephemeral() as instance:
        thread.start()
        try:
            during = materialize_windows(defs, windows, instance, max_per_run=2)
        finally:
            stop.set()
            thread.join(timeout=30)
        assert cut, "no backend was cut"
        after = materialize_windows(defs, windows, instance, max_per_run=2)
        assert all(run.success for run in after), [run.label for run in after if not run.success]
    assert any(not run.success for run in during) or len(cut) > 0
    store.engine.dispose()  # connections the cutter killed are not reused
    assert rows(store, GroupMember) == 36 and rows(store, RewardJudgment) == 36 and rows(store, JudgmentRecord) == 36
    store.dispose()


def test_the_judge_down_then_slow_and_rate_limited_during_a_multi_window_run(tmp_path):
    from babylon_assets.db.schema import GroupMember
    from babylon_assets.definitions import build_definitions
    from babylon_assets.gateway.server import free_port
    from babylon_assets.orchestration.pipeline import materialize_windows
    from babylon_assets.settings import Settings
    from tests.doubles.openai_compatible import ScriptedReply

    url = f"sqlite:///{tmp_path / 'store.db'}"
    store = Store(url)
    store.upgrade()
    summary = simulate(store, SimulationPlan(agents=6, windows=3, duration_minutes=6, seed=11), now=utcnow())
    windows = [w.window_id for w in summary.windows]

    def judge_settings(api_base: str) -> Settings:
        return Settings(
            DATABASE_URL=url,
            JUDGE_MODEL="openai/judge-double",
            JUDGE_API_BASE=api_base,
            JUDGE_MODE="pinned",
            JUDGE_RETRIES=2,
            JUDGE_BACKOFF_SECONDS=0.01,
            JUDGE_TIMEOUT_SECONDS=5,
        )

    with DagsterInstance.ephemeral() as instance:
        # down: nothing listens there; every window fails, named, and nothing is stored
        (down,) = materialize_windows(
            build_definitions(judge_settings(f"http://127.0.0.1:{free_port()}/v1")), windows, instance
        )
        assert not down.success
        with store.engine.connect() as connection:
            assert (
                connection.execute(select(func.count()).where(table_of(GroupMember).c.score.is_not(None))).scalar_one()
                == 0
            )
        # back, but rate-limited twice and slow: the retries ride it out, each group is paid for once
        replies: list[int] = []

        def limited_then_slow(request):
            replies.append(1)
            if len(replies) <= 2:
                return ScriptedReply(status=429, headers={"Retry-After": "0"})
            return dataclasses.replace(good(request), delay_s=0.3)

        with OpenAICompatibleTestDouble(limited_then_slow) as double:
            (back,) = materialize_windows(build_definitions(judge_settings(double.base_url)), windows, instance)
            assert back.success
            assert len(double.requests) == 3 + 2  # three groups, two of their calls answered 429 first
    assert rows(store, JudgmentRecord) == rows(store, RewardJudgment) == 18
    store.dispose()
