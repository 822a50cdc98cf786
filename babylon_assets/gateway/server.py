"""The gateway served in a thread of this process on a free loopback port (evaluation play, tests)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import uvicorn

from babylon_assets.db.store import Store
from babylon_assets.gateway.app import Upstream, create_app
from babylon_assets.gateway.recording import GatewayRecorder


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def gateway_in_thread(
    store: Store, upstream: Upstream | Callable[[], Upstream], *, backoff_s: float = 0.05, start_timeout_s: float = 20.0
) -> Iterator[tuple[str, GatewayRecorder]]:
    """Run the gateway until the block ends; yields its base URL (…/v1) and its recorder. Leaving the block
    writes every queued call before it returns."""
    port = free_port()
    recorder = GatewayRecorder(store, backoff_s=backoff_s)
    choose = upstream if callable(upstream) else (lambda: upstream)
    server = uvicorn.Server(
        uvicorn.Config(create_app(choose, recorder), host="127.0.0.1", port=port, log_level="warning")
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
        yield f"http://127.0.0.1:{port}/v1", recorder
    finally:
        server.should_exit = True
        thread.join(timeout=60)
