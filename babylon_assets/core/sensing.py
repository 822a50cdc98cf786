"""What the window sensor asks for (DESIGN 3): closed windows with rows, again when late rows arrive, a
bounded amount per tick. No Dagster here: the sensor is a thin shell over `plan_window_requests`."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from babylon_assets.core.window_time import is_window_closed, parse_window_id

CURSOR_VERSION = 1


def rows_fingerprint(row_count: int) -> str:
    """The sensor's fingerprint of a window's rows: how many there are. Late rows are new rows, and a count
    comes from the (windowId) index alone, so a tick over 200k rows reads no JSON."""
    return f"n{row_count}"


@dataclass(frozen=True, slots=True)
class WindowRangeRequest:
    """One run to request: consecutive windows and the fingerprints they are requested at."""

    first: str
    last: str
    fingerprints: dict[str, str]

    @property
    def run_key(self) -> str:
        """Window range + fingerprint of its rows: the same data is never requested twice."""
        digest = hashlib.sha1(json.dumps(self.fingerprints, sort_keys=True).encode()).hexdigest()[:12]
        return f"{self.first}..{self.last}#{digest}"


@dataclass(slots=True)
class SensorPlan:
    """The requests of one tick, what waits for a later tick, and the cursor after this tick."""

    requests: list[WindowRangeRequest] = field(default_factory=list)
    waiting: int = 0
    open_windows: int = 0
    requested: dict[str, str] = field(default_factory=dict)

    def cursor(self) -> str:
        """The cursor to store: the fingerprint each window was last requested at."""
        return json.dumps({"v": CURSOR_VERSION, "requested": self.requested}, sort_keys=True, separators=(",", ":"))


def parse_cursor(cursor: str | None) -> dict[str, str]:
    """The requested fingerprints of a cursor (an empty or unknown cursor starts from nothing)."""
    if not cursor:
        return {}
    data = json.loads(cursor)
    if data.get("v") != CURSOR_VERSION:
        return {}
    return dict(data["requested"])


def plan_window_requests(
    row_counts: Mapping[str, int],
    with_outcomes: set[str],
    requested: Mapping[str, str],
    *,
    now: datetime,
    grace_minutes: int,
    partition_start: str,
    max_runs: int,
    max_windows_per_run: int,
) -> SensorPlan:
    """Closed windows whose rows changed since they were last requested, oldest first, as at most `max_runs`
    ranges of consecutive windows; the rest wait for the next tick."""
    start = parse_window_id(partition_start)
    due: list[str] = []
    plan = SensorPlan(requested=dict(requested))
    for window_id in sorted(row_counts):
        if parse_window_id(window_id) < start:
            continue
        fingerprint = rows_fingerprint(row_counts[window_id])
        if requested.get(window_id) == fingerprint:
            continue
        if not is_window_closed(
            window_id, outcomes_recorded=window_id in with_outcomes, now=now, grace_minutes=grace_minutes
        ):
            plan.open_windows += 1
            continue
        due.append(window_id)
    ranges: list[list[str]] = []
    for window_id in due:
        current = ranges[-1] if ranges else None
        if (
            current is not None
            and len(current) < max_windows_per_run
            and parse_window_id(window_id) - parse_window_id(current[-1]) == timedelta(hours=1)
        ):
            current.append(window_id)
        else:
            ranges.append([window_id])
    for windows in ranges[:max_runs]:
        fingerprints = {w: rows_fingerprint(row_counts[w]) for w in windows}
        plan.requests.append(WindowRangeRequest(windows[0], windows[-1], fingerprints))
        plan.requested.update(fingerprints)
    plan.waiting = sum(len(windows) for windows in ranges[max_runs:])
    return plan


@dataclass(frozen=True, slots=True)
class RetrainDecision:
    """Whether the training sensor launches a run now, and why (or why not)."""

    launch: bool
    reason: str
    run_key: str | None = None
    cursor: str | None = None


def plan_retraining(
    ready_scored: list[str],
    new_since_checkpoint: list[str] | None,
    *,
    min_ready: int,
    new_before_retrain: int,
    in_flight: int,
    cursor: str | None,
) -> RetrainDecision:
    """Launch when >= min_ready ready, scored windows lie in the lookback and >= new_before_retrain of them
    were scored since the last checkpoint (`None`: no checkpoint yet, so only the first rule applies);
    never while a training run is in flight, never twice for the same windows (the cursor)."""
    if in_flight:
        return RetrainDecision(False, f"{in_flight} training run(s) in flight; waiting for it to finish")
    if len(ready_scored) < min_ready:
        return RetrainDecision(
            False, f"{len(ready_scored)} ready, scored window(s) in the lookback; need >= {min_ready}"
        )
    if new_since_checkpoint is not None and len(new_since_checkpoint) < new_before_retrain:
        return RetrainDecision(
            False,
            f"{len(new_since_checkpoint)} window(s) scored since the last checkpoint; "
            f"need >= {new_before_retrain} (NEW_WINDOWS_BEFORE_RETRAIN)",
        )
    basis = ready_scored if new_since_checkpoint is None else new_since_checkpoint
    key = hashlib.sha256(",".join(sorted(basis)).encode()).hexdigest()[:16]
    if key == cursor:
        return RetrainDecision(False, "training was already launched for these windows")
    what = "no checkpoint yet" if new_since_checkpoint is None else f"{len(basis)} new scored window(s)"
    return RetrainDecision(
        True, f"{len(ready_scored)} ready, scored windows in the lookback, {what}", run_key=f"train-{key}", cursor=key
    )
