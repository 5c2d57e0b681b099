"""wrk runs: one Lua script per scenario, its RESULT line parsed into a Measurement."""

from __future__ import annotations

import dataclasses
import json
import resource
import subprocess
from dataclasses import dataclass
from pathlib import Path

from bench.cpu import CpuPerRequest
from bench.seed import CARD_COUNT, CARD_NUMBER_LENGTH, CARD_PREFIX, BenchClient

LUA_DIR = Path(__file__).parent / "lua"
WRK_THREADS = 2
WRK_CONNECTIONS = 64
# A lone terminal: pay's latency with nothing queued ahead of it.
UNLOADED_CONNECTIONS = 1
WRK_DURATION_SECONDS = 10
WRK_TIMEOUT_SECONDS = 5
# wrk itself stops after its duration; this bounds a hung wrk.
WRK_WALL_LIMIT_SECONDS = 60
RESULT_PREFIX = "RESULT "
MICROSECONDS = 1_000_000
# wrk calls request() once before the run to check the script; that request is never sent.
WRK_VERIFY_CALLS = 1


@dataclass(frozen=True)
class Scenario:
    name: str
    script: str
    uses_reserver: bool = False


FLOOR = Scenario("HTTP floor", "floor.lua")
PAY = Scenario("Resico pay (use-card)", "pay.lua")
RESERVE = Scenario("reserve + cancelreserve", "reserve.lua", uses_reserver=True)
GET_CARD = Scenario("Resico get card", "get.lua")
CREATE = Scenario("GiftStream create", "create.lua")
SCENARIOS = (FLOOR, PAY, RESERVE, GET_CARD, CREATE)


@dataclass(frozen=True)
class Measurement:
    scenario: str
    workers: int
    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    ok: int
    http_errors: int
    socket_errors: int
    sent: int
    first_error: str
    extra: dict[str, int]
    # CPU seconds wrk itself used (user + system), from the rusage of waited-for children.
    wrk_cpu_seconds: float = 0.0
    # Filled in by the caller, which knows the service's processes (bench/cpu.py).
    cpu: CpuPerRequest | None = None

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def errors(self) -> int:
        return self.http_errors + self.socket_errors

    @property
    def in_flight(self) -> int:
        """Requests sent but never answered when wrk stopped (or lost to socket errors)."""
        return max(0, self.sent - WRK_VERIFY_CALLS - self.ok - self.http_errors)


def wrk_command(
    scenario: Scenario, base_url: str, client: BenchClient, extra: str, seconds: int,
    connections: int = WRK_CONNECTIONS,
) -> list[str]:  # fmt: skip
    return [
        "wrk", f"-t{min(WRK_THREADS, connections)}", f"-c{connections}", f"-d{seconds}s",
        f"--timeout={WRK_TIMEOUT_SECONDS}s", "--latency", "-s", scenario.script, base_url, "--",
        client.token, client.consumer_key, str(CARD_COUNT), CARD_PREFIX,
        str(CARD_NUMBER_LENGTH), extra,
    ]  # fmt: skip


def parse_result(scenario: str, workers: int, output: str) -> Measurement:
    lines = [line for line in output.splitlines() if line.startswith(RESULT_PREFIX)]
    if not lines:
        raise RuntimeError(f"wrk printed no RESULT line for {scenario}:\n{output}")
    data = json.loads(lines[-1][len(RESULT_PREFIX) :])
    known = {"requests", "duration_us", "p50_us", "p99_us", "ok", "http_errors",
             "socket_errors", "sent", "first_error"}  # fmt: skip
    return Measurement(
        scenario=scenario,
        workers=workers,
        requests=int(data["requests"]),
        seconds=data["duration_us"] / MICROSECONDS,
        p50_ms=data["p50_us"] / 1000,
        p99_ms=data["p99_us"] / 1000,
        ok=int(data["ok"]),
        http_errors=int(data["http_errors"]),
        socket_errors=int(data["socket_errors"]),
        sent=int(data["sent"]),
        first_error=str(data["first_error"]),
        extra={k: int(v) for k, v in data.items() if k not in known},
    )


def run_wrk(
    scenario: Scenario, base_url: str, client: BenchClient, workers: int,
    extra: str = "", seconds: int = WRK_DURATION_SECONDS, connections: int = WRK_CONNECTIONS,
) -> Measurement:  # fmt: skip
    """Run wrk against 127.0.0.1 only; the scripts live in bench/lua (required from there)."""
    assert base_url.startswith("http://127.0.0.1:"), base_url
    before = _children_cpu_seconds()
    done = subprocess.run(  # noqa: S603 - fixed program and arguments.
        wrk_command(scenario, base_url, client, extra, seconds, connections),
        cwd=LUA_DIR, capture_output=True, text=True, timeout=WRK_WALL_LIMIT_SECONDS, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr}{done.stdout}")
    used = _children_cpu_seconds() - before
    measured = parse_result(scenario.name, workers, done.stdout)
    return dataclasses.replace(measured, wrk_cpu_seconds=used)


def _children_cpu_seconds() -> float:
    """CPU used so far by this process's finished and waited-for children: wrk, here."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime
