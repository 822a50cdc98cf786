"""`babylon ...`: thin commands over the store, the core and (later) the Dagster graph."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from babylon_assets.core.eligibility import (
    EligibilityRules,
    ReadinessVerdict,
    WindowSummary,
    readiness_verdict,
)
from babylon_assets.core.windows import as_utc, lookback_window_ids, parse_window_id, utcnow, window_id_of
from babylon_assets.db.store import Store, StoreError
from babylon_assets.llm_agent import LlmEndpoint
from babylon_assets.settings import Settings, get_settings
from babylon_assets.simulate import SimulationPlan, SimulationSummary, simulate
from babylon_assets.training import TrainingOutcome

app = typer.Typer(
    help="Babylon Assets: train LLM trading agents from their own live play.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
db_app = typer.Typer(help="The store's schema.", no_args_is_help=True)
app.add_typer(db_app, name="db")
llm_app = typer.Typer(help="SmolLM2 on a local llama.cpp server (OpenAI-compatible, 127.0.0.1).", no_args_is_help=True)
app.add_typer(llm_app, name="llm")
LLM_FOLDER = Path(".babylon") / "llm"

# Wide enough that CI logs keep the report's rows on one line.
console = Console(width=None if sys.stdout.isatty() else 160)
err_console = Console(stderr=True)


@app.callback()
def _load_environment() -> None:
    """Read `.env` from the working directory (the environment wins), as the game's tools do."""
    from dotenv import find_dotenv, load_dotenv

    path = find_dotenv(usecwd=True)
    if path:
        load_dotenv(path, override=False)
    # No network is assumed: litellm reads the cost map it ships instead of fetching one at import.
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")


def _open_store(settings: Settings) -> Store:
    store = Store.from_settings(settings)
    store.ensure_schema()
    return store


@contextmanager
def _progress(description: str) -> Iterator[Callable[[int], None]]:
    """A spinner with a row count on stderr (shown only while the work runs)."""
    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        TextColumn("{task.completed:,.0f} rows"),
        TimeElapsedColumn(),
        console=err_console,
        transient=True,
    ) as progress:
        task = progress.add_task(description, total=None)
        yield lambda count: progress.update(task, completed=count)


def _bar() -> Progress:
    """A progress bar on stderr, shown only while the work runs."""
    return Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), console=err_console, transient=True)


def _reasons(counts: dict[str, int]) -> str:
    return ", ".join(f"{reason}: {count}" for reason, count in sorted(counts.items())) or "-"


def render_readiness_report(
    summaries: list[WindowSummary], verdict: ReadinessVerdict, rules: EligibilityRules, title: str
) -> None:
    """Print the per-window table and the verdict."""
    table = Table(title=title, title_justify="left")
    for header, justify in (
        ("window (UTC)", "left"),
        ("rows", "right"),
        ("agents", "right"),
        ("eligible agents", "right"),
        ("excluded (reason: count)", "left"),
        ("quarantined (reason: count)", "left"),
        ("outcomes", "center"),
        ("verdict", "left"),
    ):
        table.add_column(header, justify=justify)  # type: ignore[arg-type]
    for summary in summaries:
        ready = summary.is_ready(rules)
        table.add_row(
            summary.window_id,
            str(summary.rows),
            str(summary.agents),
            str(summary.eligible_agents),
            _reasons(summary.excluded),
            _reasons(summary.quarantined),
            "yes" if summary.outcomes_recorded else ("closed" if summary.closed else "open"),
            "[green]ready[/green]" if ready
            else f"[yellow]needs {rules.min_agents - summary.eligible_agents} more agent(s)[/yellow]",
        )
    console.print(table)
    style = "bold green" if verdict.ready else "bold red"
    console.print(verdict.message, style=style, highlight=False)


def readiness_report(
    settings: Settings, rules: EligibilityRules, lookback_hours: int, until: datetime | None
) -> tuple[list[WindowSummary], ReadinessVerdict]:
    """Compute the readiness report over the lookback."""
    store = _open_store(settings)
    try:
        with _progress("Reading windows") as update:
            summaries = store.window_summaries(
                rules, lookback_hours, until, grace_minutes=settings.GRACE_MINUTES, on_progress=update
            )
    finally:
        store.dispose()
    return summaries, readiness_verdict(summaries, rules)


