"""`babylon live` (scripted agents: the clock, resuming, the present) and `babylon report` from the command line."""

from __future__ import annotations

import json
from datetime import timedelta

from typer.testing import CliRunner

from babylon_assets.cli import app
from babylon_assets.core.window_time import utcnow, window_id_of, window_start
from babylon_assets.db.store import Store
from babylon_assets.settings import Settings

runner = CliRunner()


def test_live_plays_hour_after_hour_resumes_and_stops_at_the_present(monkeypatch, tmp_path):
    monkeypatch.setenv("LIVE_CLOCK_FILE", str(tmp_path / "clock.json"))
    first = window_start(utcnow()) - timedelta(hours=3)
    args = ["live", "--agents", "5", "--window-seconds", "0", "--duration", "5", "--start", window_id_of(first)]
    result = runner.invoke(app, [*args, "--windows", "2"])
    assert result.exit_code == 0, result.output
    hours = [window_id_of(first + timedelta(hours=i)) for i in range(3)]
    assert f"{hours[0]}: 5 agents, 25 decisions" in result.output and f"{hours[1]}: 5 agents" in result.output
    assert "2 hour(s) played" in result.output and "model rules" in result.output and "behind" not in result.output
    clock = json.loads((tmp_path / "clock.json").read_text())
    assert clock["simulated_now"].startswith(hours[2])  # the second hour has ended
    # again without a limit: the two hours are there (scripted play is idempotent), the third is played, and the
    # clock stops where the real present begins
    again = runner.invoke(app, args)
    assert again.exit_code == 0, again.output
    assert f"{hours[2]}: 5 agents" in again.output
    store = Store.from_settings(Settings())
    assert store.windows_with_rows(hours) == set(hours)
    store.dispose()


def test_live_with_llm_agents_needs_a_model(monkeypatch, tmp_path):
    monkeypatch.setenv("SERVING_FILE", str(tmp_path / "serving.json"))
    result = runner.invoke(app, ["live", "--llm", "--windows", "1", "--window-seconds", "0"])
    assert result.exit_code == 2 and "nothing is deployed" in result.output


def test_report_writes_the_page(tmp_path):
    out = tmp_path / "report.html"
    result = runner.invoke(app, ["report", "--output", str(out)])
    assert result.exit_code == 0, result.output
    assert "0 checkpoint(s)" in result.output and "No checkpoint has been evaluated yet" in out.read_text()
