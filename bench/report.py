"""What the benchmark prints: per-run lines, the final tables, targets, and bench/RESULTS.md."""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from bench.budget import Budget, pay_budgets
from bench.export import EXPORT_PEAK_MIB_MAX, ExportResult
from bench.load import (
    FLOOR,
    PAY,
    UNLOADED_CONNECTIONS,
    WRK_CONNECTIONS,
    WRK_DURATION_SECONDS,
    WRK_THREADS,
    Measurement,
)
from bench.rebuild import RebuildResult

RESULTS_FILE = Path(__file__).parent / "RESULTS.md"
PAY_FLOOR_RATIO_MIN = 0.5
PAY_P99_MS_MAX = 25.0
REBUILD_SECONDS_MAX = 60.0
REBUILD_PEAK_MIB_MAX = 500.0
PAY_AMOUNT_MINOR = 1  # Each pay is 0.01 EUR.
KIB_PER_GIB = 1024 * 1024


@dataclass(frozen=True)
class LedgerCheck:
    """Redeemed minor units the ledger gained during one pay run, against wrk's 2xx count.

    Requests still in flight when wrk stopped were never acknowledged; the service may or may
    not have committed them, so they may add at most their own amount.
    """

    workers: int
    acknowledged: int
    in_flight: int
    delta_minor: int

    @property
    def passed(self) -> bool:
        low = self.acknowledged * PAY_AMOUNT_MINOR
        return low <= self.delta_minor <= low + self.in_flight * PAY_AMOUNT_MINOR

    def line(self) -> str:
        verdict = "PASS" if self.passed else "FAIL"
        return (
            f"ledger check ({self.workers} worker{'s' if self.workers > 1 else ''}): Redeemed"
            f" sum grew by {self.delta_minor} minor units; acknowledged pays"
            f" {self.acknowledged} x {PAY_AMOUNT_MINOR}, unacknowledged in flight at stop"
            f" <= {self.in_flight}: {verdict}"
        )


@dataclass(frozen=True)
class RunInfo:
    postgres: str
    floor_path: str
    load_before: str
    writer: str  # bench/writer.py's line
    unloaded: tuple[str, ...] = ()  # unloaded_line() of pay at one connection, per worker count
    # thread_writer_line() of pay with a writer thread in each worker, per worker count
    thread_writer: tuple[str, ...] = ()


@dataclass(frozen=True)
class Target:
    name: str
    measured: str
    met: bool


def floor_of(measurements: list[Measurement], workers: int) -> Measurement:
    return next(m for m in measurements if m.scenario == FLOOR.name and m.workers == workers)


def ratio(m: Measurement, measurements: list[Measurement]) -> float:
    floor = floor_of(measurements, m.workers).rps
    return m.rps / floor if floor else 0.0


def scenario_line(m: Measurement, floor_rps: float) -> str:
    extra = "".join(f"  {k} {v}" for k, v in sorted(m.extra.items()))
    line = (
        f"  {m.scenario:<26} {m.rps:9.0f} req/s  p50 {m.p50_ms:7.2f} ms  p99 {m.p99_ms:7.2f} ms"
        f"  errors {m.errors:>5}  vs floor {m.rps / floor_rps if floor_rps else 0:5.2f}{extra}"
    )
    if m.cpu is not None:
        line += f"\n    {m.cpu.line()}"
    return line + (f"\n    first error: {m.first_error}" if m.first_error else "")


def unloaded_line(m: Measurement) -> str:
    return (
        f"{m.scenario} at {UNLOADED_CONNECTIONS} connection, {m.workers} worker(s), nothing queued"
        f" ahead: p50 {m.p50_ms:.2f} ms, p99 {m.p99_ms:.2f} ms, {m.rps:.0f} req/s,"
        f" {m.errors} errors."
    )


def thread_writer_line(m: Measurement, check: LedgerCheck) -> str:
    cpu = "" if m.cpu is None else f", service CPU {m.cpu.service:.0f} us/req"
    return (
        f"{m.scenario} with a writer thread in each worker (GIFTLEDGER_WRITER=thread),"
        f" {m.workers} worker(s): {m.rps:.0f} req/s, p50 {m.p50_ms:.1f} ms, p99 {m.p99_ms:.1f} ms,"
        f" {m.errors} errors{cpu}; {check.line()}"
    )


