"""The real service, `giftledger serve`, as a subprocess on 127.0.0.1."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from bench.seed import JWT_SECRET

HOST = "127.0.0.1"
START_TIMEOUT_SECONDS = 60
STOP_TIMEOUT_SECONDS = 20
POLL_SECONDS = 0.2
PROBE_TIMEOUT_SECONDS = 2
LOG_TAIL_CHARS = 3000


@dataclass(frozen=True)
class Running:
    base_url: str
    workers: int
    log: Path
    pid: int  # `giftledger serve`; with several workers, their parent.


def venv_command(name: str) -> str:
    """A console script of the environment this Python runs in (.venv/bin/...)."""
    return str(Path(sys.executable).parent / name)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def status_of(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=PROBE_TIMEOUT_SECONDS) as answer:  # noqa: S310
            return int(answer.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return None


def _wait_healthy(proc: subprocess.Popen[bytes], base_url: str, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        if status_of(f"{base_url}/health") == 200:
            return
        time.sleep(POLL_SECONDS)
    raise RuntimeError(f"the service did not start; its log ends:\n{tail(log)}")


def tail(log: Path) -> str:
    return log.read_text(errors="replace")[-LOG_TAIL_CHARS:]


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the server's own process group (it and its workers), then SIGKILL if needed."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=STOP_TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=STOP_TIMEOUT_SECONDS)


@contextmanager
def serving(url: str, workers: int, writer: str | None = None) -> Iterator[Running]:
    """`giftledger serve --workers N` on a free port, without access logs; errors are kept.
    `writer` sets GIFTLEDGER_WRITER (unset: the service's default)."""
    port = free_port()
    log = Path(tempfile.mkstemp(prefix=f"giftledger-bench-{workers}w-", suffix=".log")[1])
    env = {**os.environ, "GIFTLEDGER_DATABASE_URL": url, "GIFTLEDGER_JWT_SECRET": JWT_SECRET}
    if writer is not None:
        env["GIFTLEDGER_WRITER"] = writer
    command = [venv_command("giftledger"), "serve", "--host", HOST, "--port", str(port),
               "--workers", str(workers), "--no-access-log"]  # fmt: skip
    with log.open("wb") as err:
        proc = subprocess.Popen(  # noqa: S603 - our own console script.
            command, env=env, stdout=subprocess.DEVNULL, stderr=err, start_new_session=True
        )
    base_url = f"http://{HOST}:{port}"
    try:
        _wait_healthy(proc, base_url, log)
        yield Running(base_url, workers, log, proc.pid)
    finally:
        _stop(proc)
