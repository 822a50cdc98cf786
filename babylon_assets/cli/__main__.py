"""`python -m babylon_assets.cli`: the `babylon` command."""

from babylon_assets.cli import app

app()