def table(measurements: list[Measurement]) -> list[str]:
    rows = [
        "| scenario | workers | req/s | p50 ms | p99 ms | errors | vs floor"
        " | service CPU us/req | of it, writer | PostgreSQL CPU us/req | wrk CPU us/req |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for m in sorted(measurements, key=lambda m: m.workers):
        cpu = m.cpu
        cells = ["-"] * 4 if cpu is None else [f"{cpu.service:.0f}", f"{cpu.writer:.0f}",
                                               f"{cpu.postgres:.0f}", f"{cpu.wrk:.0f}"]  # fmt: skip
        rows.append(
            f"| {m.scenario} | {m.workers} | {m.rps:.0f} | {m.p50_ms:.2f} | {m.p99_ms:.2f}"
            f" | {m.errors} | {ratio(m, measurements):.2f} | {' | '.join(cells)} |"
        )
    return rows


def targets(
    measurements: list[Measurement], checks: list[LedgerCheck], rebuilt: RebuildResult,
    exported: ExportResult,
) -> list[Target]:  # fmt: skip
    pays = [m for m in measurements if m.scenario == PAY.name]
    found: list[Target] = []
    for pay in pays:
        share = ratio(pay, measurements)
        found.append(Target(f"pay >= 50% of HTTP floor, {pay.workers}w",
                            f"{share:.0%}", share >= PAY_FLOOR_RATIO_MIN))  # fmt: skip
    for pay in pays:
        found.append(Target(f"pay p99 <= 25 ms at {WRK_CONNECTIONS} conns, {pay.workers}w",
                            f"{pay.p99_ms:.1f} ms", pay.p99_ms <= PAY_P99_MS_MAX))  # fmt: skip
    errors = sum(m.errors for m in measurements)
    passed = sum(c.passed for c in checks)
    return [
        *found,
        Target("zero errors (every scenario)", str(errors), errors == 0),
        Target(
            "zero lost or duplicated events",
            f"{passed}/{len(checks)} ledger checks pass",
            passed == len(checks),
        ),
        Target(
            "rebuild 1,000,000 events < 60 s",
            f"{rebuilt.rebuild_seconds:.1f} s",
            rebuilt.rebuild_seconds < REBUILD_SECONDS_MAX,
        ),
        Target(
            "rebuild peak memory < 500 MiB",
            f"{rebuilt.peak_rss_mib:.0f} MiB",
            rebuilt.peak_rss_mib < REBUILD_PEAK_MIB_MAX,
        ),
        Target(
            f"export {exported.rows:,} rows peak memory < {EXPORT_PEAK_MIB_MAX:.0f} MiB",
            f"{exported.peak_rss_mib:.0f} MiB",
            exported.met,
        ),
    ]


def budgets(measurements: list[Measurement]) -> list[Budget]:
    pays = [m for m in measurements if m.scenario == PAY.name]
    floors = {m.workers: m.rps for m in measurements if m.scenario == FLOOR.name}
    return pay_budgets(pays, floors, PAY_FLOOR_RATIO_MIN, PAY_P99_MS_MAX, cpu_count())


def target_rows(found: list[Target]) -> list[str]:
    rows = ["| target | measured | status |", "|---|---:|---|"]
    rows += [f"| {t.name} | {t.measured} | {'MET' if t.met else 'NOT MET'} |" for t in found]
    return rows


def cpu_count() -> int:
    """The CPUs this process may run on, as nproc counts them."""
    return len(os.sched_getaffinity(0))


def machine() -> str:
    meminfo = Path("/proc/meminfo").read_text().split()
    mem_gib = int(meminfo[meminfo.index("MemTotal:") + 1]) / KIB_PER_GIB
    return (
        f"{cpu_count()} CPUs (nproc), {mem_gib:.1f} GiB memory,"
        f" {platform.system()} {platform.release()}, Python {platform.python_version()}"
    )


def load_average() -> str:
    """The 1-minute load before the run: anything else busy on the machine skews the figures."""
    return f"{os.getloadavg()[0]:.2f}"


def write_results(lines: list[str]) -> None:
    RESULTS_FILE.write_text("\n".join(lines) + "\n")


def results_document(
    measurements: list[Measurement], checks: list[LedgerCheck], rebuilt: RebuildResult,
    exported: ExportResult, info: RunInfo,
) -> list[str]:  # fmt: skip
    return [
        "# Benchmark results (`make bench`)",
        "",
        f"Run {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {machine()}; {info.postgres};"
        f" 1-minute load average before the run {info.load_before}.",
        f"Load: `wrk -t{WRK_THREADS} -c{WRK_CONNECTIONS} -d{WRK_DURATION_SECONDS}s --latency`"
        " with the Lua scripts in `bench/lua`, against `giftledger serve` on 127.0.0.1, seeded"
        " with 10,000 cards. wrk, the service and PostgreSQL share the machine's CPUs.",
        f"HTTP floor: `GET {info.floor_path}` on the same app. Every request counts as one"
        " operation (reserve and cancelreserve count one each). Latencies are wrk's.",
        "CPU per request is read from /proc over each run: all the service's processes and"
        " threads (the ledger writer process's threads also on their own), and all PostgreSQL"
        " processes; wrk's from its rusage. A worker's event loop runs on one core, so"
        " 1,000,000 / (service CPU per request less the writer's) bounds a worker's req/s.",
        "",
        *table(measurements),
        "",
        *target_rows(targets(measurements, checks, rebuilt, exported)),
        "",
        "CPU budgets of the pay targets (bench/budget.py): the CPU a payment may cost at the"
        " rate a target needs, on this machine's CPUs and in one worker's event loop, against"
        " what it cost in the run.",
        "",
        *[f"- {b.line()}" for b in budgets(measurements)],
        "",
        *[f"- {c.line()}" for c in checks],
        f"- Rebuild: {rebuilt.events:,} events generated in {rebuilt.generate_seconds:.1f} s;"
        f" `giftledger projections rebuild` took {rebuilt.rebuild_seconds:.1f} s with peak RSS"
        f" {rebuilt.peak_rss_mib:.0f} MiB ({rebuilt.output}).",
        f"- {exported.line()}",
        *[f"- {line}" for line in info.unloaded],
        *[f"- {line}" for line in info.thread_writer],
        f"- {info.writer}",
    ]
