"""`babylon ui`, `gateway`, `instance`, `db upgrade`: the long-running services and the stores they stand on."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from babylon_assets.cli.common import console, fail, open_store
from babylon_assets.cli.main import app, db_app, gateway_app, keys_app
from babylon_assets.db.gateway_keys import GatewayKeyRecords
from babylon_assets.db.store import StoreError
from babylon_assets.settings import get_settings


def relative_dagster_home_in_dotenv(folder: Path) -> str | None:
    """What is wrong when `folder/.env` sets a relative DAGSTER_HOME: `dagster dev` loads .env over the
    environment (so over the absolute path `babylon` prepared) and refuses a relative one."""
    from dotenv import dotenv_values

    dotenv = folder / ".env"
    if not dotenv.is_file():
        return None
    home = dotenv_values(dotenv).get("DAGSTER_HOME")
    if home and not Path(home).expanduser().is_absolute():
        return (
            f"{dotenv} sets DAGSTER_HOME={home}, a relative path: `dagster dev` reads .env over the environment and "
            f"refuses it. Remove the line (the default is .dagster) or give an absolute path, e.g. "
            f"DAGSTER_HOME={(folder / home).resolve()}"
        )
    return None


@app.command()
def ui(
    port: Annotated[int, typer.Option(help="Port of the UI on 127.0.0.1.")] = 3000,
    webserver_only: Annotated[bool, typer.Option("--webserver-only", help="No daemon (sensors stay idle).")] = False,
) -> None:
    """Start Dagster (webserver + daemon) on 127.0.0.1 with this code location; Ctrl-C or SIGTERM stops it."""
    import signal as signals

    from babylon_assets.orchestration.instance import prepare_dagster_home, project_root
    from babylon_assets.orchestration.ui_launcher import (
        clear_community_popup,
        start_dagster,
        stop_dagster,
        terminate_group,
        wait_until_ready,
    )

    problem = relative_dagster_home_in_dotenv(Path.cwd())
    if problem:
        fail(problem)
    settings = get_settings()
    home = prepare_dagster_home(settings)
    url = f"http://127.0.0.1:{port}"
    process = start_dagster(
        port, workspace=project_root() / "workspace.yaml", dagster_home=home, webserver_only=webserver_only
    )

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


@gateway_app.command("serve")
def gateway_serve(port: Annotated[int | None, typer.Option(help="Port on 127.0.0.1 [GATEWAY_PORT].")] = None) -> None:
    """The agents' OpenAI-compatible endpoint: admits callers with a key (`babylon gateway keys create`),
    forwards to the deployed model (or AGENT_MODEL) and records every call (X-Babylon-Agent)."""
    import uvicorn

    from babylon_assets.gateway.app import GatewayLimits, Upstream, create_app
    from babylon_assets.gateway.auth import GatewayKeys
    from babylon_assets.gateway.recording import GatewayRecorder
    from babylon_assets.gateway.serving import ServingFile

    settings = get_settings()
    serving = Path(settings.SERVING_FILE).resolve()
    if not settings.AGENT_MODEL and not serving.is_file():
        fail(f"no model to forward to: set AGENT_MODEL (and AGENT_API_BASE), or deploy one ({serving})")
    upstream = ServingFile(
        serving, Upstream(settings.AGENT_MODEL or "", settings.AGENT_API_BASE, settings.AGENT_API_KEY)
    )
    with open_store(settings) as store:
        app_ = create_app(
            upstream,
            GatewayRecorder(store, spool_file=Path(settings.GATEWAY_SPOOL_FILE)),
            keys=GatewayKeys(store),
            limits=GatewayLimits.from_settings(settings),
        )
        live = sum(1 for key in GatewayKeyRecords(store).all() if key.revoked_at is None)
        console.print(
            f"gateway on http://127.0.0.1:{port or settings.GATEWAY_PORT}/v1 -> {upstream().model} "
            f"(serving file {serving}); recording into {store.target.redacted()}; {live} caller key(s)"
        )
        uvicorn.run(app_, host="127.0.0.1", port=port or settings.GATEWAY_PORT, log_level="warning")


@keys_app.command("create")
def gateway_keys_create(
    agent: Annotated[
        list[str] | None, typer.Option("--agent", help="An agent id the key speaks for (repeatable).")
    ] = None,
    game_server: Annotated[
        bool, typer.Option("--game-server", help="The key speaks for every agent of the game (its server's key).")
    ] = False,
    clock: Annotated[bool, typer.Option("--clock", help="The key may set the simulated clock (babylon.at).")] = False,
    evaluation: Annotated[
        bool, typer.Option("--evaluation", help="The key may mark play held out (babylon.evaluation).")
    ] = False,
    label: Annotated[str, typer.Option(help="What the key is for, as a person reads it.")] = "",
) -> None:
    """Create a caller key and print it once (it is stored hashed): use it as the OpenAI client's api_key."""
    if bool(agent) == game_server:
        fail("name the agents the key speaks for (--agent ID, repeatable) or give --game-server, not both")
    with open_store(get_settings()) as store:
        key_id, token = GatewayKeyRecords(store).create(
            agents=None if game_server else agent, may_set_clock=clock, may_mark_evaluation=evaluation, label=label
        )
    console.print(f"key {key_id} created; it is shown only now, keep it secret:", highlight=False)
    print(token)


