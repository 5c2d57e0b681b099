"""`make bench`: the real service under wrk at 1 and 2 workers, ledger checks, a rebuild and an
export of 1,000,000 events.

Not part of `make test`. Uses GIFTLEDGER_BENCH_DATABASE_URL, else this machine's PostgreSQL at
127.0.0.1:5432, else an embedded one; a fresh database is created for the run and dropped.
"""

from __future__ import annotations

import asyncio
import dataclasses
import shutil
import sys
import time
from dataclasses import dataclass

from api.bootstrap import prepare_database
from bench import report
from bench.cpu import CpuSeconds, cpu_now, per_request
from bench.database import (
    Server,
    choose_server,
    fresh_database,
    server_version,
    settled_redeemed_minor,
    stop_server,
)
from bench.export import ExportResult, measure_export
from bench.load import FLOOR, PAY, SCENARIOS, UNLOADED_CONNECTIONS, Measurement, run_wrk
from bench.rebuild import REBUILD_EVENTS, RebuildResult, measure_rebuild
from bench.seed import Seeded, bench_settings, seed
from bench.server import Running, serving, status_of
from bench.writer import WriterResult, measure_writer

WORKER_COUNTS = (1, 2)
WARMUP_SECONDS = 3
PING_PATH = "/ping"
HEALTH_PATH = "/health"


def say(text: str = "") -> None:
    print(text, flush=True)


def floor_path(base_url: str) -> str:
    """A static /ping when the app has one, else /health (one SELECT 1)."""
    return PING_PATH if status_of(f"{base_url}{PING_PATH}") == 200 else HEALTH_PATH


def measure_pay(
    url: str, running: Running, seeded: Seeded
) -> tuple[Measurement, report.LedgerCheck]:
    before = settled_redeemed_minor(url)
    measured = run_wrk(PAY, running.base_url, seeded.pos, running.workers)
    delta = settled_redeemed_minor(url) - before
    check = report.LedgerCheck(running.workers, measured.ok, measured.in_flight, delta)
    return measured, check


def costed(running: Running, measured: Measurement, before: CpuSeconds) -> Measurement:
    """The measurement with the CPU the service, PostgreSQL and wrk spent since `before`."""
    used = cpu_now(running.pid) - before
    return dataclasses.replace(
        measured, cpu=per_request(used, measured.requests, measured.wrk_cpu_seconds)
    )


def run_workers(
    url: str, seeded: Seeded, workers: int
) -> tuple[list[Measurement], report.LedgerCheck, str, str]:
    measurements: list[Measurement] = []
    with serving(url, workers) as running:
        path = floor_path(running.base_url)
        say(f"\n{workers} worker(s) at {running.base_url}; HTTP floor is GET {path}")
        run_wrk(FLOOR, running.base_url, seeded.pos, workers, path, WARMUP_SECONDS)
        run_wrk(PAY, running.base_url, seeded.pos, workers, seconds=WARMUP_SECONDS)
        check = None
        for scenario in SCENARIOS:
            before = cpu_now(running.pid)
            if scenario is PAY:
                measured, check = measure_pay(url, running, seeded)
            else:
                client = seeded.reserver if scenario.uses_reserver else seeded.pos
                measured = run_wrk(scenario, running.base_url, client, workers, path)
            measured = costed(running, measured, before)
            measurements.append(measured)
            say(report.scenario_line(measured, report.floor_of(measurements, workers).rps))
            if check is not None and scenario is PAY:
                say(f"  {check.line()}")
        # After the pay run and its ledger check, which these payments do not enter.
        lone = run_wrk(PAY, running.base_url, seeded.pos, workers, connections=UNLOADED_CONNECTIONS)
        unloaded = report.unloaded_line(lone)
        say(f"  {unloaded}")
    assert check is not None
    return measurements, check, path, unloaded


def thread_writer_run(url: str, seeded: Seeded, workers: int) -> tuple[str, report.LedgerCheck]:
    """Pay once more with the writer as a thread of each worker, for comparison."""
    with serving(url, workers, writer="thread") as running:
        run_wrk(PAY, running.base_url, seeded.pos, workers, seconds=WARMUP_SECONDS)
        before = cpu_now(running.pid)
        measured, check = measure_pay(url, running, seeded)
        line = report.thread_writer_line(costed(running, measured, before), check)
    say(f"  {line}")
    return line, check


