"""`babylon live`: the market played continuously on a simulated clock, one simulated hour per
`window_seconds` of wall time, by the deployed model through the gateway.

Window ids are simulated hours, all in the past, so each is a closed partition as soon as its play ends.
The clock never skips an hour: when play falls behind (two cores shared with scoring and training),
simulated time slows and the lag is reported; it never runs into the real present either. The simulated
"now" is published in LIVE_CLOCK_FILE, which the sensors read while it is fresh (see `platform_now`).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from babylon_assets.core.window_time import WINDOW, as_utc, utcnow, window_id_of, window_start
from babylon_assets.db.play_records import PlayRecords
from babylon_assets.db.store import Store
from babylon_assets.gateway.app import Upstream
from babylon_assets.gateway.recording import gateway_trajectory_id
from babylon_assets.gateway.server import gateway_in_thread
from babylon_assets.gateway.serving import ServingFile
from babylon_assets.llm.agent import LlmEndpoint
from babylon_assets.play.simulator import SimulationPlan, build_agents, simulate

# A clock file older than this (wall time) is a live loop that stopped: the sensors go back to real time.
CLOCK_STALE_AFTER = timedelta(minutes=10)


def write_clock(path: Path, simulated_now: datetime, window_seconds: float) -> None:
    """Publish the simulated now (atomically)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    partial.write_text(
        json.dumps(
            {
                "simulated_now": as_utc(simulated_now).isoformat(),
                "written_at": utcnow().isoformat(),
                "window_seconds": window_seconds,
            }
        )
    )
    os.replace(partial, path)


def platform_now(clock_file: str | Path, real_now: datetime | None = None) -> datetime:
    """What the sensors take as now: the live loop's simulated clock while its file is fresh, else real time."""
    real = real_now or utcnow()
    try:
        data = json.loads(Path(clock_file).read_text())
        written = as_utc(datetime.fromisoformat(data["written_at"]))
        simulated = as_utc(datetime.fromisoformat(data["simulated_now"]))
    except (OSError, ValueError, KeyError, TypeError):
        return real
    if real - written > CLOCK_STALE_AFTER:
        return real
    return min(simulated, real)


@dataclass(frozen=True)
class LivePlan:
    """What `babylon live` plays."""

    agents: int = 8
    llm: bool = True
    window_seconds: float = 120.0
    start: datetime | None = None  # the first simulated hour; default: 7 days ago
    seed: int = 7
    duration_minutes: int = 10
    step_seconds: int = 60
    windows: int | None = None  # stop after this many hours (None: until stopped or the present is reached)
    temperature: float = 0.7
    max_tokens: int = 160

    def first_hour(self, now: datetime) -> datetime:
        """The first simulated hour."""
        return window_start(self.start) if self.start is not None else window_start(now) - timedelta(days=7)


@dataclass
class LiveWindow:
    """One simulated hour of live play."""

    window_id: str
    agents: int
    decisions: int
    unparseable: int
    mean_pnl: float
    models: list[str] = field(default_factory=list)
    played_seconds: float = 0.0
    lag_seconds: float = 0.0  # how long this hour overran its window_seconds
    total_lag_seconds: float = 0.0  # how far the simulated clock is behind its nominal pace, all hours together
    skipped: bool = False  # already played (a rerun resumes after it)


def _agents_upstream(settings: Any) -> Callable[[], Upstream]:
    """The deployed model (the serving file), else AGENT_MODEL: never a silent stand-in."""
    serving = Path(settings.SERVING_FILE)
    if not serving.is_file() and not settings.AGENT_MODEL:
        raise ValueError(
            f"no model to play: nothing is deployed ({serving} does not exist) and AGENT_MODEL is not "
            "set (e.g. `babylon llm serve`, then AGENT_MODEL=openai/smollm2 "
            "AGENT_API_BASE=http://127.0.0.1:8080/v1)"
        )
    fallback = Upstream(
        settings.AGENT_MODEL or "unset", settings.AGENT_API_BASE, settings.AGENT_API_KEY, version=settings.AGENT_MODEL
    )
    return ServingFile(serving, fallback)


