"""Helpers for tests that start the real `giftledger` console script: servers and CLI calls."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path

import httpx

from api.service import WRITER_OS_THREAD_NAME

GIFTLEDGER = Path(sys.executable).with_name("giftledger")
STARTUP_SECONDS_MAX = 60
STOP_SECONDS_MAX = 30
CLI_TIMEOUT_SECONDS = 120
LOG_TAIL_CHARS = 4000  # of a server's output, in the message of a start that failed


def unpinned_env(database_url: str, **extra: str) -> dict[str, str]:
    """The environment of a process on the test database that uses the database's key set."""
    env = {k: v for k, v in os.environ.items() if k != "GIFTLEDGER_JWT_SECRET"}
    return {**env, "GIFTLEDGER_DATABASE_URL": database_url, **extra}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def _wait_until_up(base: str, proc: subprocess.Popen[bytes], log_dir: Path) -> None:
    deadline = time.monotonic() + STARTUP_SECONDS_MAX
    async with httpx.AsyncClient(base_url=base) as client:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                tail = server_logs(log_dir)[-LOG_TAIL_CHARS:]
                raise AssertionError(f"the server exited with {proc.returncode}:\n{tail}")
            try:
                if (await client.get("/health")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.2)
    tail = server_logs(log_dir)[-LOG_TAIL_CHARS:]
    raise AssertionError(f"{base} did not start in {STARTUP_SECONDS_MAX} s:\n{tail}")


@asynccontextmanager
async def served(env: Mapping[str, str], log_dir: Path, *options: str) -> AsyncIterator[str]:
    """`giftledger serve` on a free port, its stdout and stderr written to log_dir; yields its
    base URL and stops it (gracefully) on exit."""
    port = free_port()
    with (log_dir / "stdout.log").open("wb") as out, (log_dir / "stderr.log").open("wb") as err:
        proc = subprocess.Popen(  # noqa: ASYNC220 - started once, waited on below.
            [str(GIFTLEDGER), "serve", "--port", str(port), *options],
            env=dict(env),
            stdout=out,
            stderr=err,
        )
        try:
            base = f"http://127.0.0.1:{port}"
            await _wait_until_up(base, proc, log_dir)
            yield base
        finally:
            proc.terminate()
            await asyncio.to_thread(proc.wait, STOP_SECONDS_MAX)


def server_logs(log_dir: Path) -> str:
    return "".join(
        (log_dir / name).read_text(errors="replace") for name in ("stdout.log", "stderr.log")
    )


async def cli(env: Mapping[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """Run the console script; never raises on a non-zero exit."""
    return await asyncio.to_thread(
        subprocess.run,
        [str(GIFTLEDGER), *args],
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_SECONDS,
        check=False,
    )


async def cli_ok(env: Mapping[str, str], *args: str) -> str:
    done = await cli(env, *args)
    assert done.returncode == 0, (args, done.stdout, done.stderr)
    return done.stdout


def is_ledger_writer(pid: int) -> bool:
    """The writer process runs the thread that names itself ledger-writer; workers do not."""
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return False
    for task in tasks:
        try:
            if (task / "comm").read_text().strip() == WRITER_OS_THREAD_NAME:
                return True
        except OSError:
            continue
    return False
