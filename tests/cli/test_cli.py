"""The `babylon` commands on the embedded store."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from typer.testing import CliRunner

from babylon_assets.cli import app

runner = CliRunner()


def sqlite_path() -> Path:
    import os

    return Path(os.environ["DATABASE_URL"].removeprefix("sqlite:///"))


def test_demo_simulates_once_and_reports_ready():
    first = runner.invoke(app, ["demo"])
    assert first.exit_code == 0, first.output
    assert "32 trajectories written, 0 already there" in first.output
    assert "READY FOR TRAINING: 4 ready window(s)" in first.output
    again = runner.invoke(app, ["demo"])
    assert again.exit_code == 0, again.output
    assert "0 trajectories written, 32 already there" in again.output
    with sqlite3.connect(sqlite_path()) as connection:
        assert connection.execute("SELECT count(*) FROM trajectories").fetchone() == (32,)
        assert connection.execute("SELECT count(DISTINCT \"windowId\") FROM market_outcomes").fetchone() == (4,)


def test_check_windows_exit_codes_and_flags():
    assert runner.invoke(app, ["demo"]).exit_code == 0
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


def test_check_windows_on_an_empty_store_says_what_to_do(monkeypatch):
    result = runner.invoke(app, ["check-windows"])
    assert result.exit_code == 1
    assert "No trajectories in the lookback" in result.output


def test_check_windows_until_before_the_data_sees_nothing():
    assert runner.invoke(app, ["demo"]).exit_code == 0
    result = runner.invoke(app, ["check-windows", "--until", "2020-01-01T00:00"])
    assert result.exit_code == 1 and "No trajectories" in result.output
    bad = runner.invoke(app, ["check-windows", "--until", "yesterday"])
    assert bad.exit_code == 2 and "not a time" in bad.output


def test_settings_give_the_defaults_of_the_flags(monkeypatch):
    assert runner.invoke(app, ["demo"]).exit_code == 0
    monkeypatch.setenv("MIN_AGENTS", "9")
    assert runner.invoke(app, ["check-windows"]).exit_code == 1
    monkeypatch.setenv("MIN_AGENTS", "5")
    monkeypatch.setenv("MIN_READY_WINDOWS", "5")
    assert runner.invoke(app, ["check-windows"]).exit_code == 1


def test_db_upgrade_on_the_embedded_store():
    result = runner.invoke(app, ["db", "upgrade"])
    assert result.exit_code == 0 and "store of our own" in result.output
    assert runner.invoke(app, ["db", "upgrade"]).exit_code == 0