def _parse_until(value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        return as_utc(datetime.fromisoformat(value.replace("Z", "+00:00")))
    except ValueError:
        raise typer.BadParameter(f"{value!r} is not a time like 2025-01-15T10:00") from None


@app.command("check-windows")
def check_windows(
    min_agents: Annotated[int | None, typer.Option(help="Agents a window needs [MIN_AGENTS].")] = None,
    min_actions: Annotated[
        int | None, typer.Option(help="LLM decisions an agent-window needs [MIN_ACTIONS].")
    ] = None,
    lookback_hours: Annotated[int | None, typer.Option(help="Hours to look back [LOOKBACK_HOURS].")] = None,
    min_ready_windows: Annotated[
        int | None, typer.Option(help="Ready windows needed for training [MIN_READY_WINDOWS].")
    ] = None,
    until: Annotated[str | None, typer.Option(help="End of the lookback (UTC); default: now.")] = None,
) -> None:
    """Per window: rows, agents, eligible, excluded and quarantined by reason; exit 0 when ready."""
    settings = get_settings()
    rules = EligibilityRules(
        min_actions=settings.MIN_ACTIONS if min_actions is None else min_actions,
        min_agents=settings.MIN_AGENTS if min_agents is None else min_agents,
        min_ready_windows=settings.MIN_READY_WINDOWS if min_ready_windows is None else min_ready_windows,
    )
    hours = settings.LOOKBACK_HOURS if lookback_hours is None else lookback_hours
    end = _parse_until(until)
    try:
        summaries, verdict = readiness_report(settings, rules, hours, end)
    except (StoreError, ValueError) as error:
        err_console.print(f"[red]error:[/red] {error}")
        raise typer.Exit(2) from None
    title = f"Windows in the {hours} h before {(end or utcnow()):%Y-%m-%dT%H:%M}Z"
    render_readiness_report(summaries, verdict, rules, title)
    raise typer.Exit(0 if verdict.ready else 1)


def _parse_hour(value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        return parse_window_id(value)
    except ValueError as error:
        raise typer.BadParameter(str(error)) from None


def _print_simulation(summary: SimulationSummary, store: Store) -> None:
    table = Table(title=f"Simulated play in {store.target.redacted()}", title_justify="left")
    for header in ("window (UTC)", "written", "already there", "best agent (P&L)", "worst agent (P&L)",
                   "liquidations", "unparseable"):
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
    store = _open_store(settings)
    try:
        with _bar() as progress:
            task = progress.add_task("Simulating windows", total=plan.windows)
            summary = simulate(store, plan, now=utcnow(), on_window=lambda _: progress.advance(task))
        _print_simulation(summary, store)
        return summary
    except (StoreError, ValueError) as error:
        err_console.print(f"[red]error:[/red] {error}")
        raise typer.Exit(2) from None
    finally:
        store.dispose()


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
            err_console.print("[red]error:[/red] --llm needs AGENT_MODEL (and AGENT_API_BASE for a local server)")
            raise typer.Exit(2)
        endpoint = LlmEndpoint(settings.AGENT_MODEL, settings.AGENT_API_BASE, settings.AGENT_API_KEY)
    plan = SimulationPlan(agents=agents, windows=windows, duration_minutes=duration, seed=seed,
                          start=_parse_hour(start), step_seconds=step_seconds, evaluation=evaluation, llm=endpoint)
    run_simulation(settings, plan)


def _print_graph_results(store: Store, window_ids: list[str]) -> None:
    table = Table(title="Scores per window (judge: see ruler_scores metadata)", title_justify="left")
    for header in ("window (UTC)", "groups", "kept", "dropped", "best agent (score, P&L)", "worst agent (score, P&L)"):
        table.add_column(header)
    for window_id in window_ids:
        members = store.group_members(window_id)
        scored = sorted((m for m in members if m["score"] is not None), key=lambda m: m["score"])
        dropped = [m for m in members if not m["kept"]]
        reasons = ", ".join(sorted({m["reason"] for m in dropped}))

        def line(m: dict[str, object]) -> str:
            return f"{m['agent_id']} ({m['score']:.3f}, {m['final_pnl']:+,.2f})"

        table.add_row(window_id, str(len({m["group_id"] for m in members if m["kept"]})),
                      str(sum(1 for m in members if m["kept"])), f"{len(dropped)} {reasons}".strip(),
                      line(scored[-1]) if scored else "not judged", line(scored[0]) if scored else "-")
    console.print(table)
    latest = store.latest_dataset()
    if latest is None:
        console.print("Training dataset: none yet.")
        return
    record, _ = latest
    console.print(
        f"Training dataset {record['dataset_id']}: {record['trajectories']} trajectories in {record['groups']} "
        f"groups from {record['windows']} windows (lookback {record['lookback_hours']} h to "
        f"{record['until_window']}); groups dropped: {record['dropped_json']}."
    )


def materialize_graph(settings: Settings, window_ids: list[str]) -> bool:
    """Materialize the window graph for these windows and then the training dataset, on the instance."""
    from dagster import DagsterInstance

    from babylon_assets.definitions import build_definitions
    from babylon_assets.instance import prepare_dagster_home
    from babylon_assets.pipeline import materialize_training_dataset, materialize_windows

    prepare_dagster_home(settings)
    defs = build_definitions(settings)
    with DagsterInstance.get() as instance, _bar() as progress:
        task = progress.add_task("Materializing windows", total=len(window_ids) + 1)
        runs = materialize_windows(defs, window_ids, instance,
                                   on_run=lambda run: progress.advance(task, advance=run.windows))
        runs.append(materialize_training_dataset(defs, instance))
        progress.advance(task)
    failed = [run for run in runs if not run.success]
    for run in failed:
        err_console.print(f"[red]run {run.run_id} ({run.label}) failed[/red]: see it in the UI (make ui)")
    return not failed


# What `babylon demo` trains with: small enough for a few minutes on 2 CPU cores (a step: one window of 8
# agents, 3 decisions of each, prompts cut to their last 256 tokens); the seed's defaults are GPU-scale
# (README, Training).
DEMO_TRAINING = {"ITERATIONS": 3, "WINDOWS_PER_ITERATION": 1, "DECISIONS_PER_TRAJECTORY": 3,
                 "MAX_SEQUENCE_TOKENS": 256, "MICRO_BATCH_SIZE": 4}


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
    store = _open_store(settings)
    try:
        _print_graph_results(store, window_ids)
    finally:
        store.dispose()
    if not ok:
        raise typer.Exit(1)
    if train:
        demo_settings = Settings.model_validate({**settings.model_dump(), **DEMO_TRAINING})
        started = time.monotonic()
        outcome = train_graph(demo_settings, window_ids)
        if outcome is None:
            raise typer.Exit(1)
        _print_training(outcome, demo_settings)
        console.print(f"Trained {len(outcome.steps)} steps of {demo_settings.BASE_MODEL} in "
                      f"{time.monotonic() - started:.0f} s (scoring again included; the cached judge pays nothing).")


def _run_windows(settings: Settings, window_ids: list[str], max_per_run: int) -> None:
    from dagster import DagsterInstance

    from babylon_assets.definitions import build_definitions
    from babylon_assets.instance import prepare_dagster_home
    from babylon_assets.pipeline import materialize_windows

    if not window_ids:
        console.print("No window with trajectories in that range: nothing to do.")
        return
    prepare_dagster_home(settings)
    defs = build_definitions(settings)
    with DagsterInstance.get() as instance, _bar() as progress:
        task = progress.add_task("Materializing windows", total=len(window_ids))
        runs = materialize_windows(defs, window_ids, instance, max_per_run=max_per_run,
                                   on_run=lambda run: progress.advance(task, advance=run.windows))
    table = Table(title=f"Window graph runs (instance {settings.dagster_home})", title_justify="left")
    for header in ("windows", "count", "run id", "result"):
        table.add_column(header)
    for run in runs:
        table.add_row(run.label, str(run.windows), run.run_id,
                      "[green]success[/green]" if run.success else "[red]failed[/red]")
    console.print(table)
    failed = [run for run in runs if not run.success]
    if failed:
        err_console.print(f"[red]{len(failed)} run(s) failed[/red]: the other windows' results are stored; "
                          "run the same command again to redo only what failed")
        raise typer.Exit(1)


@app.command()
def backfill(
    start: Annotated[str, typer.Option("--from", help="First window (UTC hour), e.g. 2025-01-15T00:00.")],
    end: Annotated[str, typer.Option("--to", help="Last window (UTC hour), inclusive.")],
    per_run: Annotated[int, typer.Option(min=1, help="Windows per run (default: a week in one run).")] = 168,
) -> None:
    """Materialize the window graph for a range of windows on the instance, as a few ranged runs."""
    first, last = _parse_hour(start), _parse_hour(end)
    assert first is not None and last is not None
    if last < first:
        raise typer.BadParameter("--to is before --from")
    hours = int((last - first).total_seconds() // 3600) + 1
    window_ids = [window_id_of(first + timedelta(hours=i)) for i in range(hours)]
    _run_windows(get_settings(), window_ids, per_run)


@app.command()
def score(
    lookback_hours: Annotated[int | None, typer.Option(help="Hours to look back [LOOKBACK_HOURS].")] = None,
    until: Annotated[str | None, typer.Option(help="End of the lookback (UTC); default: now.")] = None,
) -> None:
    """Materialize the window assets of every window with trajectories in the lookback, on the instance."""
    settings = get_settings()
    hours = settings.LOOKBACK_HOURS if lookback_hours is None else lookback_hours
    store = _open_store(settings)
    try:
        ids = lookback_window_ids(hours, _parse_until(until) or utcnow())
        window_ids = sorted(store.windows_with_rows(ids))
    finally:
        store.dispose()
    _run_windows(settings, window_ids, 168)


def _print_training(outcome: TrainingOutcome, settings: Settings) -> None:
    table = Table(title=f"Training run {outcome.batch_id}", title_justify="left", show_header=False)
    table.add_column("what")
    table.add_column("value")
    table.add_row("windows", f"{len(outcome.windows)}: {', '.join(outcome.windows[:6])}"
                             f"{' ...' if len(outcome.windows) > 6 else ''}")
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
        table.add_row(f"step {step.step}", f"loss {m.get('loss', 0.0):+.4f}, {step.groups} groups ({skipped} skipped), "
                                           + speed)
    table.add_row("checkpoint", f"{outcome.model_version} at {outcome.checkpoint_path}")
    table.add_row("W&B run", f"{outcome.wandb_dir} ({settings.WANDB_MODE}; `wandb sync <folder>` uploads it)"
                  if outcome.wandb_dir else "none (WANDB_MODE=disabled)")
    console.print(table)


def train_graph(settings: Settings, window_ids: list[str]) -> TrainingOutcome | None:
    """Materialize the windows, then the dataset and a checkpoint, in-process on the instance; a bar per step."""
    from dagster import DagsterInstance

    from babylon_assets.definitions import build_definitions
    from babylon_assets.instance import prepare_dagster_home
    from babylon_assets.pipeline import materialize_training, materialize_windows
    from babylon_assets.training import listening

    prepare_dagster_home(settings)
    defs = build_definitions(settings)
    outcomes: list[TrainingOutcome] = []
    with DagsterInstance.get() as instance:
        with _bar() as progress:
            task = progress.add_task("Scoring windows", total=len(window_ids))
            runs = materialize_windows(defs, window_ids, instance,
                                       on_run=lambda run: progress.advance(task, advance=run.windows))
        for run in runs:
            if not run.success:
                err_console.print(f"[yellow]window run {run.run_id} ({run.label}) failed[/yellow]; training on the "
                                  "windows that are scored")
        with _bar() as progress:
            task = progress.add_task(f"Training ({settings.ITERATIONS} steps)", total=settings.ITERATIONS)
            with listening(on_step=lambda report: progress.advance(task), on_outcome=outcomes.append):
                run = materialize_training(defs, instance)
    if not run.success:
        err_console.print(f"[red]training run {run.run_id} failed[/red]: its training_batches row says why; "
                          "see it in the UI (make ui)")
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
    windows_per_iteration: Annotated[int | None, typer.Option(
        help="Windows sampled per step [WINDOWS_PER_ITERATION].")] = None,
    learning_rate: Annotated[float | None, typer.Option(help="LoRA learning rate [LEARNING_RATE].")] = None,
    decisions_per_trajectory: Annotated[int | None, typer.Option(
        help="Decisions of each agent-window per step, 0 for all [DECISIONS_PER_TRAJECTORY].")] = None,
) -> None:
    """Score the lookback's windows, build the dataset and train a checkpoint, in-process on the instance."""
    overrides = {name: value for name, value in (
        ("MIN_AGENTS", min_agents), ("MIN_ACTIONS", min_actions), ("ITERATIONS", iterations),
        ("TARGET_TRAJECTORIES", target_trajectories), ("MAX_DROPOUT", max_dropout),
        ("LOOKBACK_HOURS", lookback_hours), ("WINDOWS_PER_ITERATION", windows_per_iteration),
        ("LEARNING_RATE", learning_rate), ("DECISIONS_PER_TRAJECTORY", decisions_per_trajectory))
        if value is not None}
    settings = Settings.model_validate({**get_settings().model_dump(), **overrides})
    store = _open_store(settings)
    try:
        window_ids = sorted(store.windows_with_rows(lookback_window_ids(settings.LOOKBACK_HOURS, utcnow())))
    finally:
        store.dispose()
    if not window_ids:
        err_console.print(f"No window with trajectories in the last {settings.LOOKBACK_HOURS} h: nothing to train on "
                          "(`babylon simulate` makes some).")
        raise typer.Exit(1)
    outcome = train_graph(settings, window_ids)
    if outcome is None:
        raise typer.Exit(1)
    _print_training(outcome, settings)


@app.command()
def evaluate(
    deploy: Annotated[bool, typer.Option("--deploy/--no-deploy",
                                         help="Deploy the checkpoint when the gate passes it.")] = False,
) -> None:
    """Evaluate the newest checkpoint against its base on the held-out markets (paired), in-process on the
    instance, and print the gate's verdict; with --deploy, a passing checkpoint is deployed."""
    from dagster import DagsterInstance

    from babylon_assets.db.evaluation_records import EvaluationRecords
    from babylon_assets.definitions import build_definitions
    from babylon_assets.instance import prepare_dagster_home
    from babylon_assets.pipeline import materialize_promotion

    settings = get_settings()
    store = _open_store(settings)
    try:
        newest = EvaluationRecords(store).newest_checkpoint(settings.MODEL_NAME)
        if newest is None:
            err_console.print(f"no checkpoint of {settings.MODEL_NAME} yet: `babylon train` makes one")
            raise typer.Exit(1)
        prepare_dagster_home(settings)
        with _progress(f"Evaluating {newest['modelId']} against {settings.BASE_MODEL}"), \
                DagsterInstance.get() as instance:
            run = materialize_promotion(build_definitions(settings), instance, deploy=deploy)
        row = EvaluationRecords(store).model(str(newest["modelId"]))
    finally:
        store.dispose()
    metrics = row.get("evalMetrics") or {}
    if not run.evaluated or not metrics:
        err_console.print(f"[red]evaluation run {run.run_id} failed[/red]: see it in the UI (make ui)")
        raise typer.Exit(1)
    _print_evaluation(row["modelId"], row["status"], metrics)
    raise typer.Exit(0 if row["status"] in ("ready", "deployed") else 1)


def _print_evaluation(model_id: str, status: str, metrics: dict[str, Any]) -> None:
    table = Table(title=f"Evaluation of {model_id} (plan {metrics['plan']['key'][:8]})", title_justify="left")
    for header in ("policy", "agent-windows", "mean P&L", "win rate", "mean max drawdown", "unparseable",
                   "judge score"):
        table.add_column(header)
    for label in ("base", "candidate"):
        m = metrics[label]
        judge = "-" if m["mean_judge_score"] is None else f"{m['mean_judge_score']:.3f}"
        name = metrics["base_policy"] if label == "base" else metrics["candidate_policy"]
        table.add_row(name, str(m["agent_windows"]), f"{m['mean_pnl']:+,.2f}", f"{m['win_rate']:.1%}",
                      f"{m['mean_max_drawdown']:,.2f}", f"{m['unparseable_rate']:.1%}", judge)
    console.print(table)
    paired = metrics["paired_pnl_difference"]
    low = "-inf" if paired["low"] is None else f"{paired['low']:+,.2f}"
    high = "+inf" if paired["high"] is None else f"{paired['high']:+,.2f}"
    console.print(f"Paired P&L difference (checkpoint - base) over {paired['pairs']} agent-windows: "
                  f"{paired['mean']:+,.2f}, {paired['confidence']:.0%} interval [{low}, {high}]")
    colour = "green" if status in ("ready", "deployed") else "red"
    console.print(f"Gate: [{colour}]{status}[/{colour}] - " + "; ".join(metrics["gate"]["reasons"]))


def _print_deployment(deployment: Any, gateway_port: int) -> None:
    console.print(f"Deployed {deployment.model_id} (previous: {deployment.previous or 'none'}) at "
                  f"{deployment.upstream.api_base}; serving file {deployment.serving_file} names it, so the "
                  "gateway sends every agent's next call there.")
    console.print("The game's own agents use it through the gateway with:")
    for name, value in deployment.agent_settings(gateway_port).items():
        console.print(f"  {name}={value}")


def _deploy_and_print(deploy: Callable[[Store, Any], Any]) -> None:
    """Run a deploy (by id, or a rollback) on the store with the settings' options, and print what it did."""
    from babylon_assets.deploy import DeployOptions

    settings = get_settings()
    store = _open_store(settings)
    try:
        deployment = deploy(store, DeployOptions.from_settings(settings))
    except StoreError as error:
        err_console.print(f"[red]error:[/red] {error}")
        raise typer.Exit(2) from None
    finally:
        store.dispose()
    _print_deployment(deployment, settings.GATEWAY_PORT)


@app.command("deploy")
def deploy_command(
    model_id: Annotated[str, typer.Argument(help="trained_models modelId, e.g. babylon-mmo@3.")],
    force: Annotated[bool, typer.Option("--force", help="Deploy a model the gate has not passed.")] = False,
) -> None:
    """Serve a checkpoint, mark it deployed (the previous one archived) and switch the gateway to it."""
    from babylon_assets.deploy import deploy_model

    _deploy_and_print(lambda store, options: deploy_model(store, options, model_id, force=force))


@app.command()
def rollback() -> None:
    """Deploy again the model that was deployed before the current one."""
    from babylon_assets.deploy import rollback as roll_back

    _deploy_and_print(roll_back)


@app.command()
def live(
    agents: Annotated[int, typer.Option(min=1, help="Agents playing every hour.")] = 8,
    llm: Annotated[bool, typer.Option("--llm/--scripted",
                                      help="LLM agents through the gateway (deployed model), or scripted.")] = False,
    window_seconds: Annotated[float, typer.Option(min=0.0, help="Wall seconds per simulated hour.")] = 120.0,
    start: Annotated[str | None, typer.Option(help="First simulated hour (UTC); default: 7 days ago.")] = None,
    windows: Annotated[int | None, typer.Option(min=1, help="Stop after this many hours (default: never).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the market.")] = 7,
    duration: Annotated[int, typer.Option(min=1, max=59, help="Simulated minutes of play per hour.")] = 10,
) -> None:
    """Play the market continuously on a simulated clock, hour after hour, through the gateway with the
    deployed model; with `make ui` beside it the sensors score, retrain, evaluate and deploy as hours close."""
    from babylon_assets.live import LivePlan, run_live, stopped_by_signal

    settings = get_settings()
    plan = LivePlan(agents=agents, llm=llm, window_seconds=window_seconds, start=_parse_hour(start),
                    windows=windows, seed=seed, duration_minutes=duration)
    store = _open_store(settings)

    def show(window: Any) -> None:
        models = ", ".join(window.models) or "scripted"
        lag = f", behind by {window.lag_seconds:.0f} s (total {window.total_lag_seconds:.0f} s)" \
            if window.lag_seconds >= 1 else ""
        console.print(f"{window.window_id}: {window.agents} agents, {window.decisions} decisions "
                      f"({window.unparseable} unparseable), mean P&L {window.mean_pnl:+,.2f}, model {models}, "
                      f"played in {window.played_seconds:.0f} s{lag}")

    try:
        with stopped_by_signal() as should_stop:
            console.print(f"Live play: {agents} {'LLM' if llm else 'scripted'} agents, one simulated hour per "
                          f"{window_seconds:g} s; Ctrl-C stops after the current hour.")
            played = run_live(store, settings, plan, on_window=show, should_stop=should_stop)
    except ValueError as error:
        err_console.print(f"[red]error:[/red] {error}")
        raise typer.Exit(2) from None
    finally:
        store.dispose()
    skipped = sum(1 for w in played if w.skipped)
    console.print(f"{len(played) - skipped} hour(s) played" + (f", {skipped} already played before" if skipped else ""))


@app.command()
def report(
    output: Annotated[str, typer.Option("--output", "-o", help="HTML file to write.")] = ".babylon/report.html",
) -> None:
    """Write one HTML page with the training history: per checkpoint, base vs checkpoint P&L with intervals,
    judge scores, unparseable rates, and the windows that trained it."""
    from babylon_assets.report import write_report

    settings = get_settings()
    store = _open_store(settings)
    try:
        path, checkpoints = write_report(store, Path(output), model_name=settings.MODEL_NAME)
    finally:
        store.dispose()
    console.print(f"{path}: {checkpoints} checkpoint(s)")


@app.command("export-dataset")
def export_dataset(
    output: Annotated[str, typer.Option("--output", "-o", help="File to write; - for standard output.")] = "-",
    format: Annotated[str, typer.Option("--format", help="Only jsonl: one art.Trajectory per line.")] = "jsonl",
) -> None:
    """Write the newest training dataset as ART trajectories with rewards, one JSON object per line."""
    from babylon_assets.export import export_dataset_jsonl

    if format != "jsonl":
        err_console.print(f"[red]error:[/red] format {format!r} is not supported; use jsonl")
        raise typer.Exit(2)
    settings = get_settings()
    store = _open_store(settings)
    try:
        if output == "-":
            dataset_id, written, missing = export_dataset_jsonl(store, sys.stdout)
        else:
            with open(output, "w", encoding="utf-8") as handle:
                dataset_id, written, missing = export_dataset_jsonl(store, handle)
    except StoreError as error:
        err_console.print(f"[red]error:[/red] {error}")
        raise typer.Exit(2) from None
    finally:
        store.dispose()
    note = f"; {missing} member(s) whose rows are gone were skipped" if missing else ""
    err_console.print(f"dataset {dataset_id}: {written} trajectories written to {output}{note}")


@app.command()
def ui(
    port: Annotated[int, typer.Option(help="Port of the UI on 127.0.0.1.")] = 3000,
    webserver_only: Annotated[bool, typer.Option("--webserver-only", help="No daemon (sensors stay idle).")] = False,
) -> None:
    """Start Dagster (webserver + daemon) on 127.0.0.1 with this code location; Ctrl-C or SIGTERM stops it."""
    import signal as signals

    from babylon_assets.instance import prepare_dagster_home, project_root
    from babylon_assets.ui import clear_community_popup, start_dagster, stop_dagster, terminate_group, wait_until_ready

    settings = get_settings()
    home = prepare_dagster_home(settings)
    url = f"http://127.0.0.1:{port}"
    process = start_dagster(port, workspace=project_root() / "workspace.yaml", dagster_home=home,
                            webserver_only=webserver_only)

    stopping: list[int] = []

    def forward(signum: int, _frame: object) -> None:
        # Only signal here: the main thread's wait() returns once the group has exited.
        stopping.append(signum)
        terminate_group(process)

    for sig in (signals.SIGTERM, signals.SIGINT, signals.SIGHUP):
        signals.signal(sig, forward)
    try:
        wait_until_ready(url, process)
        clear_community_popup(url)
        console.print(f"Dagster is up at {url} (instance {home}); Ctrl-C stops it.")
        process.wait()
    except Exception:
        if not stopping:
            raise
    finally:
        stop_dagster(process)
    if not stopping:
        raise typer.Exit(process.returncode or 1)


@app.command()
def gateway(port: Annotated[int | None, typer.Option(help="Port on 127.0.0.1 [GATEWAY_PORT].")] = None) -> None:
    """The agents' OpenAI-compatible endpoint: forwards to AGENT_MODEL, records every call (X-Babylon-Agent)."""
    import uvicorn

    from babylon_assets.gateway.app import Upstream, create_app
    from babylon_assets.gateway.recording import GatewayRecorder
    from babylon_assets.gateway.serving import ServingFile

    settings = get_settings()
    serving = Path(settings.SERVING_FILE).resolve()
    if not settings.AGENT_MODEL and not serving.is_file():
        err_console.print(f"[red]error:[/red] no model to forward to: set AGENT_MODEL (and AGENT_API_BASE), or deploy "
                          f"one ({serving})")
        raise typer.Exit(2)
    store = _open_store(settings)
    upstream = ServingFile(serving, Upstream(settings.AGENT_MODEL or "", settings.AGENT_API_BASE,
                                             settings.AGENT_API_KEY))
    app_ = create_app(upstream, GatewayRecorder(store))
    console.print(f"gateway on http://127.0.0.1:{port or settings.GATEWAY_PORT}/v1 -> {upstream().model} "
                  f"(serving file {serving}); recording into {store.target.redacted()}")
    uvicorn.run(app_, host="127.0.0.1", port=port or settings.GATEWAY_PORT, log_level="warning")


@app.command()
def instance() -> None:
    """Prepare DAGSTER_HOME (absolute, with the chosen dagster.yaml) and print its path."""
    from babylon_assets.instance import prepare_dagster_home

    print(prepare_dagster_home(get_settings()))


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Create or update the store's schema (our tables; the game's tables only in a store of our own)."""
    settings = get_settings()
    store = Store.from_settings(settings)
    try:
        store.upgrade()
        kind = "game database (its tables untouched)" if store.is_game_database else "store of our own"
        console.print(f"{store.target.redacted()}: schema up to date ({kind}).")
    except StoreError as error:
        err_console.print(f"[red]error:[/red] {error}")
        raise typer.Exit(2) from None
    finally:
        store.dispose()


@llm_app.command("build")
def llm_build() -> None:
    """Build llama-server from the llama-cpp-python sdist (minutes), or reuse the cached binary."""
    from babylon_assets.local_llm import LocalLlmError, build_server, server_binary

    cached = server_binary().is_file()
    started = time.perf_counter()
    try:
        with _progress("Building llama-server (minutes; cached afterwards)" if not cached else "Reusing llama-server"):
            binary = build_server(log=LLM_FOLDER.resolve() / "build.log" if _mkdir(LLM_FOLDER) else None)
    except LocalLlmError as error:
        err_console.print(f"[red]error:[/red] {error}")
        raise typer.Exit(2) from None
    verb = "reused" if cached else f"built in {time.perf_counter() - started:.0f} s"
    console.print(f"llama-server {verb}: {binary}")


def _mkdir(path: Path) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    return True


@llm_app.command("serve")
def llm_serve(
    port: Annotated[int, typer.Option(help="Port on 127.0.0.1.")] = 8080,
    context: Annotated[int, typer.Option(help="Context length in tokens.")] = 8192,
) -> None:
    """Start SmolLM2-135M-Instruct on 127.0.0.1 (or report the one running) and print the settings to use it."""
    from babylon_assets.local_llm import MODEL_ALIAS, LocalLlmError, serve

    try:
        state = serve(LLM_FOLDER.resolve(), port=port, context=context)
    except LocalLlmError as error:
        err_console.print(f"[red]error:[/red] {error}")
        raise typer.Exit(2) from None
    console.print(f"llama-server (pid {state.pid}) serves {MODEL_ALIAS} at {state.base_url}. To use it:\n"
                  f"  JUDGE_MODEL=openai/{MODEL_ALIAS} JUDGE_API_BASE={state.base_url} JUDGE_MODE=pinned\n"
                  f"  AGENT_MODEL=openai/{MODEL_ALIAS} AGENT_API_BASE={state.base_url}")


@llm_app.command("stop")
def llm_stop() -> None:
    """Stop the local server."""
    from babylon_assets.local_llm import stop

    console.print("stopped" if stop(LLM_FOLDER.resolve()) else "no local server was running")


@llm_app.command("status")
def llm_status() -> None:
    """Whether the local server runs and answers; exit 1 when it does not."""
    from babylon_assets.local_llm import status

    state = status(LLM_FOLDER.resolve())
    if state is None:
        console.print("no local server is running (babylon llm serve)")
        raise typer.Exit(1)
    console.print(f"pid {state.pid} at {state.base_url}: {'healthy' if state.healthy else 'NOT answering'}")
    raise typer.Exit(0 if state.healthy else 1)


if __name__ == "__main__":
    app()
