"""`babylon ...`: one module per command group over the store, the core and the Dagster graph; imports any layer."""

from babylon_assets.cli import (  # noqa: F401  (each module adds its commands to `app`)
    demo_command,
    learning_commands,
    llm_commands,
    play_commands,
    promotion_commands,
    service_commands,
    training_commands,
    window_commands,
)
from babylon_assets.cli.main import app

__all__ = ["app"]
