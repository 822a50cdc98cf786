"""`babylon simulate`, `live`: play that fills the store, at once or hour after hour on a simulated clock."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Table

from babylon_assets.cli.common import console, fail, open_store, parse_hour, progress_bar
from babylon_assets.cli.main import app
from babylon_assets.core.window_time import utcnow
from babylon_assets.db.store import Store, StoreError
from babylon_assets.llm.agent import LlmEndpoint
from babylon_assets.play.simulator import SimulationPlan, SimulationSummary, simulate
from babylon_assets.settings import Settings, get_settings


def _print_simulation(summary: SimulationSummary, store: Store) -> None:
    table = Table(title=f"Simulated play in {store.target.redacted()}", title_justify="left")
    for header in (
        "window (UTC)",
        "written",
        "already there",
        "best agent (P&L)",
        "worst agent (P&L)",
        "liquidations",
        "unparseable",
    ):
        table.add_column(header)
    for window in summary.windows:
        ranked = sorted(window.plays, key=lambda p: p.final_pnl)
        table.add_row(
            window.window_id,
            str(window.written),
            str(window.skipped),
            f"{ranked[-1].agent_id} ({ranked[-1].final_pnl:+,.2f})",
            f"{ranked[0].agent_id} ({ranked[0].final_pnl:+,.2f})",
            str(sum(p.liquidations for p in window.plays)),
            str(window.unparseable),
        )
    console.print(table)
    console.print(
        f"{summary.written} trajectories written, {summary.skipped} already there, in {summary.seconds:.2f} s."
    )


def run_simulation(settings: Settings, plan: SimulationPlan) -> SimulationSummary:
    """Simulate and write the plan with a progress bar; a refusal is printed and exits 2."""
    try:
        with open_store(settings) as store:
            with progress_bar() as progress:
                task = progress.add_task("Simulating windows", total=plan.windows)
                summary = simulate(store, plan, now=utcnow(), on_window=lambda _: progress.advance(task))
            _print_simulation(summary, store)
            return summary
    except (StoreError, ValueError) as error:
        fail(error)


@app.command("simulate")
def simulate_command(
    agents: Annotated[int, typer.Option(min=1, help="Agents playing every window.")] = 8,
    windows: Annotated[int, typer.Option(min=1, help="Consecutive hourly windows.")] = 3,
    duration: Annotated[int, typer.Option(min=1, max=59, help="Simulated minutes of play per window.")] = 10,
    seed: Annotated[int, typer.Option(help="Seed of the market and the scripted agents.")] = 7,
    start: Annotated[
        str | None, typer.Option(help="First window's hour (UTC), e.g. 2025-01-15T10:00; default: --windows hours ago.")
    ] = None,
    step_seconds: Annotated[int, typer.Option(min=1, help="Simulated seconds between decisions.")] = 60,
    evaluation: Annotated[bool, typer.Option("--evaluation", help="Mark the play isEvaluation (held out).")] = False,
    llm: Annotated[bool, typer.Option("--llm", help="LLM agents through AGENT_MODEL / AGENT_API_BASE.")] = False,
) -> None:
    """Fill the store with simulated play and market outcomes, fast and deterministically."""
    settings = get_settings()
    endpoint = None
    if llm:
        if not settings.AGENT_MODEL:
            fail("--llm needs AGENT_MODEL (and AGENT_API_BASE for a local server)")
        endpoint = LlmEndpoint(settings.AGENT_MODEL, settings.AGENT_API_BASE, settings.AGENT_API_KEY)
    plan = SimulationPlan(
        agents=agents,
        windows=windows,
        duration_minutes=duration,
        seed=seed,
        start=parse_hour(start),
        step_seconds=step_seconds,
        evaluation=evaluation,
        llm=endpoint,
    )
    run_simulation(settings, plan)


@app.command()
def live(
    agents: Annotated[int, typer.Option(min=1, help="Agents playing every hour.")] = 8,
    llm: Annotated[
        bool, typer.Option("--llm/--scripted", help="LLM agents through the gateway (deployed model), or scripted.")
    ] = False,
    window_seconds: Annotated[float, typer.Option(min=0.0, help="Wall seconds per simulated hour.")] = 120.0,
    start: Annotated[str | None, typer.Option(help="First simulated hour (UTC); default: 7 days ago.")] = None,
    windows: Annotated[int | None, typer.Option(min=1, help="Stop after this many hours (default: never).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the market.")] = 7,
    duration: Annotated[int, typer.Option(min=1, max=59, help="Simulated minutes of play per hour.")] = 10,
) -> None:
    """Play the market continuously on a simulated clock, hour after hour, through the gateway with the
    deployed model; with `make ui` beside it the sensors score, retrain, evaluate and deploy as hours close."""
    from babylon_assets.play.live import LivePlan, run_live, stopped_by_signal

    settings = get_settings()
    plan = LivePlan(
        agents=agents,
        llm=llm,
        window_seconds=window_seconds,
        start=parse_hour(start),
        windows=windows,
        seed=seed,
        duration_minutes=duration,
    )

    def show(window: Any) -> None:
        models = ", ".join(window.models) or "scripted"
        lag = (
            f", behind by {window.lag_seconds:.0f} s (total {window.total_lag_seconds:.0f} s)"
            if window.lag_seconds >= 1
            else ""
        )
        console.print(
            f"{window.window_id}: {window.agents} agents, {window.decisions} decisions "
            f"({window.unparseable} unparseable), mean P&L {window.mean_pnl:+,.2f}, model {models}, "
            f"played in {window.played_seconds:.0f} s{lag}"
        )

    try:
        with open_store(settings) as store, stopped_by_signal() as should_stop:
            console.print(
                f"Live play: {agents} {'LLM' if llm else 'scripted'} agents, one simulated hour per "
                f"{window_seconds:g} s; Ctrl-C stops after the current hour."
            )
            played = run_live(store, settings, plan, on_window=show, should_stop=should_stop)
    except ValueError as error:
        fail(error)
    skipped = sum(1 for w in played if w.skipped)
    console.print(f"{len(played) - skipped} hour(s) played" + (f", {skipped} already played before" if skipped else ""))