def run_live(
    store: Store,
    settings: Any,
    plan: LivePlan,
    *,
    on_window: Callable[[LiveWindow], None] | None = None,
    should_stop: Callable[[], bool] = lambda: False,
    sleep: Callable[[float], None] = time.sleep,
) -> list[LiveWindow]:
    """Play hour after hour until `plan.windows` hours are played, `should_stop()` says so, or the simulated
    clock reaches the real present."""
    store.require_own_store("simulated live play")
    clock_file = Path(settings.LIVE_CLOCK_FILE)
    played: list[LiveWindow] = []
    gateway: Any = gateway_in_thread(store, _agents_upstream(settings)) if plan.llm else nullcontext(None)
    with gateway as running:
        endpoint = None
        if running is not None:
            endpoint = LlmEndpoint(
                "openai/deployed",
                running.url,
                api_key=running.api_key,
                temperature=plan.temperature,
                max_tokens=plan.max_tokens,
                timeout_s=300.0,
                retries=1,
                via_gateway=True,
            )
        agents = build_agents(SimulationPlan(agents=plan.agents, seed=plan.seed, llm=endpoint))
        hour = plan.first_hour(utcnow())
        schedule = time.monotonic()
        total_lag = 0.0
        while (plan.windows is None or len(played) < plan.windows) and not should_stop():
            if hour + WINDOW > utcnow():
                break  # the simulated clock has caught up with the present: every window must be closed
            window_id = window_id_of(hour)
            ids = {gateway_trajectory_id(agent.agent_id, window_id) for agent in agents}
            if (
                endpoint is not None
                and store.existing_trajectory_ids(ids) == ids
                and store.windows_with_outcomes([window_id])
            ):
                played.append(LiveWindow(window_id, len(agents), 0, 0, 0.0, skipped=True))
                hour += WINDOW
                continue
            write_clock(clock_file, hour, plan.window_seconds)
            started = time.monotonic()
            if endpoint is not None:
                PlayRecords(store).discard_simulated_play(ids)  # an hour cut short is played again from its start
            summary = simulate(
                store,
                SimulationPlan(
                    agents=plan.agents,
                    windows=1,
                    duration_minutes=plan.duration_minutes,
                    seed=plan.seed,
                    start=hour,
                    step_seconds=plan.step_seconds,
                    llm=endpoint,
                    concurrency=plan.agents if endpoint else 1,
                ),
                now=utcnow(),
                agents=agents,
            )
            result = summary.windows[0]
            if running is not None:
                running.recorder.drain_from_thread(timeout_s=120.0)
                PlayRecords(store).settle_simulated_play(
                    {
                        gateway_trajectory_id(p.agent_id, window_id): {
                            "finalPnL": round(p.final_pnl, 2),
                            "finalBalance": round(p.final_balance, 2),
                            "tradesExecuted": p.trades,
                        }
                        for p in result.plays
                    },
                    held_out=False,
                )
            hour += WINDOW
            write_clock(clock_file, hour, plan.window_seconds)  # the hour is over: a closed partition
            decisions = [d for p in result.plays for d in p.decisions]
            window = LiveWindow(
                window_id,
                len(result.plays),
                len(decisions),
                result.unparseable,
                sum(p.final_pnl for p in result.plays) / len(result.plays) if result.plays else 0.0,
                sorted({d.reply.model_version or d.reply.model for d in decisions if d.reply.model}),
                played_seconds=time.monotonic() - started,
            )
            # The next hour is due one window_seconds after this one was due; behind schedule, it starts now
            # (simulated time slows, nothing is skipped) and the lag is reported.
            schedule += plan.window_seconds
            behind = time.monotonic() - schedule
            if behind < 0:
                sleep(-behind)
            else:
                schedule = time.monotonic()  # no catching up: the lost time stays lost
                total_lag += behind
            window.lag_seconds, window.total_lag_seconds = max(0.0, behind), total_lag
            played.append(window)
            if on_window is not None:
                on_window(window)
    return played


@contextmanager
def stopped_by_signal() -> Iterator[Callable[[], bool]]:
    """A should_stop for run_live that turns true on Ctrl-C / SIGTERM (the current hour finishes first)."""
    import signal

    stop = {"now": False}

    def handle(signum: int, frame: object) -> None:
        stop["now"] = True

    previous = {s: signal.signal(s, handle) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield lambda: stop["now"]
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
