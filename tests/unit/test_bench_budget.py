"""`make bench`'s CPU budgets of the pay targets (bench/budget.py): the arithmetic the issue note
quotes when it says a target is out of reach at the measured cost."""

from __future__ import annotations

import pytest

from bench.budget import pay_budgets
from bench.cpu import CpuPerRequest
from bench.load import PAY, Measurement

FLOOR_RPS = 6000.0
CPUS = 2


def pay_run(workers: int, rps: float, cpu: CpuPerRequest | None) -> Measurement:
    return Measurement(
        scenario=PAY.name, workers=workers, requests=int(rps * 10), seconds=10.0, p50_ms=1.0,
        p99_ms=2.0, ok=int(rps * 10), http_errors=0, socket_errors=0, sent=int(rps * 10),
        first_error="", extra={}, cpu=cpu,
    )  # fmt: skip


def test_the_share_target_budgets_the_machine_and_one_event_loop() -> None:
    # Half of a 6,000 req/s floor is 3,000 payments a second: 2 CPUs give 667 us each, and one
    # worker's event loop 333 us.
    cpu = CpuPerRequest(service=800.0, writer=300.0, postgres=150.0, wrk=50.0)
    share, _ = pay_budgets([pay_run(1, 1200.0, cpu)], {1: FLOOR_RPS}, 0.5, 25.0, CPUS)
    assert share.rate == pytest.approx(3000.0)
    assert share.machine_us == pytest.approx(2_000_000 / 3000)
    assert share.spent_us == pytest.approx(1000.0)
    assert share.loop_us == pytest.approx(1_000_000 / 3000)
    assert share.loop_spent_us == pytest.approx(500.0)
    # The event loop is the tighter bound: 500 / 333 = 1.5 times too costly.
    assert share.over == pytest.approx(1.5)
    assert "1.50x less CPU" in share.line()


def test_the_latency_target_needs_littles_law_rate_and_workers_share_it() -> None:
    cpu = CpuPerRequest(service=400.0, writer=100.0, postgres=100.0, wrk=40.0)
    _, latency = pay_budgets([pay_run(2, 2000.0, cpu)], {2: FLOOR_RPS}, 0.5, 25.0, CPUS)
    # 64 connections at 25 ms: 2,560 a second; two event loops share them.
    assert latency.rate == pytest.approx(2560.0)
    assert latency.loop_us == pytest.approx(2 * 1_000_000 / 2560)
    assert latency.machine_us == pytest.approx(2 * 1_000_000 / 2560)
    # 540 of 781 us of the machine, 300 of 781 of the event loops: within both.
    assert latency.over < 1
    assert "within both CPU budgets" in latency.line()


def test_a_run_without_cpu_figures_has_no_budget() -> None:
    assert pay_budgets([pay_run(1, 1000.0, None)], {1: FLOOR_RPS}, 0.5, 25.0, CPUS) == []
