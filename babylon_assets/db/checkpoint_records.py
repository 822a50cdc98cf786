"""Checkpoint rows in the game's `trained_models` table, as the torch backend's retention sees them.

A checkpoint folder is pruned only when no `ready` or `deployed` row points at it (the game's model
fetcher serves those) and no row that was ever deployed does (`babylon rollback` goes back to it), and
the rows of a pruned folder become `archived` before it goes, so no row is ever left pointing at nothing
(DESIGN 6).
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import or_, select, update

from babylon_assets.db.engine import new_id
from babylon_assets.db.schema import StoreIdentity, TrainedModel, table_of
from babylon_assets.db.store import Store

# Rows in these states are served or about to be: their checkpoints are never pruned.
SERVED_STATUSES = ("ready", "deployed")


class CheckpointRecords:
    """The torch backend's CheckpointRegistry on a Store."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def owner(self) -> tuple[str, str]:
        """This store's id (made on first use) and its URL without the password: whose checkpoints these are."""
        table = table_of(StoreIdentity)
        with self.store.engine.begin() as connection:
            # Ordered: should two first uses race, both take the same (earliest) row from then on.
            found = connection.execute(
                select(table.c.store_id).order_by(table.c.created_at, table.c.store_id).limit(1)
            ).scalar()
            if found is None:
                found = new_id()
                connection.execute(table.insert(), [{"store_id": found, "created_at": self.store.now_utc()}])
        return str(found), self.store.target.redacted()

    def recorded_checkpoints(self, paths: Sequence[str]) -> set[str]:
        """The paths among these that some trained_models row of this store names as its storagePath."""
        if not paths:
            return set()
        models = table_of(TrainedModel)
        query = select(models.c.storagePath).where(models.c.storagePath.in_(list(paths)))
        with self.store.engine.connect() as connection:
            return {row[0] for row in connection.execute(query)}

    def protected_checkpoints(self, paths: Sequence[str]) -> set[str]:
        """The paths among these that a ready or deployed trained_models row names as its storagePath."""
        if not paths:
            return set()
        models = table_of(TrainedModel)
        query = select(models.c.storagePath).where(
            models.c.storagePath.in_(list(paths)),
            or_(models.c.status.in_(SERVED_STATUSES), models.c.deployedAt.is_not(None)),
        )
        with self.store.engine.connect() as connection:
            return {row[0] for row in connection.execute(query)}

    def archive_checkpoints(self, paths: Sequence[str]) -> int:
        """Mark the (not served) rows of these checkpoints archived; how many rows changed."""
        if not paths:
            return 0
        self.store.require_game_writes("trained_models (archiving pruned checkpoints)")
        models = table_of(TrainedModel)
        now = self.store.now()
        statement = (
            update(models)
            .where(
                models.c.storagePath.in_(list(paths)),
                models.c.status.not_in(SERVED_STATUSES),
                models.c.status != "archived",
                models.c.deployedAt.is_(None),
            )
            .values(status="archived", archivedAt=now, updatedAt=now)
        )
        with self.store.engine.begin() as connection:
            return int(connection.execute(statement).rowcount or 0)
