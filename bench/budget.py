"""Could the pay targets be met at the CPU a payment costs? Two lower bounds, from the measured
CPU per request (bench/cpu.py):

- The machine: wrk, the service and PostgreSQL share its CPUs, so answering R payments a second
  needs R x (service + PostgreSQL + wrk CPU per payment) <= CPUs x 1 s.
- One worker: its event loop alone must fit R / workers payments in one CPU second (the writer
  works in a process of its own; as a thread of the worker it would share the loop's GIL, and
  the bound would be tighter still).

When the CPU a payment costs is over either budget, no scheduling, batching or tuning of the
same code can reach the rate: the cost itself must shrink, by the printed factor, or the machine
must grow. Under a budget, the target may still be missed for other reasons (waits, queueing).
"""

from __future__ import annotations

from dataclasses import dataclass

from bench.cpu import MICROSECONDS
from bench.load import WRK_CONNECTIONS, Measurement

MILLISECONDS_PER_SECOND = 1000


@dataclass(frozen=True)
class Budget:
    """The CPU one payment may cost for `rate` payments a second, against what it cost."""

    target: str
    workers: int
    rate: float  # payments a second the target needs
    machine_us: float  # all CPU per payment the machine can give at that rate
    spent_us: float  # service + PostgreSQL + wrk, measured
    loop_us: float  # one worker's event loop CPU per payment it can afford at that rate
    loop_spent_us: float  # the service's CPU outside its writers, measured

    @property
    def over(self) -> float:
        """How many times too costly a payment is for the rate (<= 1: within both budgets)."""
        return max(self.spent_us / self.machine_us, self.loop_spent_us / self.loop_us)

    def line(self) -> str:
        verdict = (
            f"out of reach at this cost: a payment must cost {self.over:.2f}x less CPU"
            if self.over > 1
            else "within both CPU budgets"
        )
        return (
            f"{self.target}, {self.workers}w: {self.rate:.0f} payments/s allow"
            f" {self.machine_us:.0f} us of the machine's CPU per payment (spent"
            f" {self.spent_us:.0f}) and {self.loop_us:.0f} us of a worker's event loop (spent"
            f" {self.loop_spent_us:.0f}, writer excluded): {verdict}"
        )


def budget(target: str, pay: Measurement, rate: float, cpus: int) -> Budget | None:
    if pay.cpu is None or rate <= 0:
        return None
    return Budget(
        target=target,
        workers=pay.workers,
        rate=rate,
        machine_us=cpus * MICROSECONDS / rate,
        spent_us=pay.cpu.total,
        loop_us=pay.workers * MICROSECONDS / rate,
        loop_spent_us=pay.cpu.event_loops,
    )


def pay_budgets(
    pays: list[Measurement], floors: dict[int, float], ratio_min: float, p99_ms_max: float,
    cpus: int,
) -> list[Budget]:  # fmt: skip
    """The budgets of the two pay targets, for each pay run: `floors` maps workers to floor
    req/s.

    By Little's law, 64 connections kept busy at a mean latency of 25 ms get 64 / 0.025 = 2,560
    answers a second; a p99 of 25 ms needs a mean below that, so at least that rate.
    """
    little_rate = WRK_CONNECTIONS * MILLISECONDS_PER_SECOND / p99_ms_max
    found: list[Budget] = []
    for pay in pays:
        share_rate = ratio_min * floors[pay.workers]
        share = budget(f"pay >= {ratio_min:.0%} of floor", pay, share_rate, cpus)
        latency = budget(f"pay p99 <= {p99_ms_max:g} ms", pay, little_rate, cpus)
        found += [b for b in (share, latency) if b is not None]
    return found
