"""`babylon learn`: the on-policy loop in-process (issue 20): rollouts by the newest checkpoint, the window graph over
them, a training step on the policy's own groups, and again with the new checkpoint."""

from __future__ import annotations

from typing import Annotated

import typer

from babylon_assets.cli.common import (
    RunKeyOption,
    SubmitOption,
    console,
    dagster_session,
    err_console,
    open_store,
    progress_bar,
    submit_and_print,
)
from babylon_assets.cli.main import app
from babylon_assets.settings import get_settings


@app.command()
def learn(
    cycles: Annotated[int, typer.Option(min=1, help="Cycles of rollouts, scoring and training.")] = 1,
    windows_per_cycle: Annotated[
        int | None, typer.Option(min=1, help="Rollout hours a cycle plays [NEW_WINDOWS_BEFORE_RETRAIN].")
    ] = None,
    submit: SubmitOption = False,
    run_key: RunKeyOption = "",
) -> None:
    """The on-policy loop, in-process on the instance: each cycle the rollout policy (the newest checkpoint; the base
    before the first) plays the next rollout hours, the window graph scores them, and ITERATIONS steps train on the
    policy's own groups; the next cycle plays the new checkpoint."""
    from babylon_assets.orchestration.learning import LearningCycleError, run_learning_cycles

    settings = get_settings()
    if not settings.ON_POLICY:
        err_console.print("[yellow]ON_POLICY=false: training also takes recorded play that is not the policy's own")
    per_cycle = windows_per_cycle or settings.NEW_WINDOWS_BEFORE_RETRAIN
    if submit:
        # Only the first cycle's rollouts are submitted: the window sensor scores them, the training sensor trains
        # once they are in, and the rollout sensor plays the next hours with the new checkpoint (under the daemon).
        from babylon_assets.orchestration.learning import next_rollout_hour
        from babylon_assets.orchestration.submit import rollout_submissions
        from babylon_assets.play.rollouts import RolloutPlan

        plan = RolloutPlan.from_settings(settings)
        with open_store(settings) as store:
            first = next_rollout_hour(store, plan)
        hours = [plan.hour(first + i) for i in range(per_cycle)]
        submit_and_print(settings, rollout_submissions(hours, run_key))
        console.print("the sensors take the loop on from these rollouts (--cycles counts only in-process)")
        return
    with open_store(settings) as store, dagster_session(settings) as (defs, instance), progress_bar() as progress:
        task = progress.add_task("Learning", total=3 * cycles)

        def on_phase(cycle: int, phase: str) -> None:
            if phase != "rollouts" or cycle > 1:
                progress.advance(task)
            progress.update(task, description=f"Cycle {cycle}/{cycles}: {phase}")

        try:
            reports = run_learning_cycles(defs, instance, store, settings, cycles, per_cycle, on_phase=on_phase)
        except LearningCycleError as error:
            err_console.print(f"[red]{error}[/red]")
            raise typer.Exit(1) from None
        progress.update(task, completed=3 * cycles)
    for report in reports:
        outcome, step = report.outcome, report.metrics
        console.print(
            f"cycle {report.cycle}: played {report.hours[0]} .. {report.hours[-1]}, trained {outcome.model_version} "
            f"on {outcome.groups.trainable} group(s) ({dict(outcome.groups.excluded) or 'none'} excluded); "
            f"reward {outcome.rewards}, loss {step.get('loss', 0.0):+.4f}, "
            f"top action {step.get('policy_top_action_share', 0.0):.0%}, "
            f"trades/agent-window {step.get('policy_trades_per_agent_window', 0.0):.2f}, "
            + ", ".join(f"{phase} {seconds:.0f} s" for phase, seconds in report.seconds.items())
        )
