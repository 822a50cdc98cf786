"""`babylon check-windows`, `backfill`, `score`: the windows' readiness and the window graph on the instance."""

from __future__ import annotations

from datetime import datetime, timedelta
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
    parse_hour,
    parse_until,
    progress_bar,
    row_progress,
    submit_and_print,
)
from babylon_assets.cli.main import app
from babylon_assets.core.eligibility import (
    EligibilityRules,
    ReadinessVerdict,
    WindowSummary,
    accounting_line,
    readiness_verdict,
)
from babylon_assets.core.window_time import lookback_window_ids, utcnow, window_id_of
from babylon_assets.db.store import Store, StoreError
from babylon_assets.db.window_records import GroupMemberRecord, WindowRecords
from babylon_assets.settings import Settings, get_settings


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
            "[green]ready[/green]"
            if ready
            else f"[yellow]needs {rules.min_agents - summary.eligible_agents} more agent(s)[/yellow]",
        )
    console.print(table)
    style = "bold green" if verdict.ready else "bold red"
    console.print(verdict.message, style=style, highlight=False)


def readiness_report(
    settings: Settings, rules: EligibilityRules, lookback_hours: int, until: datetime | None
) -> tuple[list[WindowSummary], ReadinessVerdict]:
    """Compute the readiness report over the lookback."""
    with open_store(settings) as store, row_progress("Reading windows") as update:
        summaries = store.window_summaries(
            rules, lookback_hours, until, grace_minutes=settings.GRACE_MINUTES, on_progress=update
        )
    # A window before the partitions can never be trained on: it does not count towards readiness.
    start = settings.partition_start_window
    return summaries, readiness_verdict([s for s in summaries if s.window_id >= start], rules)


