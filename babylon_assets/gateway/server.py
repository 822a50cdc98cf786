"""The gateway served in a thread of this process on a free loopback port (evaluation play, tests)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import NamedTuple

import uvicorn

from babylon_assets.db.store import Store
from babylon_assets.gateway.app import GatewayLimits, Upstream, create_app
from babylon_assets.gateway.auth import GatewayKeys
from babylon_assets.gateway.recording import GatewayRecorder
from babylon_assets.settings import get_settings


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RunningGateway(NamedTuple):
    """A gateway running in this process: its base URL (…/v1), its recorder, and a key for this process's callers."""

    url: str
    recorder: GatewayRecorder
    api_key: str


@contextmanager
def gateway_in_thread(
    store: Store,
    upstream: Upstream | Callable[[], Upstream],
    *,
    backoff_s: float = 0.05,
    start_timeout_s: float = 20.0,
    upstream_timeout_s: float = 300.0,
) -> Iterator[RunningGateway]:
    """Run the gateway until the block ends, with a key minted for this process's own callers (any agent, the
    simulated clock, held-out play). Leaving the block writes every queued call before it returns."""
    port = free_port()
    settings = get_settings()
    recorder = GatewayRecorder(store, backoff_s=backoff_s, spool_file=Path(settings.GATEWAY_SPOOL_FILE))
    keys = GatewayKeys(store)
    api_key = keys.mint(may_set_clock=True, may_mark_evaluation=True)
    limits = replace(GatewayLimits.from_settings(settings), upstream_timeout_s=upstream_timeout_s)
    choose = upstream if callable(upstream) else (lambda: upstream)
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(choose, recorder, keys=keys, limits=limits), host="127.0.0.1", port=port, log_level="warning"
        )
    )
    thread = threading.Thread(target=server.run, name=f"gateway-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + start_timeout_s
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            raise RuntimeError(f"the gateway did not start on 127.0.0.1:{port}")
        time.sleep(0.05)
    try:
        yield RunningGateway(f"http://127.0.0.1:{port}/v1", recorder, api_key)
    finally:
        server.should_exit = True
        thread.join(timeout=60)
