"""Paired held-out evaluation of a checkpoint against its base model (plain Python; the
`checkpoint_evaluation` asset and the study call it).

Both policies play the same evaluation markets as the simulator's LLM agents, through the gateway (so the
calls are recorded as any agent's are, `isEvaluation`, never trained on). Locally each policy is a
llama.cpp server started for the evaluation: the base GGUF alone, or with the checkpoint's adapter;
with POLICY_API_BASE set, a server elsewhere that serves both names. A policy's play on a plan is stored
market by market as it finishes (`evaluation_plays`), so the base is played once for every checkpoint
evaluated on the same plan and an interrupted evaluation resumes where it stopped.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from babylon_assets.core.agent_protocol import ARCHETYPES, PROMPT_VERSION
from babylon_assets.core.decision_schema import SCHEMA_VERSION
from babylon_assets.core.eligibility import stitch_agent_windows
from babylon_assets.core.judging import Judge, JudgeGroup
from babylon_assets.core.on_policy import base_version
from babylon_assets.core.paired_stats import EvaluationReport, PlayResult, evaluate, max_drawdown
from babylon_assets.core.trajectory import ParsedTrajectory
from babylon_assets.core.window_time import WINDOW, parse_window_id, window_id_of
from babylon_assets.db.evaluation_records import EvaluationRecords
from babylon_assets.db.play_records import PlayRecords
from babylon_assets.db.store import Store
from babylon_assets.db.training_records import TrainedModelRecord
from babylon_assets.gateway.app import Upstream
from babylon_assets.gateway.recording import gateway_trajectory_id
from babylon_assets.gateway.server import free_port, gateway_in_thread
from babylon_assets.llm.agent import LlmAgent, LlmEndpoint
from babylon_assets.play.simulator import SimulationPlan, simulate

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvaluationPlan:
    """The fixed evaluation markets: each seed plays `windows` hours of its own from `start`."""

    seeds: tuple[int, ...]
    windows: int
    agents: int
    duration_minutes: int
    start: datetime
    temperature: float = 0.0
    max_tokens: int = 160
    step_seconds: int = 60
    structured: bool = True  # answers constrained by the observation's decision schema
    # Sampled play: each seat's decision drawn with a seed every policy shares (common random numbers).
    common_random_numbers: bool = False

    @classmethod
    def from_settings(cls, settings: Any) -> EvaluationPlan:
        """EVAL_* settings."""
        return cls(
            seeds=tuple(settings.eval_seeds),
            windows=settings.EVAL_WINDOWS,
            agents=settings.EVAL_AGENTS,
            duration_minutes=settings.EVAL_DURATION_MINUTES,
            start=parse_window_id(settings.EVAL_START),
            temperature=settings.EVAL_TEMPERATURE,
            max_tokens=settings.EVAL_MAX_TOKENS,
            common_random_numbers=settings.EVAL_COMMON_RANDOM_NUMBERS,
        )

    def markets(self) -> list[tuple[int, datetime]]:
        """(seed, first hour) of each seed's markets; seeds never share an hour (one ground truth per hour)."""
        return [(seed, self.start + index * self.windows * WINDOW) for index, seed in enumerate(self.seeds)]

    def window_ids(self, first: datetime) -> list[str]:
        """The hours a seed plays."""
        return [window_id_of(first + i * WINDOW) for i in range(self.windows)]

    @property
    def agent_windows(self) -> int:
        """Agent-windows each policy plays."""
        return len(self.seeds) * self.windows * self.agents

    def last_hour_end(self) -> datetime:
        """When the last evaluation hour ends (play must lie in the past)."""
        return self.start + len(self.seeds) * self.windows * WINDOW

    def as_json(self) -> dict[str, Any]:
        """The plan as stored with every result."""
        return {
            "seeds": list(self.seeds),
            "windows": self.windows,
            "agents": self.agents,
            "duration_minutes": self.duration_minutes,
            "start": window_id_of(self.start),
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
            "step_seconds": self.step_seconds,
            # Plays under another prompt or schema (the committed base plays had none) are other plays.
            "prompt_version": PROMPT_VERSION,
            "schema": SCHEMA_VERSION if self.structured else None,
            # Sampled play draws from the policy's whole distribution, as rollouts do (the trained policy); greedy
            # play has no sampler to speak of (and its committed plays' key stays what it was).
            **({"sampler": "neutral"} if self.temperature > 0 else {}),
            # Seeded play is other play than play with a fresh seed a call (whose committed key stays what it was).
            **({"sampler_seeds": "common"} if self.seeded else {}),
        }

    @property
    def seeded(self) -> bool:
        """Whether sampled play draws each seat's decision with a seed every policy shares."""
        return self.temperature > 0 and self.common_random_numbers

    @property
    def key(self) -> str:
        """Plays of the same policy on the same plan are the same plays."""
        return hashlib.sha256(json.dumps(self.as_json(), sort_keys=True).encode()).hexdigest()[:32]

    def slots(self) -> list[tuple[str, str]]:
        """(slot, archetype) of each seat at the table, the same for every policy."""
        archetypes = list(ARCHETYPES)
        return [
            (f"{i + 1:02d}-{archetypes[i % len(archetypes)]}", archetypes[i % len(archetypes)])
            for i in range(self.agents)
        ]


