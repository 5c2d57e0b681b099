"""Export 1,000,000 events with `giftledger export`: its time and peak memory against 200 MiB.

`make bench` runs it on the rebuild's database, after the rebuild. Alone:

    python -m bench.export [--format csv|jsonl|parquet] [--kind events|postings]

seeds a fresh database the way the rebuild does (1,000,000 events, then the card projection and
the chained ledger log), exports every event, and prints the figures. It uses the same server
as `make bench` (GIFTLEDGER_BENCH_DATABASE_URL, else 127.0.0.1:5432, else an embedded one).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from api.bootstrap import prepare_database
from api.service import open_ledger
from bench.database import choose_server, fresh_database, stop_server
from bench.rebuild import REBUILD_EVENTS, generate_events
from bench.seed import bench_settings
from bench.server import venv_command
from projections.rebuild import rebuild_card_projection

EXPORT_PEAK_MIB_MAX = 200.0
EXPORT_TIMEOUT_SECONDS = 1_200
# Every generated event falls in this period.
PERIOD = ("2000-01-01T00:00:00Z", "2100-01-01T00:00:00Z")
KIB = 1024
MIB = 1024 * 1024


@dataclass(frozen=True)
class ExportResult:
    format: str
    kind: str
    rows: int
    seconds: float
    peak_rss_mib: float
    file_mib: float

    @property
    def met(self) -> bool:
        return self.peak_rss_mib < EXPORT_PEAK_MIB_MAX

    def line(self) -> str:
        return (
            f"Export: `giftledger export --format {self.format} --kind {self.kind}` of"
            f" {self.rows:,} rows took {self.seconds:.1f} s with peak RSS"
            f" {self.peak_rss_mib:.0f} MiB (target < {EXPORT_PEAK_MIB_MAX:.0f} MiB:"
            f" {'MET' if self.met else 'NOT MET'}); the file was {self.file_mib:.0f} MiB."
        )


def chain_the_log(url: str) -> int:
    """Give generated events their ledger log rows, as a service start would; returns how many."""
    ledger = open_ledger(url)
    try:
        return ledger.adopt_unchained_log()
    finally:
        ledger.close()


def run_export(url: str, export_format: str, kind: str) -> ExportResult:
    """Run `giftledger export` as a child process and read its own peak RSS from wait4."""
    env = {**os.environ, "GIFTLEDGER_DATABASE_URL": url}
    with tempfile.TemporaryDirectory(prefix="giftledger-bench-export-") as folder:
        output = Path(folder) / f"ledger.{export_format}"
        command = [venv_command("giftledger"), "export", "--from", PERIOD[0], "--to", PERIOD[1],
                   "--format", export_format, "--kind", kind, "--output", str(output)]  # fmt: skip
        log = Path(folder) / "export.log"
        started = time.perf_counter()
        with log.open("wb") as sink:
            proc = subprocess.Popen(command, env=env, stdout=sink, stderr=sink)  # noqa: S603
            # wait4 gives this child's own rusage: RUSAGE_CHILDREN would also count the
            # generator processes that ran before it.
            _, status, usage = os.wait4(proc.pid, 0)
            proc.returncode = os.waitstatus_to_exitcode(status)
        seconds = time.perf_counter() - started
        if proc.returncode != 0:
            raise RuntimeError(f"export failed ({proc.returncode}):\n{log.read_text()[-3000:]}")
        manifest = json.loads(Path(f"{output}.manifest.json").read_text())
        file_mib = output.stat().st_size / MIB
    # ru_maxrss is in KiB on Linux.
    return ExportResult(export_format, kind, manifest["rows"], seconds, usage.ru_maxrss / KIB,
                        file_mib)  # fmt: skip


def measure_export(url: str, export_format: str = "csv", kind: str = "events") -> ExportResult:
    """On a database whose events and card projection are in place: chain the log, export."""
    chain_the_log(url)
    return run_export(url, export_format, kind)


def say(text: str) -> None:
    print(text, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.export", description=__doc__)
    parser.add_argument("--format", default="csv", choices=("csv", "jsonl", "parquet"))
    parser.add_argument("--kind", default="events", choices=("events", "postings"))
    args = parser.parse_args(argv)
    server = choose_server()
    try:
        with fresh_database(server.url, "_export") as url:
            asyncio.run(prepare_database(url, bench_settings(url)))
            say(f"generating {REBUILD_EVENTS:,} events ({server.label}) ...")
            say(f"  generated in {generate_events(url):.1f} s")
            ledger = open_ledger(url)
            try:
                events, cards = rebuild_card_projection(ledger)
            finally:
                ledger.close()
            say(f"  card projection: {cards:,} cards from {events:,} events")
            started = time.perf_counter()
            say(f"  ledger log: {chain_the_log(url):,} events chained in"
                f" {time.perf_counter() - started:.1f} s")  # fmt: skip
            result = run_export(url, args.format, args.kind)
    finally:
        stop_server(server)
    say(result.line())
    return 0 if result.met else 1


if __name__ == "__main__":
    sys.exit(main())
