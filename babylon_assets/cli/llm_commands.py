"""`babylon llm build|serve|stop|status`: SmolLM2 on a local llama.cpp server."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from babylon_assets.cli.common import console, fail, progress_bar
from babylon_assets.cli.main import llm_app

LLM_FOLDER = Path(".babylon") / "llm"


@llm_app.command("build")
def llm_build() -> None:
    """Build llama-server from the llama-cpp-python sdist (minutes), or reuse the cached binary."""
    from babylon_assets.llm.local_server import LocalLlmError, build_server, server_binary

    cached = server_binary().is_file()
    started = time.perf_counter()
    LLM_FOLDER.mkdir(parents=True, exist_ok=True)
    # Stages by their share of a build's time: the compile is nearly all of it and counts itself.
    starts = {"download": 0, "configure": 2, "compile": 5, "install": 99}
    try:
        with progress_bar() as progress:
            task = progress.add_task("Reusing llama-server" if cached else "Building llama-server", total=100)

            def show(stage: str, percent: int) -> None:
                done = starts[stage] + (percent * 94 // 100 if stage == "compile" else 0)
                progress.update(task, completed=done, description=f"Building llama-server: {stage}")

            binary = build_server(log=LLM_FOLDER.resolve() / "build.log", on_progress=show)
            progress.update(task, completed=100)
    except LocalLlmError as error:
        fail(error)
    verb = "reused" if cached else f"built in {time.perf_counter() - started:.0f} s"
    console.print(f"llama-server {verb}: {binary}")


@llm_app.command("serve")
def llm_serve(
    port: Annotated[int, typer.Option(help="Port on 127.0.0.1.")] = 8080,
    context: Annotated[int, typer.Option(help="Context length in tokens.")] = 8192,
) -> None:
    """Start SmolLM2-135M-Instruct on 127.0.0.1 (or report the one running) and print the settings to use it."""
    from babylon_assets.llm.local_server import MODEL_ALIAS, LocalLlmError, serve

    try:
        state = serve(LLM_FOLDER.resolve(), port=port, context=context)
    except LocalLlmError as error:
        fail(error)
    console.print(
        f"llama-server (pid {state.pid}) serves {MODEL_ALIAS} at {state.base_url}. To use it:\n"
        f"  JUDGE_MODEL=openai/{MODEL_ALIAS} JUDGE_API_BASE={state.base_url} JUDGE_MODE=pinned\n"
        f"  AGENT_MODEL=openai/{MODEL_ALIAS} AGENT_API_BASE={state.base_url}"
    )


@llm_app.command("stop")
def llm_stop() -> None:
    """Stop the local server."""
    from babylon_assets.llm.local_server import stop

    console.print("stopped" if stop(LLM_FOLDER.resolve()) else "no local server was running")


@llm_app.command("status")
def llm_status() -> None:
    """Whether the local server runs and answers; exit 1 when it does not."""
    from babylon_assets.llm.local_server import status

    state = status(LLM_FOLDER.resolve())
    if state is None:
        console.print("no local server is running (babylon llm serve)")
        raise typer.Exit(1)
    console.print(f"pid {state.pid} at {state.base_url}: {'healthy' if state.healthy else 'NOT answering'}")
    raise typer.Exit(0 if state.healthy else 1)
