"""Retry-storm simulation: 1000 jobs against a downstream that fails for 60 s, then recovers.

A discrete-event simulation on a simulated clock that drives the real policy
classes of walq.core.retry the way a worker does (TaskPolicy.admit before each
attempt, on_success / on_failure after it). 16 worker slots; every call takes
50 ms; every call started before t = 60 s fails, every later one succeeds. All
1000 jobs are ready at t = 0. Policies compared:

  naive     immediate retries up to max_attempts, as a hand-written pool does
  backoff   exponential backoff with full jitter, nothing else
  budget    backoff + the queue's retry budget (printed with --all)
  full      backoff + retry budget + circuit breaker: walq's defaults, plus a
            per-task rate limit of 100 calls/s -- the configured limit

A job is lost when it is dead-lettered: it never ran to success. A job waiting
on a gate is not charged an attempt; one refused by a task-wide gate (breaker,
rate) holds the task's queue until the gate's time, or until a result closes
the breaker, as a worker does.

    python benchmarks/storm.py [--all] [--seed N]

Tests call simulate() and rows().
"""

from __future__ import annotations

import argparse
import heapq
import itertools
import math
import random
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import attrs

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout

from walq.core.retry import RateLimit, RetryBudget, TaskPolicy


@attrs.frozen(kw_only=True)
class Scenario:
    """The simulated world; times in seconds."""

    jobs: int = 1000
    slots: int = 16
    latency: float = 0.05
    outage: float = 60.0
    rate: float = 100.0  # the full policy's per-task limit, calls per second
    burst: float = 5.0
    seed: int = 1


@attrs.frozen(kw_only=True)
class Row:
    """What one policy did in the scenario."""

    policy: str
    label: str
    attempts: int
    attempts_while_down: int
    peak_per_second: int  # most attempts started in one second of the simulated clock
    drain: float | None  # seconds from recovery until the last job finished; None: none left
    lost: int
    done: int


@attrs.frozen
class _Setup:
    label: str
    policy: TaskPolicy
    budget: RetryBudget | None
    immediate: bool = False


class DownstreamError(Exception):
    """What the failing downstream raises."""


SETUPS: dict[str, Callable[[Scenario], _Setup]] = {
    "naive": lambda s: _Setup("naive immediate retries", TaskPolicy(breaker=None), None, True),
    "backoff": lambda s: _Setup("backoff alone", TaskPolicy(breaker=None), None),
    "budget": lambda s: _Setup("backoff + budget", TaskPolicy(breaker=None), RetryBudget()),
    "full": lambda s: _Setup(
        "backoff + budget + breaker",
        TaskPolicy(rate=RateLimit(per_second=s.rate, burst=s.burst)),
        RetryBudget(),
    ),
}
PRINTED = ("naive", "backoff", "full")


def simulate(name: str, scenario: Scenario | None = None) -> Row:
    """Run one policy through the scenario and measure it."""
    s = scenario or Scenario()
    setup = SETUPS[name](s)
    policy, budget = setup.policy, setup.budget
    rng = random.Random(s.seed)
    tie = itertools.count()
    ready = [(0.0, next(tie), job) for job in range(s.jobs)]  # (not before, tie, job)
    running: list[tuple[float, int, int, bool]] = []  # (finishes, tie, job, fails)
    charged = [0] * s.jobs
    starts: list[float] = []
    lost = done = 0
    last_final = paused_until = now = 0.0
    while ready or running:
        while running and running[0][0] <= now:
            _, _, job, fails = heapq.heappop(running)
            paused_until = min(paused_until, now)  # a result may have closed the breaker
            if not fails:
                policy.on_success(now, attempt=charged[job], budget=budget)
                done, last_final = done + 1, now
                continue
            decision = policy.on_failure(DownstreamError(), now, attempt=charged[job], rng=rng)
            if decision.retry:
                delay = 0.0 if setup.immediate else decision.delay
                heapq.heappush(ready, (now + delay, next(tie), job))
            else:
                lost, last_final = lost + 1, now
        while len(running) < s.slots and ready and ready[0][0] <= now and paused_until <= now:
            entry = heapq.heappop(ready)
            job = entry[2]
            adm = policy.admit(
                now, attempt=charged[job] + 1, running=len(running), budget=budget, rng=rng
            )
            if adm.ok:
                charged[job] += 1
                starts.append(now)
                heapq.heappush(running, (now + s.latency, next(tie), job, now < s.outage))
            elif adm.pauses_task:
                heapq.heappush(ready, entry)
                paused_until = adm.not_before
            else:
                heapq.heappush(ready, (adm.not_before, next(tie), job))
        wake = [running[0][0]] if running else []
        if ready and len(running) < s.slots:
            wake.append(max(ready[0][0], paused_until))
        if wake and min(wake) <= now:
            raise RuntimeError(f"simulation stalled at t={now}")
        now = min(wake, default=now)
    return Row(
        policy=name,
        label=setup.label,
        attempts=len(starts),
        attempts_while_down=sum(1 for t in starts if t < s.outage),
        peak_per_second=max(Counter(math.floor(round(t, 9)) for t in starts).values()),
        drain=last_final - s.outage if last_final > s.outage else None,
        lost=lost,
        done=done,
    )


def rows(scenario: Scenario | None = None, names: tuple[str, ...] = PRINTED) -> list[Row]:
    """The table's rows, one per policy."""
    return [simulate(name, scenario) for name in names]


def table(result: list[Row]) -> str:
    """The rows as a Markdown table."""
    lines = [
        "| policy | attempts | while down | peak attempts/s | drain after recovery | lost |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in result:
        drain = "-" if r.drain is None else f"{r.drain:.1f} s"
        lines.append(
            f"| {r.label} | {r.attempts} | {r.attempts_while_down} | {r.peak_per_second} "
            f"| {drain} | {r.lost} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--all", action="store_true", help="also show backoff + budget")
    parser.add_argument("--seed", type=int, default=Scenario().seed)
    args = parser.parse_args()
    s = Scenario(seed=args.seed)
    names = tuple(SETUPS) if args.all else PRINTED
    print(
        f"{s.jobs} jobs, {s.slots} slots, {s.latency * 1000:.0f} ms calls, downstream failing "
        f"for the first {s.outage:.0f} s; full policy's limit {s.rate:.0f} calls/s "
        f"(burst {s.burst:.0f}); seed {s.seed}\n"
    )
    print(table(rows(s, names)))


if __name__ == "__main__":
    main()
