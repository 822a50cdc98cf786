"""The on-policy loop in-process (issue 20): what `babylon learn` and the learning study run. Each cycle plays the
next rollout hours with the rollout policy, scores them through the window graph and trains on the policy's own
groups; the next cycle's rollouts are played by the checkpoint this one made."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from dagster import DagsterInstance, Definitions

from babylon_assets.core.window_time import parse_window_id, window_id_of
from babylon_assets.db.store import Store
from babylon_assets.orchestration.pipeline import materialize_rollouts, materialize_training, materialize_windows
from babylon_assets.orchestration.run_health import reap_dead_runs
from babylon_assets.play.rollouts import RolloutPlan, RolloutServer, rollout_hours_played
from babylon_assets.training.run import TrainingOutcome, listening


class LearningCycleError(RuntimeError):
    """A cycle's rollouts or training failed: the loop stops there (the next call goes on from the same hours)."""


@dataclass
class CycleReport:
    """One cycle: its hours, the checkpoint it made, and how long each phase took."""

    cycle: int
    hours: list[str]
    outcome: TrainingOutcome
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def metrics(self) -> dict[str, float]:
        """The cycle's last training step's metrics."""
        return self.outcome.steps[-1].metrics if self.outcome.steps else {}


def next_rollout_hour(store: Store, plan: RolloutPlan) -> int:
    """The index of the first rollout hour not fully played (the loop goes on from there)."""
    index, chunk = 0, 168
    while True:
        played = set(rollout_hours_played(store, plan, index + chunk))
        for offset in range(index, index + chunk):
            if plan.hour(offset) not in played:
                return offset
        index += chunk


def run_learning_cycles(
    defs: Definitions,
    instance: DagsterInstance,
    store: Store,
    settings: Any,
    cycles: int,
    windows_per_cycle: int,
    *,
    on_phase: Callable[[int, str], None] | None = None,
    should_stop: Callable[[], bool] = lambda: False,
) -> list[CycleReport]:
    """Run up to `cycles` cycles (stopping between cycles once `should_stop` says so); the rollout server is stopped
    at the end."""
    plan = RolloutPlan.from_settings(settings)
    # A killed earlier loop's runs hold their pool slots (one rollout, one training) until failed: reap them first.
    reap_dead_runs(instance, store)
    first = next_rollout_hour(store, plan)
    reports: list[CycleReport] = []
    try:
        for cycle in range(1, cycles + 1):
            if should_stop():
                break
            hours = [plan.hour(first + i) for i in range(windows_per_cycle)]
            first += windows_per_cycle
            until = window_id_of(parse_window_id(hours[-1]) + timedelta(hours=1))
            seconds: dict[str, float] = {}
            began = time.perf_counter()
            if on_phase:
                on_phase(cycle, "rollouts")
            runs = materialize_rollouts(defs, hours, instance)
            failed = [run for run in runs if not run.success]
            if failed:
                raise LearningCycleError(f"rollout run {failed[0].run_id} ({failed[0].label}) failed")
            seconds["rollouts"] = time.perf_counter() - began
            began = time.perf_counter()
            if on_phase:
                on_phase(cycle, "scoring")
            scored = materialize_windows(defs, hours, instance)
            if not any(run.success for run in scored):
                raise LearningCycleError(f"the window graph failed on {hours[0]} .. {hours[-1]}")
            seconds["scoring"] = time.perf_counter() - began
            began = time.perf_counter()
            if on_phase:
                on_phase(cycle, "training")
            outcomes: list[TrainingOutcome] = []
            with listening(on_outcome=outcomes.append):
                trained = materialize_training(defs, instance, until=until)
            if not trained.success or not outcomes:
                raise LearningCycleError(f"training run {trained.run_id} failed: its training_batches row says why")
            seconds["training"] = time.perf_counter() - began
            reports.append(CycleReport(cycle, hours, outcomes[-1], seconds))
    finally:
        RolloutServer(plan).stop()
    return reports