@app.command("check-windows")
def check_windows(
    min_agents: Annotated[int | None, typer.Option(help="Agents a window needs [MIN_AGENTS].")] = None,
    min_actions: Annotated[int | None, typer.Option(help="LLM decisions an agent-window needs [MIN_ACTIONS].")] = None,
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
    end = parse_until(until)
    try:
        summaries, verdict = readiness_report(settings, rules, hours, end)
    except (StoreError, ValueError) as error:
        fail(error)
    title = f"Windows in the {hours} h before {(end or utcnow()):%Y-%m-%dT%H:%M}Z"
    render_readiness_report(summaries, verdict, rules, title)
    line = accounting_line(
        sum(s.rows for s in summaries),
        sum(s.used_rows for s in summaries),
        sum(s.excluded_rows for s in summaries),
        sum(s.quarantined_rows for s in summaries),
    )
    console.print(line, highlight=False)
    start = settings.partition_start_window
    outside = [s for s in summaries if s.window_id < start]
    if outside:
        console.print(
            f"{len(outside)} window(s) with {sum(s.rows for s in outside)} row(s) lie before PARTITION_START={start}: "
            "no partition reads them; `babylon score` and `babylon train` quarantine them as before_partition_start.",
            highlight=False,
        )
    raise typer.Exit(0 if verdict.ready else 1)


def print_graph_results(store: Store, window_ids: list[str]) -> None:
    """Per window: groups kept and dropped, the best and worst agent by score; then the dataset."""
    table = Table(title="Scores per window (judge: see ruler_scores metadata)", title_justify="left")
    for header in ("window (UTC)", "groups", "kept", "dropped", "best agent (score, P&L)", "worst agent (score, P&L)"):
        table.add_column(header)
    for window_id in window_ids:
        members = WindowRecords(store).group_members(window_id)
        scored = sorted((m for m in members if m.score is not None), key=lambda m: m.score or 0.0)
        dropped = [m for m in members if not m.kept]
        reasons = ", ".join(sorted({m.reason for m in dropped}))

        def line(m: GroupMemberRecord) -> str:
            return f"{m.agent_id} ({m.score or 0.0:.3f}, {m.final_pnl or 0.0:+,.2f})"

        table.add_row(
            window_id,
            str(len({m.group_id for m in members if m.kept})),
            str(sum(1 for m in members if m.kept)),
            f"{len(dropped)} {reasons}".strip(),
            line(scored[-1]) if scored else "not judged",
            line(scored[0]) if scored else "-",
        )
    console.print(table)
    latest = WindowRecords(store).latest_dataset()
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
    from babylon_assets.orchestration.pipeline import materialize_training_dataset, materialize_windows

    window_ids = inside_partitions(settings, window_ids)
    with dagster_session(settings) as (defs, instance), progress_bar() as progress:
        task = progress.add_task("Materializing windows", total=len(window_ids) + 1)
        runs = materialize_windows(
            defs, window_ids, instance, on_run=lambda run: progress.advance(task, advance=run.windows)
        )
        runs.append(materialize_training_dataset(defs, instance))
        progress.advance(task)
    failed = [run for run in runs if not run.success]
    for run in failed:
        err_console.print(f"[red]run {run.run_id} ({run.label}) failed[/red]: see it in the UI (make ui)")
    return not failed


def _run_windows(
    settings: Settings, window_ids: list[str], max_per_run: int, submit: bool = False, run_key: str = ""
) -> None:
    from babylon_assets.orchestration.pipeline import materialize_windows
    from babylon_assets.orchestration.submit import window_submissions

    window_ids = inside_partitions(settings, window_ids)
    if not window_ids:
        console.print("No window with trajectories in that range: nothing to do.")
        return
    if submit:
        submit_and_print(settings, window_submissions(window_ids, max_per_run, run_key))
        return
    with dagster_session(settings) as (defs, instance), progress_bar() as progress:
        task = progress.add_task("Materializing windows", total=len(window_ids))
        runs = materialize_windows(
            defs,
            window_ids,
            instance,
            max_per_run=max_per_run,
            on_run=lambda run: progress.advance(task, advance=run.windows),
        )
    table = Table(title=f"Window graph runs (instance {settings.dagster_home})", title_justify="left")
    for header in ("windows", "count", "run id", "result"):
        table.add_column(header)
    for run in runs:
        table.add_row(
            run.label, str(run.windows), run.run_id, "[green]success[/green]" if run.success else "[red]failed[/red]"
        )
    console.print(table)
    failed = [run for run in runs if not run.success]
    if failed:
        err_console.print(
            f"[red]{len(failed)} run(s) failed[/red]: the other windows' results are stored; "
            "run the same command again to redo only what failed"
        )
        raise typer.Exit(1)


@app.command()
def backfill(
    start: Annotated[str, typer.Option("--from", help="First window (UTC hour), e.g. 2025-01-15T00:00.")],
    end: Annotated[str, typer.Option("--to", help="Last window (UTC hour), inclusive.")],
    per_run: Annotated[int, typer.Option(min=1, help="Windows per run (default: a week in one run).")] = 168,
    submit: SubmitOption = False,
    run_key: RunKeyOption = "",
) -> None:
    """Materialize the window graph for a range of windows on the instance, as a few ranged runs."""
    first, last = parse_hour(start), parse_hour(end)
    assert first is not None and last is not None
    if last < first:
        raise typer.BadParameter("--to is before --from")
    hours = int((last - first).total_seconds() // 3600) + 1
    window_ids = [window_id_of(first + timedelta(hours=i)) for i in range(hours)]
    _run_windows(get_settings(), window_ids, per_run, submit, run_key)


@app.command()
def score(
    lookback_hours: Annotated[int | None, typer.Option(help="Hours to look back [LOOKBACK_HOURS].")] = None,
    until: Annotated[str | None, typer.Option(help="End of the lookback (UTC); default: now.")] = None,
    submit: SubmitOption = False,
    run_key: RunKeyOption = "",
) -> None:
    """Materialize the window assets of every window with trajectories in the lookback, on the instance."""
    settings = get_settings()
    hours = settings.LOOKBACK_HOURS if lookback_hours is None else lookback_hours
    with open_store(settings) as store:
        window_ids = sorted(store.windows_with_rows(lookback_window_ids(hours, parse_until(until) or utcnow())))
    _run_windows(settings, window_ids, 168, submit, run_key)
