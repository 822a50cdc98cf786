"""The instance's SQLite event log (DESIGN 8): Dagster's, writing a batch of asset events in one transaction.

Dagster's `SqliteEventLogStorage` stores each event on its own: a new engine and a committed transaction
in the run's database, then another in the index database, where asset events are mirrored for
cross-run queries (about 12 ms an event here, two commits and two WAL checkpoints). A week's ranged run
emits 1,344 asset events (planned and materialized, 168 windows x 4 assets), so the event log cost more
than the work. Dagster hands a run's planned events, and a step's materializations, to
`store_event_batch` when DAGSTER_EVENT_BATCH_SIZE is set (its PostgreSQL storage writes them together);
the SQLite storage inherits the one-at-a-time loop. This one writes the same rows: every event in the
run's database, every asset event mirrored in the index with its indexed tags, and the asset table left
as the last event of each asset leaves it; one transaction per database per batch. Events that are not
asset events (check evaluations, step and run events) are stored exactly as Dagster stores them.

Select it in dagster.yaml (`event_log_storage`); its files are where Dagster's default puts them
(DAGSTER_HOME/history/runs), so an existing instance keeps its history.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from dagster import Field, StringSource
from dagster._core.errors import DagsterInvariantViolationError
from dagster._core.events import ASSET_EVENTS
from dagster._core.events.log import EventLogEntry
from dagster._core.storage.event_log.schema import SqlEventLogStorageTable
from dagster._core.storage.event_log.sqlite.sqlite_event_log import SqliteEventLogStorage
from dagster._serdes import ConfigurableClassData

# Dagster reads this variable on every event: a batch is buffered until its end or this many events. A
# week's planned events (672 + 3 checks) fit in one batch; set it to 0 to store every event on its own.
EVENT_BATCH_SIZE_ENV = "DAGSTER_EVENT_BATCH_SIZE"
EVENT_BATCH_SIZE = 1000


def default_base_dir() -> str:
    """Where Dagster's default SQLite storage keeps the run shards and the index."""
    home = os.environ.get("DAGSTER_HOME")
    if not home:
        raise RuntimeError("DAGSTER_HOME is not set: give event_log_storage a base_dir in dagster.yaml")
    return os.path.join(home, "history", "runs")


def _is_asset_event(event: EventLogEntry) -> bool:
    dagster_event = event.dagster_event
    return (
        dagster_event is not None and dagster_event.event_type in ASSET_EVENTS and dagster_event.asset_key is not None
    )


class BatchingSqliteEventLogStorage(SqliteEventLogStorage):
    """SqliteEventLogStorage whose `store_event_batch` writes a batch's asset events in one transaction per
    database (the run's and the index) instead of two engines and two commits per event."""

    def __init__(self, base_dir: str | None = None, inst_data: ConfigurableClassData | None = None) -> None:
        # Turn on Dagster's event batching for the processes that use this storage, unless already chosen.
        os.environ.setdefault(EVENT_BATCH_SIZE_ENV, str(EVENT_BATCH_SIZE))
        super().__init__(base_dir or default_base_dir(), inst_data=inst_data)

    @classmethod
    def config_type(cls) -> dict[str, Field]:
        return {"base_dir": Field(StringSource, is_required=False)}

    @classmethod
    def from_config_value(  # ty: ignore[invalid-method-override]
        cls, inst_data: ConfigurableClassData | None, config_value: Mapping[str, Any]
    ) -> BatchingSqliteEventLogStorage:
        return cls(base_dir=config_value.get("base_dir"), inst_data=inst_data)

    def store_event_batch(self, events: Sequence[EventLogEntry]) -> None:
        """Consecutive asset events of one run are written together; any other event as Dagster writes it."""
        chunk: list[EventLogEntry] = []
        for event in events:
            if _is_asset_event(event) and (not chunk or chunk[0].run_id == event.run_id):
                chunk.append(event)
                continue
            self._store_asset_events(chunk)
            chunk = []
            if _is_asset_event(event):
                chunk.append(event)
            else:
                self.store_event(event)
        self._store_asset_events(chunk)

    def _store_asset_events(self, events: list[EventLogEntry]) -> None:
        """What `SqliteEventLogStorage.store_event` does for each asset event, in two transactions."""
        if not events:
            return
        rows = [self._event_to_row(event) for event in events]
        with self.run_connection(events[0].run_id) as conn:
            conn.execute(SqlEventLogStorageTable.insert(), rows)
        with self.index_transaction() as conn:
            event_ids: list[int] = []
            for row in rows:
                key = conn.execute(SqlEventLogStorageTable.insert(), row).inserted_primary_key
                if key is None or key[0] is None:
                    raise DagsterInvariantViolationError("Cannot store asset event tags for null event id.")
                event_ids.append(key[0])
            self._store_asset_event_tags(conn, events, event_ids)
            for event, event_id in _last_of_each_run_of_updates(events, event_ids):
                self._store_asset_event(conn, event, event_id)


def _last_of_each_run_of_updates(
    events: Sequence[EventLogEntry], event_ids: Sequence[int]
) -> Iterable[tuple[EventLogEntry, int]]:
    """The events whose asset-table update is not overwritten by the next one: an update sets the same
    columns as the next event of the same asset and type would, so only the last of a run of them shows."""
    for i, (event, event_id) in enumerate(zip(events, event_ids, strict=True)):
        following = events[i + 1] if i + 1 < len(events) else None
        if (
            following is not None
            and following.dagster_event_type == event.dagster_event_type
            and following.get_dagster_event().asset_key == event.get_dagster_event().asset_key
        ):
            continue
        yield event, event_id
