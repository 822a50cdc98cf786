"""The batching SQLite event log leaves the instance as Dagster's own SQLite event log does."""

from collections import Counter
from pathlib import Path

import pytest
from dagster import AssetKey, DagsterEventType, DagsterInstance, EventRecordsFilter

from babylon_assets.definitions import build_definitions
from babylon_assets.orchestration.event_log import EVENT_BATCH_SIZE_ENV, BatchingSqliteEventLogStorage
from babylon_assets.orchestration.instance import prepare_dagster_home
from babylon_assets.orchestration.pipeline import materialize_windows
from babylon_assets.settings import Settings
from tests.assets.test_ranges import FlakyJudgeResource

WINDOWS = ["2025-01-15T10:00", "2025-01-15T11:00", "2025-01-15T12:00"]
ASSETS = [AssetKey(name) for name in ("trajectories", "market_outcomes", "window_groups", "ruler_scores")]
ASSET_EVENT_TYPES = (
    DagsterEventType.ASSET_MATERIALIZATION_PLANNED,
    DagsterEventType.ASSET_MATERIALIZATION,
    DagsterEventType.ASSET_FAILED_TO_MATERIALIZE,
)


def instance_state(instance: DagsterInstance, run_ids: list[str]) -> dict[str, object]:
    """What the UI, sensors and backfills read about the runs' assets, with run ids made positional."""
    position = {run_id: i for i, run_id in enumerate(run_ids)}
    state: dict[str, object] = {
        "run_logs": [
            [
                (e.dagster_event.event_type_value, str(e.dagster_event.asset_key), e.dagster_event.partition)
                for e in instance.all_logs(run_id)
                if e.dagster_event
            ]
            for run_id in run_ids
        ],
    }
    for key in ASSETS:
        state[f"{key.to_user_string()} materialized"] = instance.get_materialized_partitions(key)
        for event_type in ASSET_EVENT_TYPES:
            records = instance.get_event_records(EventRecordsFilter(event_type, asset_key=key), ascending=True)
            state[f"{key.to_user_string()} {event_type.value}"] = Counter(
                (position[r.run_id], r.partition_key) for r in records
            )
        (record,) = instance.get_asset_records([key])
        entry = record.asset_entry
        last = entry.last_materialization_record
        state[f"{key.to_user_string()} entry"] = (
            position.get(entry.last_run_id or ""),
            last.partition_key if last else None,
            position[last.run_id] if last else None,
            entry.last_materialization_storage_id == (last.storage_id if last else None),
        )
        storage = instance.event_log_storage
        attempts = storage.get_latest_asset_partition_materialization_attempts_without_materializations(key)
        state[f"{key.to_user_string()} attempts"] = {p: position[run_id] for p, (run_id, _) in attempts.items()}
    return state


def run_graph(instance: DagsterInstance, url: str, judge: FlakyJudgeResource) -> list[str]:
    defs = build_definitions(Settings(DATABASE_URL=url), resource_overrides={"judge": judge})
    runs = materialize_windows(defs, WINDOWS, instance)
    runs += materialize_windows(defs, WINDOWS, instance)  # the retry: the same windows again
    return [run.run_id for run in runs]


@pytest.mark.parametrize("failing_window", ["none", "2025-01-15T11:00"])
def test_the_batching_event_log_stores_what_dagsters_sqlite_event_log_stores(
    monkeypatch, tmp_path: Path, simulated_store, failing_window
):
    url = simulated_store.target.url.render_as_string(hide_password=False)
    judge = FlakyJudgeResource.failing(failing_window)
    monkeypatch.setenv(EVENT_BATCH_SIZE_ENV, "1000")  # Dagster's own storage gets the same batches
    (tmp_path / "dagster_default").mkdir()
    with DagsterInstance.local_temp(str(tmp_path / "dagster_default")) as instance:
        assert type(instance.event_log_storage).__name__ == "SqliteEventLogStorage"
        expected = instance_state(instance, run_graph(instance, url, judge))
    prepare_dagster_home(Settings(DAGSTER_HOME=str(tmp_path / "batching")), environ={})
    with DagsterInstance.get() as instance:
        assert isinstance(instance.event_log_storage, BatchingSqliteEventLogStorage)
        assert Path(instance.event_log_storage._base_dir) == tmp_path / "batching" / "history" / "runs"
        actual = instance_state(instance, run_graph(instance, url, judge))
    assert actual == expected
    planned = expected["ruler_scores ASSET_MATERIALIZATION_PLANNED"]
    assert planned == Counter({(run, w): 1 for run in (0, 1) for w in WINDOWS})
    if failing_window == "none":
        assert expected["ruler_scores materialized"] == set(WINDOWS)
        assert expected["ruler_scores attempts"] == {}
    else:  # the ranged step failed on one window: the others show materialized, the failed one the retry's failure
        assert expected["ruler_scores materialized"] == set(WINDOWS) - {failing_window}
        assert expected["ruler_scores attempts"] == {failing_window: 1}


def test_batching_is_turned_on_unless_chosen(monkeypatch, tmp_path: Path):
    monkeypatch.setenv(EVENT_BATCH_SIZE_ENV, "0")
    BatchingSqliteEventLogStorage(str(tmp_path / "runs"))
    import os

    assert os.environ[EVENT_BATCH_SIZE_ENV] == "0"
    monkeypatch.delenv(EVENT_BATCH_SIZE_ENV)
    BatchingSqliteEventLogStorage(str(tmp_path / "runs"))
    assert os.environ[EVENT_BATCH_SIZE_ENV] == "1000"
