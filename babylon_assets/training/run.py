"""One training run over the newest training dataset (plain Python; the `trained_checkpoint` asset and
`babylon train` call it): ITERATIONS steps, each on every group of up to WINDOWS_PER_ITERATION sampled
windows, through ART's backend protocol, with its records, lineage and W&B run."""

from __future__ import annotations

import asyncio
import traceback
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from babylon_assets.core.agent_protocol import parse_or_hold
from babylon_assets.core.eligibility import AgentWindow
from babylon_assets.core.on_policy import (
    GroupAccounting,
    GroupVerdict,
    PolicyVersions,
    SampledAnswer,
    base_version,
    judge_group,
)
from babylon_assets.core.policy_guards import PolicyBehaviour, reward_spread
from babylon_assets.core.training_plan import Spread, ranks_within_groups, sample_decisions, sample_windows
from babylon_assets.core.views import decision_answers, decision_call
from babylon_assets.db.store import Store, StoreError
from babylon_assets.db.training_records import StepMember, TrainingRecords
from babylon_assets.db.window_records import WindowRecords
from babylon_assets.training.art_trajectories import to_art_trajectory
from babylon_assets.training.dataset_export import agent_windows_of
from babylon_assets.training.tracking import WandbTracker

if TYPE_CHECKING:
    import art


@dataclass(frozen=True)
class TrainingOptions:
    """What a training run does (the seed's flags, DESIGN 7)."""

    iterations: int
    windows_per_iteration: int
    learning_rate: float
    model_name: str
    project: str
    base_model: str
    seed: int = 0
    decisions_per_trajectory: int = 0  # 0: every decision of each agent-window
    # On-policy (issue 20): only groups one version of this policy played, at most max_steps_off_policy behind.
    on_policy: bool = True
    max_steps_off_policy: int = 1

    @property
    def policy_versions(self) -> PolicyVersions:
        """How this policy's versions are named (the base as evaluation names it)."""
        return PolicyVersions(self.model_name, base_version(self.base_model))


@dataclass
class StepReport:
    """One iteration's step."""

    iteration: int
    step: int
    windows: list[str]
    groups: int
    trajectories: int
    metrics: dict[str, float]
    checkpoint_path: str | None


@dataclass
class TrainingOutcome:
    """What a run did, for the asset's metadata and the CLI's summary."""

    batch_id: str
    dataset_id: str
    steps: list[StepReport] = field(default_factory=list)
    model_version: str | None = None
    checkpoint_path: str | None = None
    wandb_run_id: str | None = None
    wandb_dir: str | None = None
    windows: list[str] = field(default_factory=list)
    trajectory_ids: list[str] = field(default_factory=list)
    rewards: Spread = field(default_factory=lambda: Spread.of([]))
    pnl: Spread = field(default_factory=lambda: Spread.of([]))
    agents: list[tuple[str, float, int]] = field(default_factory=list)  # (agent, mean reward, agent-windows)
    groups: GroupAccounting = field(default_factory=GroupAccounting)  # the version rules' verdicts, all steps


# Who else wants to hear of each step and the outcome in this process: `babylon train` runs the graph
# in-process and draws its progress bar from here; the asset itself only logs.
_listeners: list[tuple[Callable[[StepReport], None] | None, Callable[[TrainingOutcome], None] | None]] = []


@contextmanager
def listening(
    on_step: Callable[[StepReport], None] | None = None, on_outcome: Callable[[TrainingOutcome], None] | None = None
) -> Iterator[None]:
    """Hear every training run of this process while the block runs."""
    entry = (on_step, on_outcome)
    _listeners.append(entry)
    try:
        yield
    finally:
        _listeners.remove(entry)


# A checkpoint that lives in W&B (ServerlessBackend), not in a folder.
WANDB_ARTIFACT_SCHEME = "wandb-artifact://"


class NothingToTrainError(StoreError):
    """No training dataset, or one without a group to learn from."""


