"""The gateway's caller keys in our schema: created (the secret shown once), listed, revoked, looked up by id."""

from __future__ import annotations

import hashlib
import json
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import bindparam, select, update

from babylon_assets.db.schema import GatewayKey, table_of
from babylon_assets.db.store import Store

KEY_PREFIX = "bk"


def key_hash(token: str) -> str:
    """What is stored of a key: its SHA-256 (keys are 256 random bits, so no slow hash is needed)."""
    return hashlib.sha256(token.encode()).hexdigest()


def new_key() -> tuple[str, str]:
    """A fresh key id and the whole key, `bk-<id>-<secret>`: the id finds it, the secret proves it."""
    key_id = secrets.token_hex(6)
    return key_id, f"{KEY_PREFIX}-{key_id}-{secrets.token_urlsafe(32)}"


def key_id_of(token: str) -> str | None:
    """The id part of a key, or None when the token is not shaped like one of ours."""
    parts = token.split("-", 2)
    if len(parts) != 3 or parts[0] != KEY_PREFIX or len(parts[1]) != 12:
        return None
    return parts[1] if all(c in "0123456789abcdef" for c in parts[1]) else None


@dataclass(frozen=True, slots=True)
class GatewayKeyRecord:
    """A stored key (never its secret)."""

    key_id: str
    key_hash: str
    agents: tuple[str, ...] | None  # None: every agent of the game (the game server's key)
    may_set_clock: bool
    may_mark_evaluation: bool
    label: str
    created_at: datetime
    revoked_at: datetime | None


class GatewayKeyRecords:
    """Caller keys of the gateway, through one store."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def create(
        self,
        *,
        agents: Sequence[str] | None,
        may_set_clock: bool = False,
        may_mark_evaluation: bool = False,
        label: str = "",
    ) -> tuple[str, str]:
        """A new key for these agents (None: all of the game's); returns (key id, key), the key only this once."""
        if agents is not None and not agents:
            raise ValueError("a key speaks for at least one agent, or for the game server (all of its agents)")
        key_id, token = new_key()
        with self.store.engine.begin() as connection:
            connection.execute(
                table_of(GatewayKey).insert(),
                [
                    {
                        "key_id": key_id,
                        "key_hash": key_hash(token),
                        "agents_json": None if agents is None else json.dumps(sorted(set(agents))),
                        "may_set_clock": may_set_clock,
                        "may_mark_evaluation": may_mark_evaluation,
                        "label": label,
                        "created_at": self.store.now_utc(),
                        "revoked_at": None,
                    }
                ],
            )
        return key_id, token

    def find(self, key_id: str) -> GatewayKeyRecord | None:
        """The key with this id, revoked or not."""
        table = table_of(GatewayKey)
        with self.store.engine.connect() as connection:
            row = connection.execute(select(table).where(table.c.key_id == bindparam("k")), {"k": key_id}).mappings()
            found = row.first()
        return None if found is None else _record(found)

    def all(self) -> list[GatewayKeyRecord]:
        """Every key, oldest first."""
        table = table_of(GatewayKey)
        with self.store.engine.connect() as connection:
            rows = connection.execute(select(table).order_by(table.c.created_at, table.c.key_id)).mappings().all()
        return [_record(row) for row in rows]

    def revoke(self, key_id: str) -> bool:
        """Revoke a key at once; False when there is no such live key."""
        table = table_of(GatewayKey)
        with self.store.engine.begin() as connection:
            changed = connection.execute(
                update(table)
                .where(table.c.key_id == bindparam("k"), table.c.revoked_at.is_(None))
                .values(revoked_at=self.store.now_utc()),
                {"k": key_id},
            ).rowcount
        return bool(changed)


def _record(row: object) -> GatewayKeyRecord:
    data = dict(row)  # type: ignore[call-overload]
    agents = data["agents_json"]
    return GatewayKeyRecord(
        key_id=data["key_id"],
        key_hash=data["key_hash"],
        agents=None if agents is None else tuple(json.loads(agents)),
        may_set_clock=bool(data["may_set_clock"]),
        may_mark_evaluation=bool(data["may_mark_evaluation"]),
        label=data["label"],
        created_at=data["created_at"],
        revoked_at=data["revoked_at"],
    )
