"""Who may call the gateway: a key (the OpenAI clients' api_key, sent as a Bearer token) that speaks for some
agents, or for the game server's every agent; and what else it may set (the simulated clock, held-out play).

Keys live hashed in our schema (`babylon gateway keys ...`). The platform's own callers (the evaluation, `live`,
the simulator's LLM agents) get keys minted in their own process, never stored, that vanish with it.
"""

from __future__ import annotations

import hmac
import threading
import time
from dataclasses import dataclass

from babylon_assets.db.gateway_keys import GatewayKeyRecords, key_hash, key_id_of, new_key
from babylon_assets.db.store import Store

# A stored key is looked up again after this long, so a revocation takes effect within it.
KEY_CACHE_SECONDS = 10.0
# Key ids remembered at most (keys and misses alike): made-up ids cannot grow the memory without bound.
KEY_CACHE_SIZE = 4096


@dataclass(frozen=True, slots=True)
class Grant:
    """What a verified key may do."""

    key_id: str
    agents: frozenset[str] | None  # None: every agent of the game
    may_set_clock: bool
    may_mark_evaluation: bool

    def speaks_for(self, agent_id: str) -> bool:
        """Whether this key may record play as this agent."""
        return self.agents is None or agent_id in self.agents


class GatewayKeys:
    """Verifies callers' keys against those minted in this process and those stored (cached briefly)."""

    def __init__(self, store: Store | None) -> None:
        self._records = GatewayKeyRecords(store) if store is not None else None
        self._minted: dict[str, tuple[str, Grant]] = {}
        self._cached: dict[str, tuple[float, str, Grant | None]] = {}
        self._lock = threading.Lock()

    def mint(
        self, *, agents: frozenset[str] | None = None, may_set_clock: bool = False, may_mark_evaluation: bool = False
    ) -> str:
        """A key for this process's own callers (in memory only): returns it."""
        key_id, token = new_key()
        with self._lock:
            self._minted[key_id] = (key_hash(token), Grant(key_id, agents, may_set_clock, may_mark_evaluation))
        return token

    def verify(self, token: str) -> Grant | None:
        """The grant of a valid, unrevoked key, or None."""
        key_id = key_id_of(token)
        if key_id is None:
            return None
        hashed = key_hash(token)
        with self._lock:
            minted = self._minted.get(key_id)
            cached = self._cached.get(key_id)
        if minted is not None:
            return minted[1] if hmac.compare_digest(minted[0], hashed) else None
        if cached is None or time.monotonic() - cached[0] > KEY_CACHE_SECONDS:
            cached = (time.monotonic(), *self._lookup(key_id))
            with self._lock:
                self._cached.pop(key_id, None)
                while len(self._cached) >= KEY_CACHE_SIZE:
                    self._cached.pop(next(iter(self._cached)))  # the oldest first
                self._cached[key_id] = cached
        _, stored_hash, grant = cached
        return grant if grant is not None and hmac.compare_digest(stored_hash, hashed) else None

    def _lookup(self, key_id: str) -> tuple[str, Grant | None]:
        record = self._records.find(key_id) if self._records is not None else None
        if record is None or record.revoked_at is not None:
            return "", None
        agents = None if record.agents is None else frozenset(record.agents)
        return record.key_hash, Grant(key_id, agents, record.may_set_clock, record.may_mark_evaluation)