def run_training(
    store: Store,
    backend: art.Backend,
    options: TrainingOptions,
    *,
    tracker: WandbTracker | None = None,
    batch_id: str | None = None,
    on_step: Callable[[StepReport], None] | None = None,
) -> TrainingOutcome:
    """Train on the newest dataset; a failure marks the batch failed with its error and is raised again."""
    latest = WindowRecords(store).latest_dataset()
    if latest is None or not latest[1]:
        raise NothingToTrainError(
            "no training dataset with members yet: materialize training_dataset first "
            "(`babylon score`, then the dataset; `make demo` does both)"
        )
    record, members = latest
    records = TrainingRecords(store)
    batch_id = batch_id or f"batch-{uuid.uuid4().hex[:16]}"
    outcome = TrainingOutcome(batch_id=batch_id, dataset_id=str(record["dataset_id"]))
    records.start_batch(batch_id, options.base_model, f"{options.model_name}@pending")
    try:
        if tracker is not None:
            tracked = tracker.start(
                batch_id,
                {
                    **options.__dict__,
                    "batch_id": batch_id,
                    "dataset_id": outcome.dataset_id,
                    "backend": type(backend).__name__,
                },
            )
            outcome.wandb_run_id, outcome.wandb_dir = tracked.run_id, tracked.run_dir
        asyncio.run(_train_then_close(store, backend, options, members, records, outcome, tracker, on_step))
    except BaseException as error:
        records.fail_batch(batch_id, f"{type(error).__name__}: {error}\n{traceback.format_exc(limit=8)}")
        if tracker is not None:
            tracker.finish(failed=True)
        raise
    if tracker is not None:
        tracker.finish()
    for _, hear_outcome in list(_listeners):
        if hear_outcome is not None:
            hear_outcome(outcome)
    return outcome


async def _train_then_close(store: Store, backend: art.Backend, *args: Any) -> None:
    try:
        await _train(store, backend, *args)
    finally:
        # The run's trainer goes with it (its model and optimizer freed), so an in-process loop's next run does not
        # hold two; the next run loads the newest checkpoint again.
        await backend.close()


