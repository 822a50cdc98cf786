"""On-policy rollouts (issue 20): the rollout policy plays every seat of a training hour, through the gateway, so the
hour's play is a GRPO group of the policy's own samples (plain Python; the `policy_rollouts` asset and `babylon
learn` call it).

The rollout policy is the newest trained checkpoint of MODEL_NAME (the base before the first), served by a llama.cpp
server that follows it: the base GGUF with the checkpoint's adapter, switched between windows, never within one.
Every call is constrained by the observation's decision schema and sampled at ROLLOUT_TEMPERATURE with an otherwise
neutral sampler; the gateway records each answer's token ids, their logprobs and the version that served it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from babylon_assets.core.agent_protocol import ARCHETYPES, parse_or_hold
from babylon_assets.core.on_policy import base_version
from babylon_assets.core.policy_guards import PolicyBehaviour
from babylon_assets.core.window_time import WINDOW, parse_window_id, window_id_of
from babylon_assets.db.evaluation_records import EvaluationRecords
from babylon_assets.db.play_records import PlayRecords
from babylon_assets.db.store import Store
from babylon_assets.gateway.app import Upstream
from babylon_assets.gateway.recording import gateway_trajectory_id
from babylon_assets.gateway.server import gateway_in_thread
from babylon_assets.llm.agent import LlmAgent, LlmEndpoint
from babylon_assets.play.simulator import SimulationPlan, simulate

ROLLOUT_AGENT_PREFIX = "rollout-"
# Each llama.cpp slot holds one seat's prompt (about 700 tokens) and the longest answer the schema allows.
SLOT_CONTEXT_TOKENS = 2048


@dataclass(frozen=True, slots=True)
class RolloutPlan:
    """What a rollout window is: ROLLOUT_* settings."""

    start: datetime
    seed: int
    agents: int
    decisions: int
    temperature: float
    parallel: int
    port: int
    folder: Path
    model_name: str
    base_model: str

    @classmethod
    def from_settings(cls, settings: Any) -> RolloutPlan:
        """The plan these settings name."""
        return cls(
            start=parse_window_id(settings.ROLLOUT_START),
            seed=settings.ROLLOUT_SEED,
            agents=settings.ROLLOUT_AGENTS,
            decisions=settings.ROLLOUT_DECISIONS,
            temperature=settings.ROLLOUT_TEMPERATURE,
            parallel=settings.ROLLOUT_PARALLEL,
            port=settings.ROLLOUT_SERVER_PORT,
            folder=Path(settings.ROLLOUT_SERVER_FOLDER).resolve(),
            model_name=settings.MODEL_NAME,
            base_model=settings.BASE_MODEL,
        )

    def hour(self, index: int) -> str:
        """The window id of the index-th rollout hour."""
        return window_id_of(self.start + index * WINDOW)

    def agent_ids(self) -> list[tuple[str, str]]:
        """(agent id, archetype) of each seat: the same seats every hour."""
        archetypes = list(ARCHETYPES)
        return [
            (f"{ROLLOUT_AGENT_PREFIX}{i + 1:02d}-{archetypes[i % len(archetypes)]}", archetypes[i % len(archetypes)])
            for i in range(self.agents)
        ]


@dataclass(frozen=True, slots=True)
class RolloutPolicy:
    """The version that plays rollouts now, and its adapter (None: the base)."""

    version: str
    adapter: Path | None


def rollout_policy(store: Store, plan: RolloutPlan) -> RolloutPolicy:
    """The newest checkpoint of the model whose folder is still there, else the base."""
    newest = EvaluationRecords(store).newest_checkpoint(plan.model_name)
    if newest is not None and Path(str(newest.storagePath)).is_dir():
        return RolloutPolicy(str(newest.modelId), Path(str(newest.storagePath)))
    return RolloutPolicy(base_version(plan.base_model), None)


class RolloutServer:
    """The llama.cpp server that follows the rollout policy: restarted with a new adapter only when asked for another
    version (between windows: one call of `serving` plays one window)."""

    def __init__(self, plan: RolloutPlan) -> None:
        self.plan = plan
        self.switches = 0

    def _serving_file(self) -> Path:
        return self.plan.folder / "serving-version.json"

    def served_version(self) -> str | None:
        """The version the running server serves, or None when none runs."""
        from babylon_assets.llm import local_server

        running = local_server.status(self.plan.folder)
        if running is None or not running.healthy or not self._serving_file().is_file():
            return None
        return str(json.loads(self._serving_file().read_text()).get("version"))

    @contextmanager
    def serving(self, policy: RolloutPolicy) -> Iterator[Upstream]:
        """An upstream for this version: the running server when it serves it, else a server restarted with it."""
        from babylon_assets.llm import local_server
        from babylon_assets.training.gguf_export import base_model_gguf, export_adapter_gguf

        running = local_server.status(self.plan.folder)
        if self.served_version() != policy.version or running is None:
            lora = [export_adapter_gguf(policy.adapter, policy.adapter / "adapter.gguf")] if policy.adapter else []
            running = local_server.restart(
                self.plan.folder,
                port=self.plan.port,
                context=SLOT_CONTEXT_TOKENS,
                model=base_model_gguf(self.plan.base_model),
                lora=lora,
                alias=policy.version,
                parallel=self.plan.parallel,
            )
            self._serving_file().write_text(json.dumps({"version": policy.version}))
            self.switches += 1
        yield Upstream(model=f"openai/{policy.version}", api_base=running.base_url, version=policy.version)

    def stop(self) -> None:
        """Stop the server (the next window starts it again)."""
        from babylon_assets.llm import local_server

        local_server.stop(self.plan.folder)
        self._serving_file().unlink(missing_ok=True)


@dataclass
class RolloutWindow:
    """One hour of rollouts: who played it, and how."""

    window_id: str
    version: str
    agent_windows: int
    decisions: int
    unparseable: int
    replayed: bool  # False: the hour had been played already and was kept
    behaviour: PolicyBehaviour = field(default_factory=PolicyBehaviour)
    seconds: float = 0.0


def play_rollout_window(
    store: Store, plan: RolloutPlan, window_id: str, server: RolloutServer, *, now: datetime
) -> RolloutWindow:
    """Play one hour with the rollout policy in every seat (idempotent: an hour whose seats all played is kept; one
    cut short is played again from its start)."""
    import time

    started = time.perf_counter()
    store.require_own_store("rollouts")
    seats = plan.agent_ids()
    ids = [gateway_trajectory_id(agent, window_id) for agent, _ in seats]
    existing = store.existing_trajectory_ids(ids)
    if len(existing) == len(ids):
        return RolloutWindow(window_id, _recorded_version(store, ids) or "?", len(ids), 0, 0, replayed=False)
    PlayRecords(store).discard_simulated_play(ids)
    policy = rollout_policy(store, plan)
    with server.serving(policy) as upstream, gateway_in_thread(store, upstream) as (url, recorder, api_key):
        endpoint = LlmEndpoint(
            "openai/policy",
            url,
            api_key=api_key,
            temperature=plan.temperature,
            max_tokens=64,
            timeout_s=600.0,
            retries=1,
            via_gateway=True,
            structured=True,
            neutral_sampler=True,
        )
        agents = [LlmAgent(agent, archetype, endpoint) for agent, archetype in seats]
        summary = simulate(
            store,
            SimulationPlan(
                agents=plan.agents,
                windows=1,
                duration_minutes=plan.decisions,
                seed=plan.seed,
                start=parse_window_id(window_id),
                llm=endpoint,
                concurrency=plan.parallel,
            ),
            now=now,
            agents=list(agents),
        )
        recorder.drain_from_thread(timeout_s=120.0)
    (window,) = summary.windows
    closing, behaviour = {}, PolicyBehaviour()
    for play in window.plays:
        closing[gateway_trajectory_id(play.agent_id, window_id)] = {
            "finalPnL": round(play.final_pnl, 2),
            "finalBalance": round(play.final_balance, 2),
            "tradesExecuted": play.trades,
        }
        behaviour.add_agent_window([parse_or_hold(d.reply.text)[0] for d in play.decisions], play.trades)
    PlayRecords(store).settle_simulated_play(closing, held_out=False)
    return RolloutWindow(
        window_id,
        policy.version,
        len(window.plays),
        sum(len(p.decisions) for p in window.plays),
        window.unparseable,
        replayed=True,
        behaviour=behaviour,
        seconds=time.perf_counter() - started,
    )


def _recorded_version(store: Store, trajectory_ids: list[str]) -> str | None:
    answers = store.sampled_answers(trajectory_ids[:1])
    return next((a.model_version for a in answers.values()), None)


def rollout_hours_played(store: Store, plan: RolloutPlan, last: int) -> list[str]:
    """Which of the first `last` rollout hours have every seat's play recorded."""
    hours = [plan.hour(i) for i in range(last)]
    seats = [agent for agent, _ in plan.agent_ids()]
    recorded = store.existing_trajectory_ids(gateway_trajectory_id(a, h) for h in hours for a in seats)
    return [h for h in hours if all(gateway_trajectory_id(a, h) in recorded for a in seats)]


def rollout_versions(store: Store, plan: RolloutPlan, last: int) -> dict[str, str | None]:
    """The version that played each of the first `last` rollout hours that were played (by its first seat's calls)."""
    seat = plan.agent_ids()[0][0]
    played = rollout_hours_played(store, plan, last)
    answers = store.sampled_answers(gateway_trajectory_id(seat, hour) for hour in played)
    by_trajectory = {trajectory: answer.model_version for (trajectory, _), answer in answers.items()}
    return {hour: by_trajectory.get(gateway_trajectory_id(seat, hour)) for hour in played}