@dataclass(frozen=True)
class HttpRuns:
    measurements: list[Measurement]
    checks: list[report.LedgerCheck]  # one per worker count, of the pay runs
    floor_paths: str
    writer: WriterResult
    unloaded: tuple[str, ...]  # report.unloaded_line, per worker count
    thread_writer: tuple[str, ...]  # report.thread_writer_line, per worker count
    thread_checks: list[report.LedgerCheck]


def http_runs(url: str) -> HttpRuns:
    seeded = seed(url)
    say(f"seeded {seeded.cards:,} cards in {seeded.seconds:.1f} s")
    measurements: list[Measurement] = []
    checks: list[report.LedgerCheck] = []
    paths: list[str] = []
    unloaded: list[str] = []
    for workers in WORKER_COUNTS:
        found, check, path, lone = run_workers(url, seeded, workers)
        measurements += found
        checks.append(check)
        paths.append(path)
        unloaded.append(lone)
    say("\nfor comparison, pay with the writer as a thread of each worker:")
    threaded = [thread_writer_run(url, seeded, workers) for workers in WORKER_COUNTS]
    # After the pay runs and their ledger checks: these payments are the bench's own.
    writer = measure_writer(url)
    say(f"\n{writer.line()}")
    return HttpRuns(
        measurements, checks, " and ".join(sorted(set(paths))), writer, tuple(unloaded),
        tuple(line for line, _ in threaded), [check for _, check in threaded],
    )  # fmt: skip


def rebuild_run(server: Server) -> tuple[RebuildResult, ExportResult]:
    """Generate 1,000,000 events, time their rebuild, then export them all (same database)."""
    with fresh_database(server.url, "_rebuild") as url:
        asyncio.run(prepare_database(url, bench_settings(url)))
        say(f"\ngenerating {REBUILD_EVENTS:,} events for the rebuild (fresh database) ...")
        rebuilt = measure_rebuild(url)
        say(f"  generated in {rebuilt.generate_seconds:.1f} s; {rebuilt.output}")
        say(f"  rebuild: {rebuilt.rebuild_seconds:.1f} s, peak RSS {rebuilt.peak_rss_mib:.0f} MiB")
        exported = measure_export(url)
    say(f"  {exported.line()}")
    return rebuilt, exported


def summarize(
    measurements: list[Measurement], checks: list[report.LedgerCheck], rebuilt: RebuildResult,
    exported: ExportResult, info: report.RunInfo,
) -> None:  # fmt: skip
    lines = report.results_document(measurements, checks, rebuilt, exported, info)
    report.write_results(lines)
    say("\n" + "\n".join(lines[2:]))
    say(f"\n(written to {report.RESULTS_FILE})")


def main() -> int:
    if shutil.which("wrk") is None:
        say("wrk is not installed (make bench installs it with apt-get)")
        return 2
    started = time.monotonic()
    load_before = report.load_average()
    server = choose_server()
    try:
        postgres = f"PostgreSQL {asyncio.run(server_version(server.url))} ({server.label})"
        say(f"giftledger bench on {report.machine()}\n{postgres}")
        say(f"1-minute load average before the run: {load_before} (should be near 0)")
        with fresh_database(server.url) as url:
            runs = http_runs(url)
        rebuilt, exported = rebuild_run(server)
    finally:
        stop_server(server)
    info = report.RunInfo(postgres, runs.floor_paths, load_before, runs.writer.line(),
                          runs.unloaded, runs.thread_writer)  # fmt: skip
    summarize(runs.measurements, runs.checks, rebuilt, exported, info)
    say(f"bench took {time.monotonic() - started:.0f} s")
    # Performance targets are reported; only a ledger check failing (lost or duplicated
    # events) makes the run fail.
    return 0 if all(c.passed for c in runs.checks + runs.thread_checks) else 1


if __name__ == "__main__":
    sys.exit(main())
