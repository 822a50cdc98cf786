"""The serving settings file: which model answers the agents. Deploying writes it; the gateway re-reads it
when it changes, so a deploy switches every agent at once."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict
from pathlib import Path

from babylon_assets.gateway.app import Upstream

log = logging.getLogger(__name__)


def write_serving_file(path: Path, upstream: Upstream) -> None:
    """Write the serving settings atomically (a reader never sees half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps(asdict(upstream), indent=2))
    os.replace(partial, path)


class ServingFile:
    """The upstream named by the serving file, re-read when its modification time changes; `fallback`
    (AGENT_MODEL, AGENT_API_BASE, AGENT_API_KEY) while there is no file."""

    def __init__(self, path: Path, fallback: Upstream) -> None:
        self.path = path
        self.fallback = fallback
        self._seen: tuple[int, int] | None = None
        self._current = fallback

    def __call__(self) -> Upstream:
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            self._seen, self._current = None, self.fallback
            return self._current
        stamp = (stat.st_mtime_ns, stat.st_size)
        if stamp != self._seen:
            try:
                data = json.loads(self.path.read_text())
                self._current = Upstream(
                    model=data["model"],
                    api_base=data.get("api_base"),
                    api_key=data.get("api_key"),
                    version=data.get("version"),
                )
                self._seen = stamp
                log.info("gateway upstream is now %s (%s)", self._current.model, self._current.version)
            except (OSError, ValueError, KeyError) as error:
                # A broken file keeps the previous upstream answering; the next change is read again.
                log.error("serving file %s is unreadable (%s); keeping %s", self.path, error, self._current.model)
        return self._current