def base_policy(base_model: str) -> str:
    """The name under which a base model's evaluation play is stored (its version name, as rollouts serve it)."""
    return base_version(base_model)


def agent_id(plan: EvaluationPlan, policy: str, slot: str) -> str:
    """The evaluation agent of one seat for one policy on one plan (the gateway stitches by agent-hour, so
    no two policies or plans may share an agent id)."""
    tag = hashlib.sha256(f"{plan.key}:{policy}".encode()).hexdigest()[:10]
    return f"eval-{tag}-{slot}"


@dataclass
class PolicyPlay:
    """One policy's evaluation play: what was stored before, what this run played."""

    policy: str
    plays: list[PlayResult] = field(default_factory=list)
    reused_markets: int = 0
    played_markets: int = 0


# `babylon evaluate` runs the promotion job in-process and counts the markets from here; the asset only logs.
_market_listeners: list[Callable[[str, int, int], None]] = []


@contextmanager
def listening(on_market: Callable[[str, int, int], None]) -> Iterator[None]:
    """Hear every evaluation market of this process (policy, seed, plays) while the block runs, the markets
    reused from stored play included."""
    _market_listeners.append(on_market)
    try:
        yield
    finally:
        _market_listeners.remove(on_market)


def _heard(policy: str, seed: int, plays: int) -> None:
    for listener in list(_market_listeners):
        listener(policy, seed, plays)


