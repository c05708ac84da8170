"""Start and stop a real Prefect API server for the benchmark's deployment-shaped run.

In production the flows run as deployments (prefect.yaml): a worker talks to a Prefect
server that is already up, so the server's start is not a per-sync cost. Without
PREFECT_API_URL a flow starts Prefect's temporary local API instead (~7 s), which would
charge that start to every sync. The benchmark therefore starts one server here, waits
for it to answer, and points the measured worker at it.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path


class PrefectServerError(RuntimeError):
    """The server did not come up; the message carries the tail of its log."""


@dataclass(frozen=True)
class PrefectServer:
    api_url: str
    pid: int
    home: Path
    log: Path
    start_s: float  # process start until /api/health answered


def free_port(host: str = "127.0.0.1") -> int:
    """A port the OS reports free now (a small race with other starters is acceptable)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def server_env(home: Path, host: str, port: int) -> dict[str, str]:
    """The server's environment: its own home (hence its own SQLite DB), no telemetry."""
    env = dict(os.environ)
    # A client setting inherited from the caller must not point the server elsewhere.
    env.pop("PREFECT_API_URL", None)
    env.update(
        PREFECT_HOME=str(home),
        PREFECT_SERVER_API_HOST=host,
        PREFECT_SERVER_API_PORT=str(port),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        DO_NOT_TRACK="1",
        PREFECT_SERVER_LOGGING_LEVEL="WARNING",
        PREFECT_LOGGING_LEVEL="WARNING",
    )
    return env


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no server log)"


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """Stop the server's whole process group (uvicorn and its service loops)."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)
    except ProcessLookupError:
        return
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            return
        proc.wait(timeout=10)


@contextmanager
def prefect_server(
    home: Path, host: str = "127.0.0.1", port: int | None = None, timeout: float = 90.0
) -> Iterator[PrefectServer]:
    """Run `prefect server start` for the duration of the block; yield its API URL.

    The server gets its own process group so the `finally` can end it and anything it
    spawned, whatever happens in the block.
    """
    home.mkdir(parents=True, exist_ok=True)
    port = port or free_port(host)
    log = home / "server.log"
    # The same interpreter's environment as the benchmark, so client and server match.
    prefect_bin = Path(sys.executable).parent / "prefect"
    launcher = [str(prefect_bin)] if prefect_bin.exists() else [sys.executable, "-m", "prefect"]
    # --no-ui: the dashboard is not part of what a sync costs and only slows the start.
    cmd = [*launcher, "server", "start", "--host", host, "--port", str(port)]
    cmd += ["--analytics-off", "--no-ui"]
    api_url = f"http://{host}:{port}/api"
    t0 = time.perf_counter()
    with log.open("wb") as log_fh:
        proc = subprocess.Popen(
            cmd,
            env=server_env(home, host, port),
            stdin=subprocess.DEVNULL,
            stdout=log_fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = t0 + timeout
        while not _healthy(f"{api_url}/health"):
            if proc.poll() is not None:
                raise PrefectServerError(
                    f"`{' '.join(cmd)}` exited with {proc.returncode} before answering:\n"
                    + _tail(log)
                )
            if time.perf_counter() > deadline:
                raise PrefectServerError(
                    f"Prefect server on {api_url} did not answer /health within "
                    f"{timeout:.0f}s:\n" + _tail(log)
                )
            time.sleep(0.25)
        yield PrefectServer(
            api_url=api_url,
            pid=proc.pid,
            home=home,
            log=log,
            start_s=time.perf_counter() - t0,
        )
    finally:
        _stop(proc)
