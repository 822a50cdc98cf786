"""The store as a Dagster resource."""

from __future__ import annotations

from datetime import timedelta
from typing import ClassVar

from dagster import ConfigurableResource, InitResourceContext
from pydantic import PrivateAttr

from babylon_assets.core.trajectory import ParseRules
from babylon_assets.db.store import Store
from babylon_assets.settings import BuiltFromSettings, lower_case_fields


class StoreResource(BuiltFromSettings, ConfigurableResource):  # type: ignore[misc]
    """The game's database and our tables at `database_url` (DESIGN 2)."""

    SETTING_FIELDS: ClassVar[dict[str, str]] = lower_case_fields(
        "DATABASE_URL", "GAME_READ_ONLY", "MAX_TRAJECTORY_CHARS", "FUTURE_TOLERANCE_MINUTES", "MAX_ABS_PNL"
    )

    database_url: str
    game_read_only: bool
    max_trajectory_chars: int
    future_tolerance_minutes: int
    max_abs_pnl: float

    _store: Store | None = PrivateAttr(default=None)

    def setup_for_execution(self, context: InitResourceContext) -> None:
        self._store = Store(
            self.database_url,
            game_read_only=self.game_read_only,
            parse_rules=ParseRules(
                max_chars=self.max_trajectory_chars,
                future_tolerance=timedelta(minutes=self.future_tolerance_minutes),
                max_abs_pnl=self.max_abs_pnl,
            ),
        )
        self._store.ensure_schema()
        if context.instance is not None and context.run_id:
            # Which process executes this run: a run whose process dies is then found and failed.
            from babylon_assets.orchestration.run_health import tag_this_process

            tag_this_process(context.instance, context.run_id)

    def teardown_after_execution(self, context: InitResourceContext) -> None:
        if self._store is not None:
            self._store.dispose()

    def get_store(self) -> Store:
        """The open store for this run."""
        if self._store is None:
            raise RuntimeError("StoreResource used outside a Dagster execution")
        return self._store