@keys_app.command("list")
def gateway_keys_list() -> None:
    """Every caller key: id, the agents it speaks for, what else it may set, created and revoked (never the key)."""
    with open_store(get_settings()) as store:
        keys = GatewayKeyRecords(store).all()
    table = Table(title="Gateway caller keys", title_justify="left")
    for header in ("key id", "speaks for", "may set", "label", "created", "revoked"):
        table.add_column(header)
    for key in keys:
        may = [
            name for name, allowed in (("clock", key.may_set_clock), ("evaluation", key.may_mark_evaluation)) if allowed
        ]
        table.add_row(
            key.key_id,
            "every agent (game server)" if key.agents is None else ", ".join(key.agents),
            ", ".join(may) or "-",
            key.label or "-",
            f"{key.created_at:%Y-%m-%d %H:%M}",
            f"{key.revoked_at:%Y-%m-%d %H:%M}" if key.revoked_at else "-",
        )
    console.print(table)


@keys_app.command("revoke")
def gateway_keys_revoke(key_id: Annotated[str, typer.Argument(help="The key's id (see `keys list`).")]) -> None:
    """Revoke a key: its callers are refused within seconds."""
    with open_store(get_settings()) as store:
        revoked = GatewayKeyRecords(store).revoke(key_id)
    if not revoked:
        fail(f"no live key {key_id!r}")
    console.print(f"key {key_id} revoked")


@app.command()
def instance() -> None:
    """Prepare DAGSTER_HOME (absolute, with the chosen dagster.yaml) and print its path."""
    from babylon_assets.orchestration.instance import prepare_dagster_home

    print(prepare_dagster_home(get_settings()))


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Create or update the store's schema (our tables; the game's tables only in a store of our own)."""
    try:
        with open_store(get_settings()) as store:
            kind = "game database (its tables untouched)" if store.is_game_database else "store of our own"
            console.print(f"{store.target.redacted()}: schema up to date ({kind}).")
    except StoreError as error:
        fail(error)


@app.command()
def worker(
    queue: Annotated[str, typer.Option(help="The queue to take runs from: cpu, gpu or serve.")] = "cpu",
    name: Annotated[str | None, typer.Option(help="The worker's name (default: <queue>-<pid>@<host>).")] = None,
) -> None:
    """A Celery worker for runs (CELERY_BROKER_URL, CELERY_BACKEND_URL, on the PostgreSQL instance): one run at a time
    in this process (solo pool), each with the in-process executor. This process becomes the worker (same pid)."""
    import os
    import sys

    from babylon_assets.core.run_queues import QUEUES
    from babylon_assets.orchestration.instance import InstanceConfigError, instance_file, prepare_dagster_home
    from babylon_assets.orchestration.workers import queue_name

    if queue not in QUEUES:
        fail(f"--queue {queue!r}: the queues are {', '.join(QUEUES)}")
    settings = get_settings()
    try:
        chosen = instance_file()
    except InstanceConfigError as error:
        fail(error)
    if not settings.CELERY_BROKER_URL:
        fail(
            f"set CELERY_BROKER_URL (and CELERY_BACKEND_URL, DAGSTER_PG_HOST) to run workers; the instance is {chosen}"
        )
    prepare_dagster_home(settings)
    broker_queue = queue_name(settings.CELERY_QUEUE_PREFIX, queue)
    command = [
        sys.executable,
        "-m",
        "celery",
        "--app",
        "babylon_assets.orchestration.worker_app",
        "worker",
        "--queues",
        broker_queue,
        "--pool",
        "solo",
        "--concurrency",
        "1",
        "--prefetch-multiplier",
        "1",
        "--hostname",
        name or f"{queue}-{os.getpid()}@%h",
        "--loglevel",
        "INFO",
        "--without-gossip",
        "--without-mingle",
    ]
    console.print(f"worker for queue {queue} ({broker_queue}), instance {settings.dagster_home}")
    sys.stdout.flush()
    os.execv(sys.executable, command)