def play_policy(
    store: Store,
    plan: EvaluationPlan,
    policy: str,
    serve_policy: Callable[[], Any],
    *,
    now: datetime,
    on_market: Callable[[str, int, int], None] | None = None,
    max_markets: int | None = None,
) -> PolicyPlay:
    """Play every evaluation market this policy has not played yet on this plan (at most `max_markets` of
    them: a long evaluation in chunks), through a gateway in this process whose upstream is the served
    policy; store each market's plays as it finishes."""
    if plan.last_hour_end() > now:
        raise ValueError(
            f"evaluation hours must lie in the past: EVAL_START {window_id_of(plan.start)} + "
            f"{len(plan.seeds) * plan.windows} h ends after now"
        )
    records = EvaluationRecords(store)
    stored = records.plays(plan.key, policy)
    per_market = plan.windows * plan.agents
    done = {seed for seed in plan.seeds if sum(1 for p in stored if p.seed == seed) >= per_market}
    result = PolicyPlay(policy, [p for p in stored if p.seed in done], reused_markets=len(done))
    for seed in sorted(done):
        _heard(policy, seed, sum(1 for p in stored if p.seed == seed))
    todo = [(seed, first) for seed, first in plan.markets() if seed not in done][:max_markets]
    if not todo:
        return result
    slots = plan.slots()
    with serve_policy() as upstream, gateway_in_thread(store, upstream) as (url, recorder, api_key):
        endpoint = LlmEndpoint(
            "openai/policy",
            url,
            api_key=api_key,
            temperature=plan.temperature,
            max_tokens=plan.max_tokens,
            timeout_s=300.0,
            retries=1,
            via_gateway=True,
            evaluation=True,
            structured=plan.structured,
            neutral_sampler=plan.temperature > 0,
            common_random_numbers=plan.seeded,
        )
        # Every policy's seat is told the same name (its slot), so the pair of plays of a seat sees the same prompts.
        agents = {
            slot: LlmAgent(agent_id(plan, policy, slot), archetype, endpoint, seat_name=f"agent-{slot}")
            for slot, archetype in slots
        }
        slot_of = {agent.agent_id: slot for slot, agent in agents.items()}
        for seed, first in todo:
            windows = plan.window_ids(first)
            # A market whose play was cut short is played again from the start, not appended to.
            PlayRecords(store).discard_simulated_play(
                gateway_trajectory_id(a.agent_id, w) for a in agents.values() for w in windows
            )
            summary = simulate(
                store,
                SimulationPlan(
                    agents=plan.agents,
                    windows=plan.windows,
                    duration_minutes=plan.duration_minutes,
                    seed=seed,
                    start=first,
                    step_seconds=plan.step_seconds,
                    evaluation=True,
                    llm=endpoint,
                    concurrency=plan.agents,
                ),
                now=now,
                agents=list(agents.values()),
            )
            recorder.drain_from_thread(timeout_s=120.0)
            plays, closing = [], {}
            for window in summary.windows:
                for play in window.plays:
                    trajectory_id = gateway_trajectory_id(play.agent_id, window.window_id)
                    closing[trajectory_id] = {
                        "finalPnL": round(play.final_pnl, 2),
                        "finalBalance": round(play.final_balance, 2),
                        "tradesExecuted": play.trades,
                    }
                    plays.append(
                        PlayResult(
                            policy=policy,
                            seed=seed,
                            window_id=window.window_id,
                            slot=slot_of[play.agent_id],
                            final_pnl=round(play.final_pnl, 2),
                            decisions=len(play.decisions),
                            unparseable=sum(1 for d in play.decisions if d.parse_error),
                            max_drawdown=round(max_drawdown([d.pnl for d in play.decisions] + [play.final_pnl]), 2),
                            trajectory_id=trajectory_id,
                        )
                    )
            PlayRecords(store).settle_simulated_play(closing, held_out=True)
            records.save_plays(plan.key, plays)
            result.plays.extend(plays)
            result.played_markets += 1
            if on_market is not None:
                on_market(policy, seed, len(plays))
            _heard(policy, seed, len(plays))
    result.plays.sort(key=lambda p: p.pair_key)
    return result


def judge_plays(
    store: Store, judge: Judge, plan_key: str, plays: Sequence[PlayResult]
) -> tuple[dict[str, float], dict[str, str]]:
    """Judge each evaluation hour's play of both policies as one group (RULER ranks within a group, so the
    two policies are scored side by side against the same ground truth). Returns the scores by trajectoryId
    and the groups that could not be judged, with why."""
    wanted: dict[str, set[str]] = {}
    for play in plays:
        if play.trajectory_id:
            wanted.setdefault(play.window_id, set()).add(play.trajectory_id)
    groups = []
    for window_id, ids in sorted(wanted.items()):
        rows = [
            row
            for row in store.iter_window(window_id)
            if isinstance(row, ParsedTrajectory) and row.trajectory_id in ids
        ]
        members = [aw for aw in stitch_agent_windows(rows) if aw.llm_decisions > 0]
        if len(members) >= 2:
            groups.append(
                JudgeGroup(f"eval-{plan_key[:8]}-{window_id}", window_id, members, store.window_outcomes(window_id))
            )
    if not groups:
        return {}, {}
    result = asyncio.run(judge.score(groups))
    by_member = {aw.agent_window_id: aw.trajectories[0].trajectory_id for g in groups for aw in g.members}
    scores = {by_member[member]: judgment.score for member, judgment in result.scores.items() if member in by_member}
    return scores, dict(result.failures)


@dataclass
class CheckpointEvaluation:
    """What an evaluation found and did."""

    model_version: str
    report: EvaluationReport
    base: PolicyPlay
    candidate: PolicyPlay
    judge_version: str
    judge_failures: dict[str, str]

    def eval_metrics(self) -> dict[str, Any]:
        """trained_models.evalMetrics."""
        return {
            **self.report.as_json(),
            "judge": self.judge_version,
            "judge_failures": self.judge_failures,
            "markets_reused": {"base": self.base.reused_markets, "checkpoint": self.candidate.reused_markets},
        }


@dataclass(frozen=True)
class EvaluationOptions:
    """How an evaluation is run and judged."""

    plan: EvaluationPlan
    base_model: str
    min_pnl_delta: float = 0.0
    max_unparseable_rise: float = 0.0
    resamples: int = 10_000
    policy_api_base: str | None = None  # None: local llama.cpp servers
    work_folder: Path = Path(".babylon") / "eval"


