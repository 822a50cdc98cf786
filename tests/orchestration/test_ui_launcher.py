"""The UI in a real browser: `babylon ui` started from a script that ignores SIGTERM, the asset graph opened
in Debian's headless Chromium, the community popup cleared, and a clean stop on SIGTERM."""

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from babylon_assets.orchestration.ui_launcher import _post_graphql, wait_until_ready
from tests.conftest import IN_CI

ROOT = Path(__file__).resolve().parents[2]
ASSETS = ["trajectories", "market_outcomes", "window_groups", "ruler_scores", "training_dataset"]
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--no-first-run",
    "--disable-dev-shm-usage",
    "--disable-component-update",
    "--disable-sync",
]


def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        message = "Chromium is not installed: `apt-get install chromium` (Debian) to run the browser test"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def ignore_termination() -> None:
    # What a script's background job inherits: SIGTERM and SIGINT ignored.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def test_the_asset_graph_in_a_browser_and_a_clean_stop(tmp_path, simulated_store):
    browser = chromium()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "DATABASE_URL": simulated_store.target.url.render_as_string(hide_password=False),
        "DAGSTER_HOME": str(tmp_path / "dagster_home"),
    }
    log = (tmp_path / "ui.log").open("wb")
    ui = subprocess.Popen(
        [sys.executable, "-m", "babylon_assets.cli", "ui", "--port", str(port), "--webserver-only"],
        cwd=ROOT,
        env=env,
        preexec_fn=ignore_termination,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_until_ready(url, ui, timeout_s=240)
        deadline = time.monotonic() + 30
        while _post_graphql(url, "{ shouldShowNux }")["data"]["shouldShowNux"] and time.monotonic() < deadline:
            time.sleep(0.5)  # `babylon ui` clears the popup right after the server answers
        assert _post_graphql(url, "{ shouldShowNux }")["data"]["shouldShowNux"] is False
        page = f"{url}/locations/babylon_assets/asset-groups/windows"
        common = [
            browser,
            *CHROMIUM_FLAGS,
            f"--user-data-dir={tmp_path / 'chromium'}",
            "--window-size=1600,1000",
            "--virtual-time-budget=20000",
        ]
        dom = subprocess.run([*common, "--dump-dom", page], capture_output=True, text=True, timeout=180).stdout
        missing = [name for name in ASSETS if name not in dom]
        assert missing == [], f"not on the page: {missing}"
        screenshot = tmp_path / "asset_graph.png"
        subprocess.run([*common, f"--screenshot={screenshot}", page], capture_output=True, timeout=180)
        assert screenshot.stat().st_size > 10_000
    finally:
        ui.send_signal(signal.SIGTERM)
        try:
            code = ui.wait(timeout=60)
        except subprocess.TimeoutExpired:
            ui.kill()
            raise
    assert code == 0, (tmp_path / "ui.log").read_text()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