async def _train(
    store: Store,
    backend: art.Backend,
    options: TrainingOptions,
    members: list[dict[str, Any]],
    records: TrainingRecords,
    outcome: TrainingOutcome,
    tracker: WandbTracker | None,
    on_step: Callable[[StepReport], None] | None,
) -> None:
    import art

    by_window: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for member in members:
        by_window[str(member["window_id"])].append(member)
    agent_windows: dict[str, dict[str, AgentWindow]] = {}
    answers: dict[str, dict[tuple[str, int], SampledAnswer]] = {}
    policy = options.policy_versions

    def window(window_id: str) -> dict[str, AgentWindow]:
        if window_id not in agent_windows:
            agent_windows[window_id] = agent_windows_of(store, window_id)
            if options.on_policy:
                ids = [t for aw in agent_windows[window_id].values() for t in aw.trajectory_ids]
                answers[window_id] = store.sampled_answers(ids)
        return agent_windows[window_id]

    def groups_of(window_id: str) -> dict[str, list[tuple[dict[str, Any], AgentWindow]]]:
        found = window(window_id)
        by_group: dict[str, list[tuple[dict[str, Any], AgentWindow]]] = defaultdict(list)
        for member in by_window[window_id]:
            agent_window = found.get(str(member["agent_window_id"]))
            if agent_window is not None and agent_window.llm_decisions > 0:
                by_group[str(member["group_id"])].append((member, agent_window))
        return by_group

    def verdict(
        window_id: str, group_id: str, pairs: list[tuple[dict[str, Any], AgentWindow]], step: int
    ) -> GroupVerdict:
        versions = [
            None if answer is None else answer.model_version
            for _, aw in pairs
            for answer in decision_answers(aw, answers.get(window_id, {}))
        ]
        return judge_group(group_id, versions, policy, step, options.max_steps_off_policy)

    model: art.TrainableModel[Any, Any] = art.TrainableModel(
        name=options.model_name, project=options.project, base_model=options.base_model
    )
    await model.register(backend)
    # Draws continue from the model's step: a run that goes on from an earlier checkpoint samples what one
    # long run would have sampled, not the first run's windows again.
    first_step = await model.get_step()
    _register_unrecorded_checkpoints(backend, model, records, options, outcome.batch_id)
    records.mark_training(outcome.batch_id)
    used: dict[str, tuple[StepMember, AgentWindow]] = {}
    last_loss: float | None = None
    for iteration in range(1, options.iterations + 1):
        draw = first_step + iteration
        policy_step = first_step + iteration - 1  # the step of the policy this iteration trains from
        candidates = list(by_window)
        accounting = GroupAccounting()
        trainable: dict[tuple[str, str], GroupVerdict] = {}
        if options.on_policy:
            # Only windows with a group of the policy's own recent play are drawn from; the rest are counted.
            for window_id in candidates:
                for group_id, pairs in sorted(groups_of(window_id).items()):
                    judged = verdict(window_id, group_id, pairs, policy_step)
                    accounting.add(judged)
                    if judged.trainable:
                        trainable[(window_id, group_id)] = judged
            # The freshest play first: windows of the current version, then those one step behind, and so on.
            by_staleness: dict[int, set[str]] = defaultdict(set)
            for (window_id, _), judged in trainable.items():
                by_staleness[judged.staleness or 0].add(window_id)
            candidates = []
            for staleness in sorted(by_staleness):
                wanted = options.windows_per_iteration - len(candidates)
                if wanted <= 0:
                    break
                fresh = sorted(by_staleness[staleness] - set(candidates))
                candidates += sample_windows(fresh, wanted, options.seed, draw)
            outcome.groups.trainable += accounting.trainable
            outcome.groups.excluded.update(accounting.excluded)
            outcome.groups.staleness.update(accounting.staleness)
            if not candidates:
                raise NothingToTrainError(
                    f"no group of {options.model_name}'s own play within {options.max_steps_off_policy} step(s) of "
                    f"step {policy_step} in the dataset ({dict(accounting.excluded)} excluded): play rollouts first "
                    "(policy_rollouts, `babylon learn`), or set ON_POLICY=false to train on recorded play"
                )
        windows = (
            candidates
            if options.on_policy
            else sample_windows(candidates, options.windows_per_iteration, options.seed, draw)
        )
        groups: list[art.TrajectoryGroup] = []
        step_members: list[StepMember] = []
        behaviour = PolicyBehaviour()
        group_rewards: list[list[float]] = []
        for window_id in windows:
            by_group = groups_of(window_id)
            for group_id in sorted(by_group):
                if options.on_policy and (window_id, group_id) not in trainable:
                    continue
                pairs = by_group[group_id]
                groups.append(
                    art.TrajectoryGroup(
                        [
                            to_art_trajectory(
                                aw,
                                float(m["reward"]),
                                group_id,
                                sample_decisions(
                                    aw.llm_decisions,
                                    options.decisions_per_trajectory,
                                    options.seed,
                                    draw,
                                    aw.agent_window_id,
                                ),
                                decision_answers(aw, answers[window_id]) if options.on_policy else None,
                            )
                            for m, aw in pairs
                        ]
                    )
                )
                group_rewards.append([float(m["reward"]) for m, _ in pairs])
                for m, aw in pairs:
                    behaviour.add_agent_window(_decisions_of(aw), _trades_of(aw))
                    step_members.append(
                        StepMember(
                            aw.agent_window_id, window_id, group_id, tuple(aw.trajectory_ids), float(m["reward"])
                        )
                    )
                    used[aw.agent_window_id] = (step_members[-1], aw)
        # ART's backend protocol exactly: no backend-specific keyword (ART's own backends refuse them).
        result = await backend.train(model, groups, learning_rate=options.learning_rate)
        metrics = dict(result.metrics)
        metrics.update(accounting.as_metrics() if options.on_policy else {})
        metrics.update({f"policy_{name}": value for name, value in behaviour.as_metrics().items()})
        metrics.update(reward_spread(group_rewards))
        checkpoint = checkpoint_of(result)
        rewards = [m.reward for m in step_members]
        metrics.update(
            {"reward_mean": Spread.of(rewards).mean, "reward_std": _std(rewards), "windows": float(len(windows))}
        )
        if checkpoint:
            version = policy.version_at(result.step)
            records.record_step(
                model_name=options.model_name, step=result.step, batch_id=outcome.batch_id, members=step_members
            )
            records.add_checkpoint(
                model_version=version,
                base_model=options.base_model,
                batch_id=outcome.batch_id,
                storage_path=str(checkpoint),
                avg_reward=Spread.of(rewards).mean,
                wandb_run_id=outcome.wandb_run_id,
            )
            outcome.model_version, outcome.checkpoint_path = version, str(checkpoint)
        if "loss" in metrics:
            last_loss = metrics["loss"]
        if tracker is not None:
            tracker.log(result.step, metrics)
        report = StepReport(
            iteration,
            result.step,
            windows,
            len(groups),
            len(step_members),
            metrics,
            None if checkpoint is None else str(checkpoint),
        )
        outcome.steps.append(report)
        for hear in [on_step, *(listener for listener, _ in _listeners)]:
            if hear is not None:
                hear(report)
    if tracker is not None and outcome.checkpoint_path and outcome.model_version:
        tracker.log_adapter(outcome.checkpoint_path, outcome.model_version)
    rewards_by_member = [(m.group_id, m.agent_window_id, m.reward) for m, _ in used.values()]
    outcome.windows = sorted({m.window_id for m, _ in used.values()})
    outcome.trajectory_ids = sorted({t for m, _ in used.values() for t in m.trajectory_ids})
    outcome.rewards = Spread.of([m.reward for m, _ in used.values()])
    outcome.pnl = Spread.of([aw.final_pnl for _, aw in used.values() if aw.final_pnl is not None])
    per_agent: dict[str, list[float]] = defaultdict(list)
    for used_member, aw in used.values():
        per_agent[aw.agent_id].append(used_member.reward)
    outcome.agents = sorted(
        ((agent, sum(r) / len(r), len(r)) for agent, r in per_agent.items()), key=lambda a: (-a[1], a[0])
    )
    records.complete_batch(
        outcome.batch_id,
        model_version=outcome.model_version or f"{options.model_name}@0",
        trajectory_ids=outcome.trajectory_ids,
        rewards=[r for _, _, r in rewards_by_member],
        rankings=ranks_within_groups(rewards_by_member),
        loss=last_loss,
    )


