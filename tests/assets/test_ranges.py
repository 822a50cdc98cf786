"""Ranged runs: a day's backfill in one run, and a failing window that costs the others nothing."""

from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime

from dagster import AssetKey, DagsterInstance
from typer.testing import CliRunner

from babylon_assets.cli import app
from babylon_assets.core.judging import JudgeGroup, JudgeResult, OutcomeJudge
from babylon_assets.db.window_records import WindowRecords
from babylon_assets.definitions import build_definitions
from babylon_assets.orchestration.pipeline import materialize_windows, window_ranges
from babylon_assets.play.simulator import SimulationPlan, simulate
from babylon_assets.resources.judge import JudgeResource
from babylon_assets.settings import Settings
from tests.conftest import NOW, SIM_START

JUDGED: Counter[str] = Counter()


class FlakyOutcomeJudge:
    """The outcome judge, failing on one window: a stand-in for a judge outage in tests."""

    def __init__(self, failing_window: str) -> None:
        self.inner = OutcomeJudge()
        self.name, self.version, self.is_llm = self.inner.name, self.inner.version, self.inner.is_llm
        self.failing_window = failing_window

    async def score(self, groups: Sequence[JudgeGroup]) -> JudgeResult:
        for group in groups:
            JUDGED[group.window_id] += 1
        healthy = [g for g in groups if g.window_id != self.failing_window]
        result = await self.inner.score(healthy)
        result.failures.update(
            {
                g.group_id: f"judge unreachable while scoring {g.window_id}"
                for g in groups
                if g.window_id == self.failing_window
            }
        )
        return result


class FlakyJudgeResource(JudgeResource):
    failing_window: str = ""

    def get_judge(self, cache=None):  # noqa: ANN001, ANN201 - the test double of JudgeResource.get_judge
        return FlakyOutcomeJudge(self.failing_window)

    @classmethod
    def failing(cls, window_id: str) -> "FlakyJudgeResource":
        """The judge resource of the default settings, whose judge fails on `window_id`."""
        settings = Settings()
        return cls(failing_window=window_id, **{f: getattr(settings, s) for f, s in cls.SETTING_FIELDS.items()})


def test_window_ranges_are_consecutive_and_bounded():
    windows = [f"2025-01-15T{h:02d}:00" for h in range(0, 24)] + ["2025-01-16T02:00"]
    assert window_ranges(windows, 10) == [
        ("2025-01-15T00:00", "2025-01-15T09:00", 10),
        ("2025-01-15T10:00", "2025-01-15T19:00", 10),
        ("2025-01-15T20:00", "2025-01-15T23:00", 4),
        ("2025-01-16T02:00", "2025-01-16T02:00", 1),
    ]


def test_a_24_window_backfill_runs_as_one_run(tmp_path, monkeypatch):
    url = f"sqlite:///{tmp_path / 'day.db'}"
    monkeypatch.setenv("DATABASE_URL", url)
    runner = CliRunner()
    now = datetime(2025, 1, 17, 1, tzinfo=UTC)
    from babylon_assets.db.store import Store

    store = Store(url, clock=lambda: now)
    store.upgrade()
    simulate(
        store,
        SimulationPlan(agents=5, windows=24, duration_minutes=5, seed=3, start=datetime(2025, 1, 16, tzinfo=UTC)),
        now=now,
    )
    result = runner.invoke(app, ["backfill", "--from", "2025-01-16T00:00", "--to", "2025-01-16T23:00"])
    assert result.exit_code == 0, result.output
    with DagsterInstance.get() as instance:
        (run,) = instance.get_runs()
        assert run.is_success
        assert run.tags["dagster/asset_partition_range_start"] == "2025-01-16T00:00"
        assert run.tags["dagster/asset_partition_range_end"] == "2025-01-16T23:00"
        materialized = instance.get_materialized_partitions(__import__("dagster").AssetKey("ruler_scores"))
        assert len(materialized) == 24
        # each window's own figures, observed on its own partition (the materialization holds the range's totals)
        observed = instance.fetch_observations(AssetKey("trajectories"), limit=100).records
        by_partition = {r.partition_key: r.asset_observation.metadata for r in observed}
        assert len(by_partition) == 24 and by_partition["2025-01-16T13:00"]["window_id"].value == "2025-01-16T13:00"
        assert {m["agents"].value for m in by_partition.values()} == {5}
    assert all(m.score is not None for m in WindowRecords(store).group_members("2025-01-16T13:00"))
    store.dispose()


def test_a_failing_window_leaves_the_others_stored_and_the_retry_redoes_only_it(simulated_store):
    url = simulated_store.target.url.render_as_string(hide_password=False)
    broken = "2025-01-15T11:00"
    JUDGED.clear()
    windows = ["2025-01-15T10:00", broken, "2025-01-15T12:00"]
    with DagsterInstance.ephemeral() as instance:
        defs = build_definitions(
            Settings(DATABASE_URL=url), resource_overrides={"judge": FlakyJudgeResource.failing(broken)}
        )
        (run,) = materialize_windows(defs, windows, instance)
        assert not run.success
        failure = [e for e in instance.all_logs(run.run_id) if e.dagster_event and e.dagster_event.is_step_failure]
        assert "1 of 3 window(s) failed (2025-01-15T11:00)" in str(failure[0].dagster_event.event_specific_data)
        # the stored windows show materialized, the failed one does not
        assert instance.get_materialized_partitions(AssetKey("ruler_scores")) == {
            "2025-01-15T10:00",
            "2025-01-15T12:00",
        }
    scored = {w: all(m.score is not None for m in WindowRecords(simulated_store).group_members(w)) for w in windows}
    assert scored == {"2025-01-15T10:00": True, broken: False, "2025-01-15T12:00": True}
    assert Counter(windows) == JUDGED
    # the retry, with the judge back, judges only the window that failed
    JUDGED.clear()
    with DagsterInstance.ephemeral() as instance:
        defs = build_definitions(
            Settings(DATABASE_URL=url), resource_overrides={"judge": FlakyJudgeResource.failing("none")}
        )
        (run,) = materialize_windows(defs, windows, instance)
        assert run.success
    assert Counter({broken: 1}) == JUDGED
    assert all(m.score is not None for w in windows for m in WindowRecords(simulated_store).group_members(w))


def test_the_window_graph_runs_on_the_postgres_instance(monkeypatch, tmp_path, postgres_instance_env, simulated_store):
    from babylon_assets.orchestration.instance import prepare_dagster_home
    from tests.orchestration.test_instance import ROOT

    monkeypatch.chdir(ROOT)
    prepare_dagster_home(Settings(DAGSTER_HOME=str(tmp_path / "pg_home")))
    url = simulated_store.target.url.render_as_string(hide_password=False)
    with DagsterInstance.get() as instance:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        runs = materialize_windows(
            build_definitions(Settings(DATABASE_URL=url)), ["2025-01-15T10:00", "2025-01-15T11:00"], instance
        )
        assert [r.success for r in runs] == [True]
        assert instance.get_run_by_id(runs[0].run_id).is_success
    assert NOW and SIM_START  # the simulated store's clock and start, shared with the other tests
