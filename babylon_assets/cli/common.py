"""What every command shares: the consoles, the store and Dagster sessions, progress, and argument parsing."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from sqlalchemy.exc import OperationalError

from babylon_assets.core.window_time import as_utc, parse_window_id
from babylon_assets.db.store import Store
from babylon_assets.settings import Settings

if TYPE_CHECKING:
    from dagster import DagsterInstance, Definitions

# Wide enough that CI logs keep the report's rows on one line.
console = Console(width=None if sys.stdout.isatty() else 160)
err_console = Console(stderr=True)


# `--submit` on the commands that start work: hand the runs to the instance's queue instead of running in-process.
SubmitOption = Annotated[
    bool,
    typer.Option(
        "--submit",
        help="Hand the runs to the instance (its daemon and run launcher: Celery workers with dagster.celery.yaml) "
        "and print their ids, instead of running them here.",
    ),
]
RunKeyOption = Annotated[
    str,
    typer.Option(
        help="With --submit: a suffix for the runs' keys. A key that names a queued, running or successful run is "
        "that run, not a second (submit again with another suffix to redo work that succeeded)."
    ),
]


def fail(error: object, code: int = 2) -> NoReturn:
    """Print one error line and exit with `code` (2: a bad argument or store)."""
    err_console.print(f"[red]error:[/red] {error}", soft_wrap=True, highlight=False)
    raise typer.Exit(code)


@contextmanager
def open_store(settings: Settings) -> Iterator[Store]:
    """The settings' store with its schema in place, disposed when the command is done with it; one that cannot
    be reached exits 2 with one line saying why."""
    store = Store.from_settings(settings)
    try:
        try:
            store.ensure_schema()
        except OperationalError as error:
            # A store that cannot be reached is a bad setting, said in one line (exit 2), not a traceback.
            reason = str(error.orig or error).strip().splitlines()[0]
            fail(f"cannot open the store at {store.target.redacted()}: {reason}")
        yield store
    finally:
        store.dispose()


@contextmanager
def dagster_session(settings: Settings) -> Iterator[tuple[Definitions, DagsterInstance]]:
    """The code location's definitions and the instance at DAGSTER_HOME (prepared first), as the UI sees them."""
    from dagster import DagsterInstance

    from babylon_assets.definitions import build_definitions
    from babylon_assets.orchestration.instance import InstanceConfigError, prepare_dagster_home
    from babylon_assets.orchestration.run_health import reap_dead_runs

    try:
        prepare_dagster_home(settings)
    except InstanceConfigError as error:
        fail(error)
    defs = build_definitions(settings)
    with DagsterInstance.get() as instance:
        with open_store(settings) as store:
            for dead in reap_dead_runs(instance, store):
                err_console.print(f"run {dead.run_id} ({dead.job_name}) marked failed: {dead.reason}", highlight=False)
        yield defs, instance


@contextmanager
def row_progress(description: str) -> Iterator[Callable[[int], None]]:
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


def inside_partitions(settings: Settings, window_ids: list[str]) -> list[str]:
    """The windows the hourly partitions hold. The rows of windows before PARTITION_START are quarantined as
    `before_partition_start` and reported in one line: no partition reads them, and none is asked for."""
    start = settings.partition_start_window
    outside = sorted(w for w in window_ids if w < start)  # canonical window ids sort as their hours do
    if outside:
        from babylon_assets.db.play_records import PlayRecords

        detail = f"its window is before PARTITION_START={start}: no partition reads it"
        with open_store(settings) as store:
            rows = PlayRecords(store).quarantine_windows(outside, "before_partition_start", detail)
        err_console.print(
            f"{len(outside)} window(s) before PARTITION_START={start} ({outside[0]} .. {outside[-1]}) are outside the "
            f"partitions: their {rows} row(s) are quarantined as before_partition_start",
            soft_wrap=True,
            highlight=False,
        )
    return [w for w in window_ids if w >= start]


def progress_bar() -> Progress:
    """A progress bar on stderr, shown only while the work runs."""
    return Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err_console,
        transient=True,
    )


def parse_until(value: str | None) -> datetime | None:
    """A --until option as an aware UTC time (None: now)."""
    if value is None:
        return None
    try:
        return as_utc(datetime.fromisoformat(value.replace("Z", "+00:00")))
    except ValueError:
        raise typer.BadParameter(f"{value!r} is not a time like 2025-01-15T10:00") from None


def parse_hour(value: str | None) -> datetime | None:
    """An hour option (a window id) as its start."""
    if value is None:
        return None
    try:
        return parse_window_id(value)
    except ValueError as error:
        raise typer.BadParameter(str(error)) from None


def submit_and_print(settings: Settings, submissions: list) -> None:
    """Hand runs to the instance (`--submit`): print each run's id, status and UI link; a key already standing for a
    run names that run instead of submitting a second."""
    from dagster import DagsterInstance

    from babylon_assets.orchestration.instance import InstanceConfigError, instance_file, prepare_dagster_home
    from babylon_assets.orchestration.submit import submit_runs

    try:
        chosen = instance_file()
        prepare_dagster_home(settings)
    except InstanceConfigError as error:
        fail(error)
    with DagsterInstance.get() as instance:
        runs = submit_runs(instance, submissions)
    for run in runs:
        verb = "already submitted as" if run.already_submitted else "submitted"
        link = f"{settings.DAGSTER_UI_URL.rstrip('/')}/runs/{run.run_id}"
        console.print(
            f"{run.label}: {verb} run {run.run_id} ({run.status}) {link}",
            highlight=False,
            soft_wrap=True,
        )
    console.print(
        f"{sum(not r.already_submitted for r in runs)} run(s) submitted to the instance ({chosen}); the daemon "
        "launches them (`babylon ui` runs one)",
        highlight=False,
    )
