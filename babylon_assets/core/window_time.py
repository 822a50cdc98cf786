"""Hourly windows (DESIGN 3): window ids, their bounds, lookbacks and closure. No Dagster here."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from functools import lru_cache

WINDOW = timedelta(hours=1)
WINDOW_ID_FORMAT = "%Y-%m-%dT%H:00"
_WINDOW_ID_PATTERN = re.compile(r"^(\d{4}-\d{2}-\d{2})[T ](\d{2}):00(?::00(?:\.0+)?)?(?:Z|\+00:00)?$")

Clock = Callable[[], datetime]


def utcnow() -> datetime:
    """The current time, timezone-aware in UTC."""
    return datetime.now(UTC)


def as_utc(moment: datetime) -> datetime:
    """A datetime in UTC; naive values are taken as UTC (the game stores UTC without a zone)."""
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def window_start(moment: datetime) -> datetime:
    """The start of the UTC hour containing `moment`."""
    return as_utc(moment).replace(minute=0, second=0, microsecond=0)


def window_id_of(moment: datetime) -> str:
    """Window id (`YYYY-MM-DDTHH:00`, UTC) of the hour containing `moment`."""
    return window_start(moment).strftime(WINDOW_ID_FORMAT)


def parse_window_id(window_id: str) -> datetime:
    """Start of the window named `window_id`; raises ValueError with the expected format."""
    match = _WINDOW_ID_PATTERN.match(window_id.strip()) if isinstance(window_id, str) else None
    if match is None:
        raise ValueError(f"window id {window_id!r} is not a UTC hour like 2025-01-15T10:00")
    return datetime.strptime(f"{match.group(1)}T{match.group(2)}", "%Y-%m-%dT%H").replace(tzinfo=UTC)


@lru_cache(maxsize=8192)
def normalize_window_id(window_id: str | None) -> str | None:
    """The canonical form of a game windowId that names an hour, or None when it names none."""
    # Cached: a week's rows name only 168 distinct windows, and every row is normalized.
    if window_id is None or window_id != window_id.strip():
        # Surrounding blanks would sort outside `window_id_prefix_ranges`: such an id names no hour here.
        return None
    try:
        return parse_window_id(window_id).strftime(WINDOW_ID_FORMAT)
    except ValueError:
        return None


def window_id_prefix_ranges(window_id: str) -> list[tuple[str, str]]:
    """String ranges [low, high) that hold every spelling of this hour's id that `normalize_window_id` takes
    ("2025-03-02T09:00", "2025-03-02 09:00:00+00:00", ...): a query on them reads every row assigned to the hour."""
    start = parse_window_id(window_id)
    day, hour = start.strftime("%Y-%m-%d"), start.hour
    return [(f"{day}{separator}{hour:02d}:00", f"{day}{separator}{hour:02d}:01") for separator in (" ", "T")]


def window_id_day_range(first: str, last: str) -> tuple[str, str]:
    """One string range [low, high) that holds every spelling of every hour from `first` to `last` (and of the
    other hours of their days: a caller keeps the windows it wants)."""
    low = parse_window_id(first).strftime("%Y-%m-%d")
    high = (parse_window_id(last) + timedelta(days=1)).strftime("%Y-%m-%d")
    return low, high


def window_bounds(window_id: str) -> tuple[datetime, datetime]:
    """[start, end) of a window, timezone-aware UTC."""
    start = parse_window_id(window_id)
    return start, start + WINDOW


def lookback_window_ids(lookback_hours: int, until: datetime) -> list[str]:
    """Ids of the `lookback_hours` whole hours that end at or before `until`, oldest first."""
    if lookback_hours < 1:
        raise ValueError(f"lookback must be at least 1 hour, got {lookback_hours}")
    last_end = window_start(until)
    first = last_end - lookback_hours * WINDOW
    return [(first + i * WINDOW).strftime(WINDOW_ID_FORMAT) for i in range(lookback_hours)]


def is_window_closed(window_id: str, *, outcomes_recorded: bool, now: datetime, grace_minutes: int) -> bool:
    """A window is closed when its outcomes are recorded or the grace period after its hour passed."""
    if outcomes_recorded:
        return True
    _, end = window_bounds(window_id)
    return as_utc(now) >= end + timedelta(minutes=grace_minutes)
