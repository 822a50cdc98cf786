"""The hourly window partitions: one partition per closed UTC hour, keyed by window id."""

from __future__ import annotations

from dagster import HourlyPartitionsDefinition

from babylon_assets.core.window_time import WINDOW_ID_FORMAT
from babylon_assets.settings import get_settings


def build_window_partitions(partition_start: str) -> HourlyPartitionsDefinition:
    """Hourly partitions from `partition_start`, keys like 2025-01-15T10:00 (UTC); only ended hours."""
    return HourlyPartitionsDefinition(start_date=partition_start, fmt=WINDOW_ID_FORMAT, timezone="UTC")


WINDOW_PARTITIONS = build_window_partitions(get_settings().PARTITION_START)

# The run tags that make one run cover a range of windows: the names Dagster documents for ranged runs and writes
# itself for single-run backfills (spelled out here, not imported from Dagster's private modules).
RANGE_START_TAG = "dagster/asset_partition_range_start"
RANGE_END_TAG = "dagster/asset_partition_range_end"
# The tag of a one-partition run (a rollout hour).
PARTITION_TAG = "dagster/partition"
