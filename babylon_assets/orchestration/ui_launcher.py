"""Starting and stopping Dagster's UI from a script, properly.

Two things a script must handle (issue 5): a process started from a script can inherit ignored SIGTERM and
SIGINT (a background job of a non-interactive shell ignores SIGINT), and `dagster dev` then cannot be
stopped: the child's handlers are reset to the defaults before it starts. And the UI shows a community
popup on first visit: the GraphQL mutation `setNuxSeen` clears it once the server answers.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT)


def _reset_signal_handlers() -> None:
    # Runs in the child between fork and exec: default dispositions, nothing blocked.
    for sig in _SIGNALS:
        signal.signal(sig, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, set())


def start_dagster(
    port: int,
    *,
    host: str = "127.0.0.1",
    workspace: Path,
    dagster_home: Path,
    webserver_only: bool = False,
    log_file: Path | None = None,
) -> subprocess.Popen[bytes]:
    """Start `dagster dev` (webserver and daemon) or only the webserver, on a loopback host, in its own group."""
    if webserver_only:
        command = [sys.executable, "-m", "dagster_webserver", "-h", host, "-p", str(port), "-w", str(workspace)]
    else:
        command = [sys.executable, "-m", "dagster", "dev", "-h", host, "-p", str(port), "-w", str(workspace)]
    env = {**os.environ, "DAGSTER_HOME": str(dagster_home)}
    output = open(log_file, "ab") if log_file is not None else None  # noqa: SIM115 - the child keeps it
    return subprocess.Popen(
        command,
        env=env,
        cwd=workspace.parent,
        stdout=output,
        stderr=subprocess.STDOUT if output is not None else None,
        preexec_fn=_reset_signal_handlers,  # noqa: PLW1509 - exactly what is needed here, see the module doc
        start_new_session=True,
    )


def _post_graphql(url: str, query: str, timeout: float = 10.0) -> dict[str, object]:
    request = urllib.request.Request(
        f"{url}/graphql", data=json.dumps({"query": query}).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 - loopback only
        return json.loads(response.read())


def wait_until_ready(url: str, process: subprocess.Popen[bytes], timeout_s: float = 180.0) -> None:
    """Wait until the webserver answers and the code location has loaded; raise when it exits or times out."""
    deadline = time.monotonic() + timeout_s
    query = "{ workspaceOrError { ... on Workspace { locationEntries { name loadStatus } } } }"
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"Dagster exited with code {process.returncode} before it was ready")
        try:
            data = _post_graphql(url, query, timeout=5)
            entries = data["data"]["workspaceOrError"]["locationEntries"]  # type: ignore[index]
            if entries and all(e["loadStatus"] == "LOADED" for e in entries):  # type: ignore[index,union-attr]
                return
        except (urllib.error.URLError, ConnectionError, KeyError, TypeError, TimeoutError):
            pass
        time.sleep(0.5)
    raise TimeoutError(f"Dagster did not answer at {url} within {timeout_s:.0f} s")


def clear_community_popup(url: str) -> bool:
    """Mark the first-visit popup as seen; returns whether the UI still wants to show it."""
    _post_graphql(url, "mutation { setNuxSeen }")
    data = _post_graphql(url, "{ shouldShowNux }")
    return bool(data["data"]["shouldShowNux"])  # type: ignore[index]


def terminate_group(process: subprocess.Popen[bytes], kill_after_s: float = 20.0) -> None:
    """SIGTERM the group now and SIGKILL it later if it is still there; never waits (safe in a signal handler,
    where waiting on the child could deadlock with the main thread's own wait)."""

    def send(sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)

    send(signal.SIGTERM)

    def kill_if_still_running() -> None:
        if process.poll() is None:
            send(signal.SIGKILL)

    timer = threading.Timer(kill_after_s, kill_if_still_running)
    timer.daemon = True
    timer.start()


def stop_dagster(process: subprocess.Popen[bytes], timeout_s: float = 30.0) -> int:
    """SIGTERM to the whole process group (webserver, daemon, code servers); SIGKILL if it does not stop."""
    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGTERM)
            return process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return process.wait()
