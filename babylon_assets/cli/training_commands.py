"""`babylon train`, `export-dataset`: a checkpoint trained through the graph, and the dataset as ART trajectories."""

from __future__ import annotations

import sys
from typing import Annotated

import typer
from rich.table import Table

from babylon_assets.cli.common import (
    RunKeyOption,
    SubmitOption,
    console,
    dagster_session,
    err_console,
    fail,
    inside_partitions,
    open_store,
    progress_bar,
    submit_and_print,
)
from babylon_assets.cli.main import app
from babylon_assets.core.window_time import lookback_window_ids, utcnow
from babylon_assets.db.store import StoreError
from babylon_assets.settings import Settings, get_settings
from babylon_assets.training.run import TrainingOutcome


def print_training(outcome: TrainingOutcome, settings: Settings) -> None:
    """The training run's windows, rewards, agents, steps, checkpoint and W&B run as one table."""
    table = Table(title=f"Training run {outcome.batch_id}", title_justify="left", show_header=False)
    table.add_column("what")
    table.add_column("value")
    table.add_row(
        "windows",
        f"{len(outcome.windows)}: {', '.join(outcome.windows[:6])}{' ...' if len(outcome.windows) > 6 else ''}",
    )
    table.add_row("trajectories", f"{len(outcome.trajectory_ids)} game rows")
    table.add_row("score (reward)", str(outcome.rewards))
    table.add_row("P&L per agent-window", str(outcome.pnl))
    if outcome.agents:
        best, worst = outcome.agents[0], outcome.agents[-1]
        table.add_row("best agent", f"{best[0]} (mean score {best[1]:.3f} over {best[2]} windows)")
        table.add_row("worst agent", f"{worst[0]} (mean score {worst[1]:.3f} over {worst[2]} windows)")
    for step in outcome.steps:
        m = step.metrics
        skipped = int(m.get("groups_skipped_zero_variance", 0))
        speed = f"{m.get('tokens_per_second', 0.0):.0f} tokens/s, {m.get('seconds', 0.0):.1f} s"
        table.add_row(
            f"step {step.step}", f"loss {m.get('loss', 0.0):+.4f}, {step.groups} groups ({skipped} skipped), " + speed
        )
    table.add_row("checkpoint", f"{outcome.model_version} at {outcome.checkpoint_path}")
    table.add_row(
        "W&B run",
        f"{outcome.wandb_dir} ({settings.WANDB_MODE}; `wandb sync <folder>` uploads it)"
        if outcome.wandb_dir
        else "none (WANDB_MODE=disabled)",
    )
    console.print(table)


def train_graph(settings: Settings, window_ids: list[str]) -> TrainingOutcome | None:
    """Materialize the windows, then the dataset and a checkpoint, in-process on the instance; a bar per step."""
    from babylon_assets.orchestration.pipeline import materialize_training, materialize_windows
    from babylon_assets.training.run import listening

    outcomes: list[TrainingOutcome] = []
    window_ids = inside_partitions(settings, window_ids)
    with dagster_session(settings) as (defs, instance):
        with progress_bar() as progress:
            task = progress.add_task("Scoring windows", total=len(window_ids))
            runs = materialize_windows(
                defs, window_ids, instance, on_run=lambda run: progress.advance(task, advance=run.windows)
            )
        for run in runs:
            if not run.success:
                err_console.print(
                    f"[yellow]window run {run.run_id} ({run.label}) failed[/yellow]; training on the "
                    "windows that are scored"
                )
        with progress_bar() as progress:
            task = progress.add_task(f"Training ({settings.ITERATIONS} steps)", total=settings.ITERATIONS)
            with listening(on_step=lambda report: progress.advance(task), on_outcome=outcomes.append):
                run = materialize_training(defs, instance)
    if not run.success:
        err_console.print(
            f"[red]training run {run.run_id} failed[/red]: its training_batches row says why; "
            "see it in the UI (make ui)"
        )
        return None
    return outcomes[-1] if outcomes else None


