"""Writing the training dataset as ART trajectories with rewards, for use outside the platform."""

from __future__ import annotations

from collections import defaultdict
from typing import TextIO

from babylon_assets.core.eligibility import AgentWindow, EligibilityRules, split_window
from babylon_assets.db.store import Store, StoreError
from babylon_assets.db.window_records import WindowRecords
from babylon_assets.training.art_trajectories import to_art_trajectory


def agent_windows_of(store: Store, window_id: str) -> dict[str, AgentWindow]:
    """Every stitched agent-window of a window (eligible or not) by id."""
    read = split_window(window_id, store.iter_window(window_id), EligibilityRules(min_actions=0, min_agents=1))
    windows = {aw.agent_window_id: aw for aw in read.eligible}
    windows.update({item.agent_window_id: item for item, _ in read.excluded if isinstance(item, AgentWindow)})
    return windows


def export_dataset_jsonl(store: Store, out: TextIO) -> tuple[str, int, int]:
    """Write the newest dataset, one `art.Trajectory` JSON per line; returns (dataset id, written, missing)."""
    latest = WindowRecords(store).latest_dataset()
    if latest is None:
        raise StoreError("no training dataset yet: materialize the training_dataset asset first (see `make demo`)")
    record, members = latest
    by_window: dict[str, list[dict[str, object]]] = defaultdict(list)
    for member in members:
        by_window[str(member["window_id"])].append(member)
    written = missing = 0
    for window_id in sorted(by_window):
        found = agent_windows_of(store, window_id)
        for member in by_window[window_id]:
            agent_window = found.get(str(member["agent_window_id"]))
            if agent_window is None:
                missing += 1  # its rows were deleted from the game's table since the dataset was made
                continue
            trajectory = to_art_trajectory(
                agent_window,
                float(member["reward"]),  # type: ignore[arg-type]
                str(member["group_id"]),
            )
            out.write(trajectory.model_dump_json() + "\n")
            written += 1
    return str(record["dataset_id"]), written, missing