def _decisions_of(agent_window: AgentWindow) -> list[Any]:
    """The agent-window's decisions as parsed (an unparseable answer as the HOLD it became)."""
    decisions = []
    for step in agent_window.steps:
        call = decision_call(step)
        if call is not None:
            decisions.append(parse_or_hold(call.response)[0])
    return decisions


def _trades_of(agent_window: AgentWindow) -> int:
    """Trades its rows executed (their tradesExecuted, else its successful trading actions)."""
    recorded = [
        t.trades_executed if t.trades_executed is not None else t.metrics.tradesExecuted
        for t in agent_window.trajectories
    ]
    if all(value is not None for value in recorded):
        return sum(int(value or 0) for value in recorded)
    trading = {"OPEN_LONG", "OPEN_SHORT", "CLOSE", "BUY_YES", "BUY_NO"}
    return sum(1 for step in agent_window.steps if step.action.success and step.action.actionType in trading)


def _std(values: list[float]) -> float:
    if len(values) < 2:
        return 0.0
    mean = sum(values) / len(values)
    return float((sum((v - mean) ** 2 for v in values) / len(values)) ** 0.5)


def _register_unrecorded_checkpoints(
    backend: Any, model: Any, records: TrainingRecords, options: TrainingOptions, batch_id: str
) -> None:
    """A run killed after its backend wrote a checkpoint and before the store registered it leaves the checkpoint on
    disk only, and its retry trains on from it (`get_step`): register it first, so the lineage has no hole. Its step
    members died with the killed run; the row names the batch of the run that registered it (the retry of the same
    dataset). ART_PATH is shared storage (DESIGN 8): every host that trains sees the same checkpoints."""
    steps_on_disk = getattr(backend, "checkpoint_steps", None)
    if steps_on_disk is None:  # ART's own backends: their checkpoints are registered from the train() result only
        return
    registered = {row.modelId for row in records.checkpoints()}
    for step in steps_on_disk(model):
        version = options.policy_versions.version_at(step)
        if version not in registered:
            records.add_checkpoint(
                model_version=version,
                base_model=options.base_model,
                batch_id=batch_id,
                storage_path=str(backend.checkpoint_dir(model, step)),
                avg_reward=None,
                wandb_run_id=None,
            )


def checkpoint_of(result: Any) -> str | None:
    """Where the backend put this step's checkpoint, as its own result type says: a folder for ART's LocalBackend
    (`LocalTrainResult.checkpoint_path`) and ours, a W&B artifact for ART's ServerlessBackend
    (`ServerlessTrainResult.artifact_name`, kept as `wandb-artifact://<entity/project/model:stepN>`)."""
    from art.types import ServerlessTrainResult

    if isinstance(result, ServerlessTrainResult):
        return f"{WANDB_ARTIFACT_SCHEME}{result.artifact_name}" if result.artifact_name else None
    path = getattr(result, "checkpoint_path", None)
    return None if path is None else str(path)
