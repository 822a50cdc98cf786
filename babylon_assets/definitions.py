"""The one Definitions object of the `babylon_assets` code location."""

from __future__ import annotations

from dagster import Definitions

from babylon_assets.resources.store import StoreResource
from babylon_assets.settings import get_settings


def build_definitions() -> Definitions:
    """Definitions with resources chosen from the environment's settings."""
    settings = get_settings()
    return Definitions(
        assets=[],
        resources={
            "store": StoreResource(
                database_url=settings.DATABASE_URL,
                game_read_only=settings.GAME_READ_ONLY,
                max_trajectory_chars=settings.MAX_TRAJECTORY_CHARS,
                future_tolerance_minutes=settings.FUTURE_TOLERANCE_MINUTES,
            )
        },
    )


defs = build_definitions()
