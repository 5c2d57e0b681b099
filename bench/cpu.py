"""CPU time per request, read from /proc: the service's ledger writer, the rest of the service
(its event loops, mostly), and PostgreSQL.

The writer's threads are the ones that commit batches and, with the writer in a process of its
own (`giftledger serve`'s default), the ones that read the workers' commands. A worker's event
loop cannot answer more than 1,000,000 / (its CPU per request) requests a second, nor the
writer commit more than 1,000,000 / (its CPU per command); with the writer as a thread of each
worker (GIFTLEDGER_WRITER=thread) the two share one GIL and so one such bound. These figures
say where a scenario's time goes, and so what would have to shrink to go faster.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from api.service import WRITER_OS_THREAD_NAME
from api.writer_process import CONNECTION_OS_THREAD_NAME

PROC = Path("/proc")
CLOCK_TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK")
POSTGRES_PROCESS_NAME = "postgres"
WRITER_THREAD_NAMES = frozenset({WRITER_OS_THREAD_NAME, CONNECTION_OS_THREAD_NAME})
MICROSECONDS = 1_000_000
# In /proc/<pid>/stat, counted after the ")" that closes the command name.
_PPID_FIELD, _UTIME_FIELD, _STIME_FIELD = 1, 11, 12


@dataclass(frozen=True)
class CpuSeconds:
    """CPU seconds consumed so far: by the service's writer threads, by its other threads, and
    by every PostgreSQL process on the machine (the benchmark's database is the only busy one)."""

    service: float
    writer: float
    postgres: float

    def __sub__(self, other: CpuSeconds) -> CpuSeconds:
        return CpuSeconds(
            self.service - other.service, self.writer - other.writer,
            self.postgres - other.postgres,
        )  # fmt: skip


@dataclass(frozen=True)
class CpuPerRequest:
    """Microseconds of CPU per request answered, by the service, PostgreSQL and wrk."""

    service: float
    writer: float
    postgres: float
    wrk: float

    @property
    def event_loops(self) -> float:
        """The service's CPU outside its writer threads: its event loops, mostly."""
        return self.service - self.writer

    @property
    def total(self) -> float:
        return self.service + self.postgres + self.wrk

    def line(self) -> str:
        return (
            f"CPU per request: service {self.service:.0f} us (writer {self.writer:.0f} us"
            f" of it), PostgreSQL {self.postgres:.0f} us, wrk {self.wrk:.0f} us"
        )


def per_request(used: CpuSeconds, requests: int, wrk_seconds: float) -> CpuPerRequest:
    scale = MICROSECONDS / max(1, requests)
    return CpuPerRequest(
        (used.service + used.writer) * scale, used.writer * scale, used.postgres * scale,
        wrk_seconds * scale,
    )  # fmt: skip


def _stat_fields(path: Path) -> list[str] | None:
    try:
        return path.read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):  # Gone since it was listed.
        return None


def _seconds(fields: list[str]) -> float:
    return (int(fields[_UTIME_FIELD]) + int(fields[_STIME_FIELD])) / CLOCK_TICKS_PER_SECOND


def _name(path: Path) -> str:
    try:
        return (path / "comm").read_text().strip()
    except OSError:
        return ""


def _processes() -> dict[int, tuple[int, str]]:
    """Each live process: its parent and its name."""
    found: dict[int, tuple[int, str]] = {}
    for entry in PROC.iterdir():
        if entry.name.isdigit() and (fields := _stat_fields(entry / "stat")) is not None:
            found[int(entry.name)] = (int(fields[_PPID_FIELD]), _name(entry))
    return found


def _tree(root: int, processes: dict[int, tuple[int, str]]) -> set[int]:
    tree = {root}
    grew = True
    while grew:
        children = {pid for pid, (ppid, _) in processes.items() if ppid in tree} - tree
        tree |= children
        grew = bool(children)
    return tree


def cpu_now(service_pid: int) -> CpuSeconds:
    """The CPU the service (the process and its workers) and PostgreSQL have used so far."""
    processes = _processes()
    service = writer = postgres = 0.0
    for pid in _tree(service_pid, processes):
        for task in (PROC / str(pid) / "task").glob("*"):
            fields = _stat_fields(task / "stat")
            if fields is None:
                continue
            if _name(task) in WRITER_THREAD_NAMES:
                writer += _seconds(fields)
            else:
                service += _seconds(fields)
    for pid, (_, name) in processes.items():
        if name == POSTGRES_PROCESS_NAME and (fields := _stat_fields(PROC / str(pid) / "stat")):
            postgres += _seconds(fields)
    return CpuSeconds(service, writer, postgres)