@app.command()
def train(
    min_agents: Annotated[int | None, typer.Option(help="Agents a window needs [MIN_AGENTS].")] = None,
    min_actions: Annotated[int | None, typer.Option(help="Actions an agent-window needs [MIN_ACTIONS].")] = None,
    iterations: Annotated[int | None, typer.Option(help="Training steps [ITERATIONS].")] = None,
    target_trajectories: Annotated[int | None, typer.Option(help="Dataset size [TARGET_TRAJECTORIES].")] = None,
    max_dropout: Annotated[float | None, typer.Option(help="Most a group may drop [MAX_DROPOUT].")] = None,
    lookback_hours: Annotated[int | None, typer.Option(help="Hours to look back [LOOKBACK_HOURS].")] = None,
    windows_per_iteration: Annotated[
        int | None, typer.Option(help="Windows sampled per step [WINDOWS_PER_ITERATION].")
    ] = None,
    learning_rate: Annotated[float | None, typer.Option(help="LoRA learning rate [LEARNING_RATE].")] = None,
    decisions_per_trajectory: Annotated[
        int | None, typer.Option(help="Decisions of each agent-window per step, 0 for all [DECISIONS_PER_TRAJECTORY].")
    ] = None,
    submit: SubmitOption = False,
    run_key: RunKeyOption = "",
) -> None:
    """Score the lookback's windows, build the dataset and train a checkpoint, in-process on the instance. With
    --submit, one training run (the dataset and the checkpoint) is handed to the instance: it trains on the windows
    already scored (`babylon score --submit`, or the sensors, score them)."""
    overrides = {
        name: value
        for name, value in (
            ("MIN_AGENTS", min_agents),
            ("MIN_ACTIONS", min_actions),
            ("ITERATIONS", iterations),
            ("TARGET_TRAJECTORIES", target_trajectories),
            ("MAX_DROPOUT", max_dropout),
            ("LOOKBACK_HOURS", lookback_hours),
            ("WINDOWS_PER_ITERATION", windows_per_iteration),
            ("LEARNING_RATE", learning_rate),
            ("DECISIONS_PER_TRAJECTORY", decisions_per_trajectory),
        )
        if value is not None
    }
    settings = Settings.model_validate({**get_settings().model_dump(), **overrides})
    if submit:
        from babylon_assets.orchestration.submit import training_submission

        if overrides:
            # A submitted run takes the settings of the worker that runs it (its ART_PATH, device, backend): flags
            # set here would pin this machine's values onto it.
            fail(
                f"--submit runs with the workers' settings: set {', '.join(sorted(overrides))} in their environment, "
                "or run without --submit"
            )
        key = f"training:{settings.MODEL_NAME}:{utcnow():%Y-%m-%dT%H:%M}{run_key}"
        submit_and_print(settings, [training_submission(key)])
        return
    with open_store(settings) as store:
        window_ids = sorted(store.windows_with_rows(lookback_window_ids(settings.LOOKBACK_HOURS, utcnow())))
    if not window_ids:
        err_console.print(
            f"No window with trajectories in the last {settings.LOOKBACK_HOURS} h: nothing to train on "
            "(`babylon simulate` makes some)."
        )
        raise typer.Exit(1)
    outcome = train_graph(settings, window_ids)
    if outcome is None:
        raise typer.Exit(1)
    print_training(outcome, settings)


@app.command("export-dataset")
def export_dataset(
    output: Annotated[str, typer.Option("--output", "-o", help="File to write; - for standard output.")] = "-",
    format: Annotated[str, typer.Option("--format", help="Only jsonl: one art.Trajectory per line.")] = "jsonl",
) -> None:
    """Write the newest training dataset as ART trajectories with rewards, one JSON object per line."""
    from babylon_assets.training.dataset_export import export_dataset_jsonl

    if format != "jsonl":
        fail(f"format {format!r} is not supported; use jsonl")
    try:
        with open_store(get_settings()) as store:
            if output == "-":
                dataset_id, written, missing = export_dataset_jsonl(store, sys.stdout)
            else:
                with open(output, "w", encoding="utf-8") as handle:
                    dataset_id, written, missing = export_dataset_jsonl(store, handle)
    except StoreError as error:
        fail(error)
    note = f"; {missing} member(s) whose rows are gone were skipped" if missing else ""
    err_console.print(f"dataset {dataset_id}: {written} trajectories written to {output}{note}")
