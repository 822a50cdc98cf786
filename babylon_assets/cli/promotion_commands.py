"""`babylon evaluate`, `deploy`, `rollback`, `report`: from a checkpoint to the served model, and its history."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from babylon_assets.cli.common import (
    RunKeyOption,
    SubmitOption,
    console,
    dagster_session,
    err_console,
    fail,
    open_store,
    progress_bar,
    submit_and_print,
)
from babylon_assets.cli.main import app
from babylon_assets.db.store import Store, StoreError
from babylon_assets.settings import get_settings


@app.command()
def evaluate(
    deploy: Annotated[
        bool, typer.Option("--deploy/--no-deploy", help="Deploy the checkpoint when the gate passes it.")
    ] = False,
    submit: SubmitOption = False,
    run_key: RunKeyOption = "",
) -> None:
    """Evaluate the newest checkpoint against its base on the held-out markets (paired), in-process on the
    instance, and print the gate's verdict; with --deploy, a passing checkpoint is deployed. With --submit, the
    evaluation run goes to the instance (the `serve` queue) instead."""
    from babylon_assets.db.evaluation_records import EvaluationRecords
    from babylon_assets.orchestration.pipeline import materialize_promotion
    from babylon_assets.promotion.evaluation import EvaluationPlan, listening

    settings = get_settings()
    markets = 2 * len(EvaluationPlan.from_settings(settings).seeds)  # the base's and the checkpoint's
    with open_store(settings) as store:
        newest = EvaluationRecords(store).newest_checkpoint(settings.MODEL_NAME)
        if newest is None:
            err_console.print(f"no checkpoint of {settings.MODEL_NAME} yet: `babylon train` makes one")
            raise typer.Exit(1)
        if submit:
            from babylon_assets.orchestration.submit import promotion_submission

            key = f"evaluation:{newest.modelId}:{'deploy' if deploy else 'gate'}{run_key}"
            submit_and_print(settings, [promotion_submission(key, deploy)])
            return
        with progress_bar() as progress, dagster_session(settings) as (defs, instance):
            task = progress.add_task(
                f"Evaluating {newest.modelId} against {settings.BASE_MODEL} (markets played)", total=markets
            )
            with listening(lambda policy, seed, plays: progress.advance(task)):
                run = materialize_promotion(defs, instance, deploy=deploy)
        row = EvaluationRecords(store).model(str(newest.modelId))
    metrics = row.metrics
    if not run.evaluated or not metrics:
        err_console.print(f"[red]evaluation run {run.run_id} failed[/red]: see it in the UI (make ui)")
        raise typer.Exit(1)
    _print_evaluation(row.modelId, row.status, metrics)
    raise typer.Exit(0 if row.status in ("ready", "deployed") else 1)


def _print_evaluation(model_id: str, status: str, metrics: dict[str, Any]) -> None:
    table = Table(title=f"Evaluation of {model_id} (plan {metrics['plan']['key'][:8]})", title_justify="left")
    for header in (
        "policy",
        "agent-windows",
        "mean P&L",
        "win rate",
        "mean max drawdown",
        "unparseable",
        "judge score",
    ):
        table.add_column(header)
    for label in ("base", "candidate"):
        m = metrics[label]
        judge = "-" if m["mean_judge_score"] is None else f"{m['mean_judge_score']:.3f}"
        name = metrics["base_policy"] if label == "base" else metrics["candidate_policy"]
        table.add_row(
            name,
            str(m["agent_windows"]),
            f"{m['mean_pnl']:+,.2f}",
            f"{m['win_rate']:.1%}",
            f"{m['mean_max_drawdown']:,.2f}",
            f"{m['unparseable_rate']:.1%}",
            judge,
        )
    console.print(table)
    paired = metrics["paired_pnl_difference"]
    low = "-inf" if paired["low"] is None else f"{paired['low']:+,.2f}"
    high = "+inf" if paired["high"] is None else f"{paired['high']:+,.2f}"
    console.print(
        f"Paired P&L difference (checkpoint - base) over {paired['pairs']} agent-windows: "
        f"{paired['mean']:+,.2f}, {paired['confidence']:.0%} interval [{low}, {high}]"
    )
    colour = "green" if status in ("ready", "deployed") else "red"
    console.print(f"Gate: [{colour}]{status}[/{colour}] - " + "; ".join(metrics["gate"]["reasons"]))


def _print_deployment(deployment: Any, gateway_port: int) -> None:
    console.print(
        f"Deployed {deployment.model_id} (previous: {deployment.previous or 'none'}) at "
        f"{deployment.upstream.api_base}; serving file {deployment.serving_file} names it, so the "
        "gateway sends every agent's next call there."
    )
    console.print("The game's own agents use it through the gateway with:")
    for name, value in deployment.agent_settings(gateway_port).items():
        console.print(f"  {name}={value}")
    console.print("  AGENT_API_KEY=<a caller key: `babylon gateway keys create --game-server`>", highlight=False)


def _deploy_and_print(deploy: Callable[[Store, Any], Any]) -> None:
    """Run a deploy (by id, or a rollback) on the store with the settings' options, and print what it did."""
    from babylon_assets.promotion.deploy import DeployOptions

    settings = get_settings()
    try:
        with open_store(settings) as store:
            deployment = deploy(store, DeployOptions.from_settings(settings))
    except StoreError as error:
        fail(error)
    _print_deployment(deployment, settings.GATEWAY_PORT)


@app.command("deploy")
def deploy_command(
    model_id: Annotated[str, typer.Argument(help="trained_models modelId, e.g. babylon-mmo@3.")],
    force: Annotated[bool, typer.Option("--force", help="Deploy a model the gate has not passed.")] = False,
) -> None:
    """Serve a checkpoint, mark it deployed (the previous one archived) and switch the gateway to it."""
    from babylon_assets.promotion.deploy import deploy_model

    _deploy_and_print(lambda store, options: deploy_model(store, options, model_id, force=force))


@app.command()
def rollback() -> None:
    """Deploy again the model that was deployed before the current one."""
    from babylon_assets.promotion.deploy import rollback as roll_back

    _deploy_and_print(roll_back)


@app.command()
def report(
    output: Annotated[str, typer.Option("--output", "-o", help="HTML file to write.")] = ".babylon/report.html",
) -> None:
    """Write one HTML page with the training history: per checkpoint, base vs checkpoint P&L with intervals,
    judge scores, unparseable rates, and the windows that trained it."""
    from babylon_assets.promotion.report import write_report

    settings = get_settings()
    with open_store(settings) as store:
        path, checkpoints = write_report(store, Path(output), model_name=settings.MODEL_NAME)
    console.print(f"{path}: {checkpoints} checkpoint(s)")