def why_no_policy_server(policy_api_base: str | None) -> str | None:
    """Why no policy can be served for evaluation now, or None when one can: POLICY_API_BASE names a server,
    or the local llama.cpp server is built and the base model's GGUF is installed."""
    if policy_api_base:
        return None
    from babylon_assets.llm import local_server

    binary = local_server.server_binary()
    if not binary.is_file():
        return f"llama-server is not built yet ({binary}): run `make llm-build`, or set POLICY_API_BASE"
    try:
        local_server.model_file()
    except local_server.LocalLlmError as error:
        return str(error)
    return None


def local_policy_server(
    folder: Path, base_model: str, adapter: Path | None, alias: str, parallel: int = 8
) -> Callable[[], Any]:
    """A llama.cpp server for one policy, started for its play and stopped after: the base model's GGUF,
    with the checkpoint's adapter (exported to GGUF beside it) when there is one; a market's seats are answered at
    once on `parallel` slots, each holding a prompt and the longest answer the decision schema allows."""

    @contextmanager
    def serve_policy() -> Iterator[Upstream]:
        from babylon_assets.llm import local_server
        from babylon_assets.training.gguf_export import base_model_gguf, export_adapter_gguf

        model = base_model_gguf(base_model)
        lora = [export_adapter_gguf(adapter, adapter / "adapter.gguf")] if adapter is not None else []
        state = local_server.serve(
            folder, port=free_port(), context=2048, model=model, lora=lora, alias=alias, parallel=parallel
        )
        try:
            yield Upstream(model=f"openai/{alias}", api_base=state.base_url, version=alias)
        finally:
            local_server.stop(folder)

    return serve_policy


def remote_policy_server(api_base: str, served_name: str, version: str) -> Callable[[], Any]:
    """A policy served elsewhere under its name (ART's backends serve `{MODEL_NAME}@{step}`)."""

    @contextmanager
    def serve_policy() -> Iterator[Upstream]:
        yield Upstream(model=f"openai/{served_name}", api_base=api_base, version=version)

    return serve_policy


def evaluate_checkpoint(
    store: Store,
    options: EvaluationOptions,
    judge: Judge,
    model: TrainedModelRecord,
    *,
    now: datetime,
    on_market: Callable[[str, int, int], None] | None = None,
) -> CheckpointEvaluation:
    """Play the base and the checkpoint on the evaluation markets (reusing stored play), judge both, compare
    them paired, and store the results on the checkpoint's trained_models row."""
    version = str(model.modelId)
    base_name = base_policy(options.base_model)
    if options.policy_api_base:
        serve_base = remote_policy_server(options.policy_api_base, options.base_model, base_name)
        serve_candidate = remote_policy_server(options.policy_api_base, version, version)
    else:
        folder = options.work_folder.resolve()
        serve_base = local_policy_server(folder / "base", options.base_model, None, "base")
        serve_candidate = local_policy_server(
            folder / "checkpoint", options.base_model, Path(str(model.storagePath)), version
        )
        if not Path(str(model.storagePath)).is_dir():
            raise FileNotFoundError(f"checkpoint {version}'s folder {model.storagePath} is gone (pruned?)")
    plan = options.plan
    base = play_policy(store, plan, base_name, serve_base, now=now, on_market=on_market)
    candidate = play_policy(store, plan, version, serve_candidate, now=now, on_market=on_market)
    scores, failures = judge_plays(store, judge, plan.key, [*base.plays, *candidate.plays])

    def scored(plays: list[PlayResult]) -> list[PlayResult]:
        return [replace(p, judge_score=scores.get(p.trajectory_id or "")) for p in plays]

    report = evaluate(
        scored(base.plays),
        scored(candidate.plays),
        plan={**plan.as_json(), "key": plan.key},
        min_pnl_delta=options.min_pnl_delta,
        max_unparseable_rise=options.max_unparseable_rise,
        resamples=options.resamples,
        seed=int(plan.key[:8], 16),
    )
    outcome = CheckpointEvaluation(version, report, base, candidate, f"{judge.name}:{judge.version}", failures)
    EvaluationRecords(store).record_evaluation(
        version, outcome.eval_metrics(), benchmark_score=report.candidate.mean_pnl
    )
    return outcome
