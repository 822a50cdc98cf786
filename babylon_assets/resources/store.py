"""The store as a Dagster resource."""

from __future__ import annotations

from datetime import timedelta

from dagster import ConfigurableResource, InitResourceContext
from pydantic import PrivateAttr

from babylon_assets.core.trajectory import ParseRules
from babylon_assets.db.store import Store


class StoreResource(ConfigurableResource):
    """The game's database and our tables at `database_url` (DESIGN 2)."""

    database_url: str
    game_read_only: bool = False
    max_trajectory_chars: int = 2_000_000
    future_tolerance_minutes: int = 5

    _store: Store | None = PrivateAttr(default=None)

    def setup_for_execution(self, context: InitResourceContext) -> None:
        self._store = Store(
            self.database_url,
            game_read_only=self.game_read_only,
            parse_rules=ParseRules(
                max_chars=self.max_trajectory_chars,
                future_tolerance=timedelta(minutes=self.future_tolerance_minutes),
            ),
        )
        self._store.ensure_schema()

    def teardown_after_execution(self, context: InitResourceContext) -> None:
        if self._store is not None:
            self._store.dispose()

    def get_store(self) -> Store:
        """The open store for this run."""
        if self._store is None:
            raise RuntimeError("StoreResource used outside a Dagster execution")
        return self._store
