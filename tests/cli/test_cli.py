"""The `babylon` commands on the embedded store."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from typer.testing import CliRunner

from babylon_assets.cli import app

ROOT = Path(__file__).resolve().parents[2]

runner = CliRunner()
# The play `demo` simulates, without materializing the graph.
DEMO_PLAY = ["simulate", "--agents", "8", "--windows", "4", "--duration", "10", "--seed", "7"]


def sqlite_path() -> Path:
    import os

    return Path(os.environ["DATABASE_URL"].removeprefix("sqlite:///"))


def test_demo_simulates_materializes_the_graph_and_reports(tmp_path):
    first = runner.invoke(app, ["demo", "--no-train"])
    assert first.exit_code == 0, first.output
    assert "32 trajectories written, 0 already there" in first.output
    assert "READY FOR TRAINING: 4 ready window(s)" in first.output
    assert "Training dataset " in first.output and "32 trajectories in 4 groups from 4 windows" in first.output
    assert first.output.count("agent-0") >= 8  # best and worst agent of each window
    # the runs landed in the instance of DESIGN 8
    from dagster import DagsterInstance

    with DagsterInstance.get() as instance:
        # one ranged run for the four consecutive windows, one for the dataset
        assert len(instance.get_runs()) == 2 and all(r.is_success for r in instance.get_runs())
    again = runner.invoke(app, ["demo", "--no-train"])
    assert again.exit_code == 0, again.output
    assert "0 trajectories written, 32 already there" in again.output
    with sqlite3.connect(sqlite_path()) as connection:
        assert connection.execute("SELECT count(*) FROM trajectories").fetchone() == (32,)
        assert connection.execute('SELECT count(DISTINCT "windowId") FROM market_outcomes').fetchone() == (4,)


def test_check_windows_exit_codes_and_flags():
    assert runner.invoke(app, DEMO_PLAY).exit_code == 0
    ready = runner.invoke(app, ["check-windows"])
    assert ready.exit_code == 0 and "READY FOR TRAINING" in ready.output
    strict = runner.invoke(app, ["check-windows", "--min-agents", "9"])
    assert strict.exit_code == 1
    assert "NOT READY: 0 of 3 required ready windows" in strict.output
    assert "has 8 eligible agent(s); need >= 9" in strict.output
    fewer = runner.invoke(app, ["check-windows", "--min-ready-windows", "4"])
    assert fewer.exit_code == 0, fewer.output
    more = runner.invoke(app, ["check-windows", "--min-ready-windows", "5"])
    assert more.exit_code == 1 and "NOT READY: 4 of 5" in more.output
    long_actions = runner.invoke(app, ["check-windows", "--min-actions", "11"])
    assert long_actions.exit_code == 1 and "too_few_llm_actions: 8" in long_actions.output
    assert "rows in 32 = used 0 + excluded 32 + quarantined 0" in long_actions.output
    assert "rows in 32 = used 32 + excluded 0 + quarantined 0" in ready.output


def test_check_windows_on_an_empty_store_says_what_to_do(monkeypatch):
    result = runner.invoke(app, ["check-windows"])
    assert result.exit_code == 1
    assert "No trajectories in the lookback" in result.output


def test_check_windows_until_before_the_data_sees_nothing():
    assert runner.invoke(app, DEMO_PLAY).exit_code == 0
    result = runner.invoke(app, ["check-windows", "--until", "2020-01-01T00:00"])
    assert result.exit_code == 1 and "No trajectories" in result.output
    bad = runner.invoke(app, ["check-windows", "--until", "yesterday"])
    assert bad.exit_code == 2 and "not a time" in bad.output


def test_settings_give_the_defaults_of_the_flags(monkeypatch):
    assert runner.invoke(app, DEMO_PLAY).exit_code == 0
    monkeypatch.setenv("MIN_AGENTS", "9")
    assert runner.invoke(app, ["check-windows"]).exit_code == 1
    monkeypatch.setenv("MIN_AGENTS", "5")
    monkeypatch.setenv("MIN_READY_WINDOWS", "5")
    assert runner.invoke(app, ["check-windows"]).exit_code == 1


def test_db_upgrade_on_the_embedded_store():
    result = runner.invoke(app, ["db", "upgrade"])
    assert result.exit_code == 0 and "store of our own" in result.output
    assert runner.invoke(app, ["db", "upgrade"]).exit_code == 0


def test_export_dataset_writes_art_trajectories_with_rewards(tmp_path):
    import art

    missing = runner.invoke(app, ["export-dataset"])
    assert missing.exit_code == 2 and "no training dataset yet" in missing.output
    assert runner.invoke(app, ["demo", "--no-train"]).exit_code == 0
    target = tmp_path / "dataset.jsonl"
    result = runner.invoke(app, ["export-dataset", "--format", "jsonl", "--output", str(target)])
    assert result.exit_code == 0, result.output
    lines = target.read_text().splitlines()
    assert len(lines) == 32
    trajectories = [art.Trajectory.model_validate_json(line) for line in lines]
    assert all(0.0 <= t.reward <= 1.0 for t in trajectories)
    assert len({t.metadata["group_id"] for t in trajectories}) == 4
    assert all(len(t.additional_histories) == 9 and t.messages_and_choices[0]["role"] == "system" for t in trajectories)
    assert runner.invoke(app, ["export-dataset", "--format", "csv"]).exit_code == 2


def test_ui_refuses_a_relative_dagster_home_in_dotenv_and_the_example_sets_none(tmp_path, monkeypatch):
    from babylon_assets.cli.service_commands import relative_dagster_home_in_dotenv

    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text("DAGSTER_HOME=.dagster\n")
    result = CliRunner().invoke(app, ["ui", "--port", "3999"])
    assert result.exit_code == 2 and "relative path" in result.output and "DAGSTER_HOME=" in result.output
    (tmp_path / ".env").write_text((ROOT / ".env.example").read_text())  # cp .env.example .env
    assert relative_dagster_home_in_dotenv(tmp_path) is None
    (tmp_path / ".env").write_text(f"DAGSTER_HOME={tmp_path / 'home'}\n")
    assert relative_dagster_home_in_dotenv(tmp_path) is None


@pytest.mark.postgres
def test_check_windows_on_a_missing_database_exits_2_with_one_line(monkeypatch, postgres_server):
    monkeypatch.setenv("DATABASE_URL", "postgresql://postgres:secret-pw@127.0.0.1:5432/babylon_no_such_database")
    result = CliRunner().invoke(app, ["check-windows"])
    assert result.exit_code == 2, result.output
    (line,) = result.output.strip().splitlines()
    assert "cannot open the store" in line and 'database "babylon_no_such_database" does not exist' in line
    assert "secret-pw" not in line


def test_rows_before_partition_start_are_reported_and_quarantined_never_a_crash(tmp_path, monkeypatch):
    from datetime import UTC, datetime

    from babylon_assets.db.store import Store
    from babylon_assets.play.simulator import SimulationPlan, simulate

    url = f"sqlite:///{tmp_path / 'early.db'}"
    monkeypatch.setenv("DATABASE_URL", url)
    store = Store(url)
    store.upgrade()
    start = datetime(2024, 12, 31, 22, tzinfo=UTC)  # two hours before the default PARTITION_START
    simulate(
        store,
        SimulationPlan(agents=5, windows=4, duration_minutes=5, seed=3, start=start),
        now=datetime(2025, 1, 2, tzinfo=UTC),
    )
    runner = CliRunner()
    report = runner.invoke(app, ["check-windows", "--until", "2025-01-01T02:00", "--lookback-hours", "4"])
    assert "2 window(s) with 10 row(s) lie before PARTITION_START=2025-01-01T00:00" in report.output
    scored = runner.invoke(app, ["score", "--until", "2025-01-01T02:00", "--lookback-hours", "4"])
    assert scored.exit_code == 0, scored.output
    assert (
        "2 window(s) before PARTITION_START=2025-01-01T00:00" in scored.output
        and "10 row(s) are quarantined" in scored.output
    )
    assert store.quarantine_counts() == {"before_partition_start": 10}
    store.dispose()


def test_backfill_submit_hands_ranged_runs_to_the_queue_and_a_key_is_one_run():
    from dagster import DagsterInstance, DagsterRunStatus

    from babylon_assets.orchestration.submit import RUN_KEY_TAG

    assert runner.invoke(app, DEMO_PLAY).exit_code == 0
    hours = ["--from", "2025-01-15T10:00", "--to", "2025-01-15T13:00", "--per-run", "2"]
    first = runner.invoke(app, ["backfill", *hours, "--submit"])
    assert first.exit_code == 0, first.output
    assert first.output.count("submitted run ") == 2 and "http://127.0.0.1:3000/runs/" in first.output
    again = runner.invoke(app, ["backfill", *hours, "--submit"])
    assert again.exit_code == 0 and again.output.count("already submitted as run ") == 2, again.output
    with DagsterInstance.get() as instance:
        runs = instance.get_runs()
        # Queued for the daemon, not executed here; each run key names one run; the jobs' queue tag is on them.
        assert len(runs) == 2 and {run.status for run in runs} == {DagsterRunStatus.QUEUED}
        assert {run.tags[RUN_KEY_TAG] for run in runs} == {
            "window_graph:2025-01-15T10:00:2025-01-15T11:00",
            "window_graph:2025-01-15T12:00:2025-01-15T13:00",
        }
        assert {run.tags["dagster-celery/queue"] for run in runs} == {"cpu"}
    anew = runner.invoke(app, ["backfill", *hours, "--submit", "--run-key", ":again"])
    assert anew.exit_code == 0 and anew.output.count("submitted run ") == 2, anew.output


def test_learn_submit_queues_the_next_rollout_hours_once():
    from dagster import DagsterInstance

    from babylon_assets.play.rollouts import RolloutPlan
    from babylon_assets.settings import get_settings

    plan = RolloutPlan.from_settings(get_settings())
    first = runner.invoke(app, ["learn", "--submit", "--windows-per-cycle", "2"])
    assert first.exit_code == 0 and first.output.count("submitted run ") == 2, first.output
    assert "the sensors take the loop on" in first.output
    again = runner.invoke(app, ["learn", "--submit", "--windows-per-cycle", "2"])
    assert again.exit_code == 0 and again.output.count("already submitted as run ") == 2, again.output
    with DagsterInstance.get() as instance:
        runs = instance.get_runs()
    assert sorted(run.tags["dagster/partition"] for run in runs) == [plan.hour(0), plan.hour(1)]
    assert {run.job_name for run in runs} == {"rollouts_job"} and {
        run.tags["dagster-celery/queue"] for run in runs
    } == {"serve"}
