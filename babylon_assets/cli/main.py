"""The `babylon` command and its groups; each `*_commands` module adds its commands to them."""

from __future__ import annotations

import os

import typer

app = typer.Typer(
    help="Babylon Assets: train LLM trading agents from their own live play.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
db_app = typer.Typer(help="The store's schema.", no_args_is_help=True)
app.add_typer(db_app, name="db")
gateway_app = typer.Typer(help="The agents' recording endpoint and its caller keys.", no_args_is_help=True)
app.add_typer(gateway_app, name="gateway")
keys_app = typer.Typer(help="Caller keys of the gateway: created, listed, revoked.", no_args_is_help=True)
gateway_app.add_typer(keys_app, name="keys")
llm_app = typer.Typer(help="SmolLM2 on a local llama.cpp server (OpenAI-compatible, 127.0.0.1).", no_args_is_help=True)
app.add_typer(llm_app, name="llm")


@app.callback()
def _load_environment() -> None:
    """Read `.env` from the working directory (the environment wins), as the game's tools do."""
    from dotenv import find_dotenv, load_dotenv

    path = find_dotenv(usecwd=True)
    if path:
        load_dotenv(path, override=False)
    # No network is assumed: litellm reads the cost map it ships instead of fetching one at import.
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
