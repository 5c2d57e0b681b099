"""With several workers, uvicorn's supervisor replaces only a worker that stays silent for the
whole `--worker-healthcheck-timeout`: a worker stalled for longer than uvicorn's own 5 s
(a loaded host, a long pause) keeps its process and the connections it holds."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from pathlib import Path

import httpx

from tests.integration.served import is_ledger_writer, served, server_logs, unpinned_env

UVICORN_HEALTHCHECK_SECONDS = 5  # uvicorn's default, which `giftledger serve` raises
STALL_SECONDS = UVICORN_HEALTHCHECK_SECONDS + 3
WORKERS = 2


def _pids() -> list[int]:
    return [int(entry.name) for entry in Path("/proc").iterdir() if entry.name.isdigit()]


def _ppid(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name, in parentheses, may itself hold spaces: the fields after it are fixed.
    return int(stat.rsplit(")", 1)[1].split()[1])


def _serving_on(port: int) -> int:
    """The pid of the `giftledger serve` supervisor listening on port."""
    for pid in _pids():
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"serve" in argv and str(port).encode() in argv:
            return pid
    raise AssertionError(f"no `giftledger serve` on port {port}")


def _children(pid: int) -> set[int]:
    return {child for child in _pids() if _ppid(child) == pid}


async def test_a_worker_stalled_longer_than_uvicorns_healthcheck_is_not_replaced(
    database_url, tmp_path
):
    env = unpinned_env(database_url)
    async with (
        served(env, tmp_path, "--workers", str(WORKERS)) as base,
        httpx.AsyncClient(base_url=base, timeout=30) as http,
    ):
        supervisor = _serving_on(int(base.rsplit(":", 1)[1]))
        workers = {pid for pid in _children(supervisor) if not is_ledger_writer(pid)}
        # multiprocessing's resource tracker is a child too; the workers are the rest (the ledger
        # writer process, also a child, is left out).
        assert len(workers) >= WORKERS, workers
        stalled = max(workers)
        os.kill(stalled, signal.SIGSTOP)
        try:
            await asyncio.sleep(STALL_SECONDS)
        finally:
            with contextlib.suppress(ProcessLookupError):  # replaced: asserted just below
                os.kill(stalled, signal.SIGCONT)
        assert (await http.get("/health")).status_code == 200
        now = {pid for pid in _children(supervisor) if not is_ledger_writer(pid)}
        assert now == workers, "a stalled worker was replaced"
    assert "died" not in server_logs(tmp_path)
