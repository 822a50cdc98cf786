"""`babylon demo`: simulate a few windows, materialize the graph, train a few steps and print what came out."""

from __future__ import annotations

import time
from typing import Annotated

import typer

from babylon_assets.cli.common import console, open_store
from babylon_assets.cli.main import app
from babylon_assets.cli.play_commands import run_simulation
from babylon_assets.cli.training_commands import print_training, train_graph
from babylon_assets.cli.window_commands import (
    materialize_graph,
    print_graph_results,
    readiness_report,
    render_readiness_report,
)
from babylon_assets.core.eligibility import EligibilityRules
from babylon_assets.play.simulator import SimulationPlan
from babylon_assets.settings import Settings, get_settings

# What `babylon demo` trains with: small enough for a few minutes on 2 CPU cores (a step: one window of 8
# agents, 3 decisions of each, prompts cut to their last 256 tokens); the seed's defaults are GPU-scale
# (README, Training).
DEMO_TRAINING = {
    "ITERATIONS": 3,
    "WINDOWS_PER_ITERATION": 1,
    "DECISIONS_PER_TRAJECTORY": 3,
    "MAX_SEQUENCE_TOKENS": 256,
    "MICRO_BATCH_SIZE": 4,
    # The demo's play is scripted, not the policy's own: it shows the offline path (`babylon learn` is on-policy).
    "ON_POLICY": False,
}


@app.command()
def demo(
    seed: Annotated[int, typer.Option(help="Seed of the simulated market.")] = 7,
    train: Annotated[bool, typer.Option("--train/--no-train", help="Also train SmolLM2 a few steps.")] = True,
) -> None:
    """Simulate a few windows, materialize the graph, train a few steps of SmolLM2 and print what came out."""
    settings = get_settings()
    summary = run_simulation(settings, SimulationPlan(agents=8, windows=4, duration_minutes=10, seed=seed))
    window_ids = [w.window_id for w in summary.windows]
    ok = materialize_graph(settings, window_ids)
    rules = EligibilityRules(settings.MIN_ACTIONS, settings.MIN_AGENTS, settings.MIN_READY_WINDOWS)
    summaries, verdict = readiness_report(settings, rules, settings.LOOKBACK_HOURS, None)
    render_readiness_report(summaries, verdict, rules, "Readiness report")
    with open_store(settings) as store:
        print_graph_results(store, window_ids)
    if not ok:
        raise typer.Exit(1)
    if train:
        demo_settings = Settings.model_validate({**settings.model_dump(), **DEMO_TRAINING})
        started = time.monotonic()
        outcome = train_graph(demo_settings, window_ids)
        if outcome is None:
            raise typer.Exit(1)
        print_training(outcome, demo_settings)
        console.print(
            f"Trained {len(outcome.steps)} steps of {demo_settings.BASE_MODEL} in "
            f"{time.monotonic() - started:.0f} s (scoring again included; the cached judge pays nothing)."
        )
