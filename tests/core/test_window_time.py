from datetime import UTC, datetime, timedelta, timezone

import pytest

from babylon_assets.core.window_time import (
    is_window_closed,
    lookback_window_ids,
    normalize_window_id,
    parse_window_id,
    window_bounds,
    window_id_of,
)


def test_window_id_is_the_utc_hour_of_the_moment():
    assert window_id_of(datetime(2025, 1, 15, 10, 59, 59, tzinfo=UTC)) == "2025-01-15T10:00"
    # 11:30 at UTC+2 is 09:30 UTC
    assert window_id_of(datetime(2025, 1, 15, 11, 30, tzinfo=timezone(timedelta(hours=2)))) == "2025-01-15T09:00"
    # naive values are taken as UTC, as the game stores them
    assert window_id_of(datetime(2025, 1, 15, 0, 0)) == "2025-01-15T00:00"


@pytest.mark.parametrize(
    "text", ["2025-01-15T10:00", "2025-01-15T10:00:00Z", "2025-01-15 10:00", "2025-01-15T10:00:00.000+00:00"]
)
def test_window_ids_in_the_game_forms_normalize(text):
    assert normalize_window_id(text) == "2025-01-15T10:00"
    assert parse_window_id(text) == datetime(2025, 1, 15, 10, tzinfo=UTC)


@pytest.mark.parametrize("text", ["window-7", "2025-01-15T10:30", "", "2025-01-15"])
def test_other_strings_are_not_window_ids(text):
    assert normalize_window_id(text) is None
    with pytest.raises(ValueError, match="UTC hour"):
        parse_window_id(text)


def test_bounds_and_lookback():
    assert window_bounds("2025-01-15T10:00") == (
        datetime(2025, 1, 15, 10, tzinfo=UTC),
        datetime(2025, 1, 15, 11, tzinfo=UTC),
    )
    ids = lookback_window_ids(3, datetime(2025, 1, 15, 14, 30, tzinfo=UTC))
    # the hour still running at `until` is not in the lookback
    assert ids == ["2025-01-15T11:00", "2025-01-15T12:00", "2025-01-15T13:00"]
    assert len(lookback_window_ids(168, datetime(2025, 1, 15, 14, tzinfo=UTC))) == 168
    with pytest.raises(ValueError):
        lookback_window_ids(0, datetime(2025, 1, 15, tzinfo=UTC))


def test_closure_by_outcomes_or_grace():
    now = datetime(2025, 1, 15, 11, 10, tzinfo=UTC)
    assert not is_window_closed("2025-01-15T10:00", outcomes_recorded=False, now=now, grace_minutes=15)
    assert is_window_closed("2025-01-15T10:00", outcomes_recorded=True, now=now, grace_minutes=15)
    assert is_window_closed(
        "2025-01-15T10:00", outcomes_recorded=False, now=now + timedelta(minutes=5), grace_minutes=15
    )
