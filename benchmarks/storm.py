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

On Redis, the same simulation runs live (real time, a shorter outage) in
several owner processes at once, each as one host, with the full policy's
gates on each host (per host) or shared on the server (shared): the peak of
attempts/s over all hosts is the configured limit, not N times it.

    python benchmarks/storm.py --redis redis://127.0.0.1:6379/0 [--owners 3]

Tests call simulate(), rows() and live().
"""

from __future__ import annotations

import argparse
import heapq
import itertools
import json
import math
import random
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout

from walq.core.retry import Backoff, CircuitBreaker, RateLimit, RetryBudget, TaskPolicy


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


def simulate(
    name: str,
    scenario: Scenario | None = None,
    *,
    setup: _Setup | None = None,
    clock: Callable[[], float] | None = None,
    record: list[float] | None = None,
) -> Row:
    """Run one policy through the scenario and measure it.

    With a `clock` (seconds since the scenario's start, shared by every owner)
    the run is live: it sleeps until its next event instead of jumping there,
    so that other hosts' runs go on meanwhile. `record` gets every attempt's start time.
    """
    s = scenario or Scenario()
    setup = setup or SETUPS[name](s)
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
        if clock is not None:
            now = clock()
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
        if clock is not None:  # live: the other hosts move the shared gates meanwhile
            time.sleep(min(max(0.0, min(wake, default=now) - clock()), 0.02))
            continue
        if wake and min(wake) <= now:
            raise RuntimeError(f"simulation stalled at t={now}")
        now = min(wake, default=now)
    if record is not None:
        record.extend(starts)
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


# -- live, on Redis, one process per host ---------------------------------------------

LIVE = Scenario(jobs=200, slots=16, latency=0.05, outage=4.0, rate=50.0, burst=5.0)


def live_setup(s: Scenario, url: str | None) -> _Setup:
    """The full policy, scaled to a live run (a 2 s breaker, backoff of 0.2 s to 3 s);
    its gates shared on the queue at `url`, or each host's own if None."""
    policy = TaskPolicy(
        retry=Backoff(base=0.2, cap=3.0),
        rate=RateLimit(per_second=s.rate, burst=s.burst),
        breaker=CircuitBreaker(failures=5, cooldown=2.0),
    )
    budget = RetryBudget(window=2.0)
    if url is None:
        return _Setup("per host", policy, budget)
    from walq.redisq.queue import RedisQueue

    gates = RedisQueue.open(url).shared_gates()
    return _Setup("shared", gates.share("call", policy, 60.0), gates.budget(budget))


def owner(url: str | None, t0: float, scenario: Scenario, seed: int) -> dict[str, Any]:
    """One host's live run (from wall time t0): its attempts' start times, lost and done."""
    s = attrs.evolve(scenario, seed=seed)
    starts: list[float] = []
    row = simulate(
        "full", s, setup=live_setup(s, url), clock=lambda: time.time() - t0, record=starts
    )
    return {"starts": starts, "lost": row.lost, "done": row.done}


def live(url: str, owners: int = 3, scenario: Scenario = LIVE, shared: bool = True) -> Row:
    """`owners` processes run the live storm at once, gates shared on the queue at `url`
    (a fresh prefix) or each host's own; the row counts every host's attempts."""
    sep = "&" if "?" in url else "?"
    queue = f"{url}{sep}prefix=walq-storm-{uuid.uuid4().hex[:8]}" if shared else ""
    t0 = time.time() + 3.0  # every owner has imported and connected by then
    with tempfile.TemporaryDirectory() as tmp:
        outs = [Path(tmp) / f"owner{i}.json" for i in range(owners)]
        procs = [
            subprocess.Popen(
                [
                    sys.executable,
                    __file__,
                    "--owner",
                    queue,
                    "--t0",
                    repr(t0),
                    "--out",
                    str(out),
                    "--jobs",
                    str(scenario.jobs),
                    "--seed",
                    str(scenario.seed + i),
                ],
            )
            for i, out in enumerate(outs)
        ]
        for p in procs:
            if p.wait(timeout=600) != 0:
                raise RuntimeError(f"owner process {p.pid} failed ({p.returncode})")
        reports = [json.loads(out.read_text()) for out in outs]
    starts = [t for r in reports for t in r["starts"]]
    if shared:
        _drop(queue)
    return Row(
        policy="live",
        label=f"{owners} hosts, gates {'shared' if shared else 'per host'}",
        attempts=len(starts),
        attempts_while_down=sum(1 for t in starts if t < scenario.outage),
        peak_per_second=max(Counter(math.floor(t) for t in starts).values()),
        drain=max(starts) - scenario.outage,
        lost=sum(r["lost"] for r in reports),
        done=sum(r["done"] for r in reports),
    )


def _drop(url: str) -> None:
    """Delete the keys of the queue at `url`."""
    from walq.redisq.connection import connect
    from walq.redisq.url import key_prefix, parse_url

    target = parse_url(url)
    client = connect(target, 10.0)
    names = list(client.scan_iter(match=f"{key_prefix(target.prefix)}:*", count=1000))
    if names:
        client.delete(*names)
    client.close()


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
    parser.add_argument("--redis", help="run live with several owner processes on this server")
    parser.add_argument("--owners", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=LIVE.jobs, help="per owner, live")
    parser.add_argument("--owner", help=argparse.SUPPRESS)  # one live owner ('' gates per host)
    parser.add_argument("--t0", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.owner is not None:
        scenario = attrs.evolve(LIVE, jobs=args.jobs)
        report = owner(args.owner or None, args.t0, scenario, args.seed)
        Path(args.out).write_text(json.dumps(report))
        return
    if args.redis:
        live_s = attrs.evolve(LIVE, jobs=args.jobs)
        print(
            f"live: {args.owners} owner processes x {live_s.jobs} jobs, {live_s.slots} slots each, "
            f"{live_s.latency * 1000:.0f} ms calls, downstream failing for the first "
            f"{live_s.outage:.0f} s; the task's limit {live_s.rate:.0f} calls/s "
            f"(burst {live_s.burst:.0f})\n"
        )
        result = [live(args.redis, args.owners, live_s, shared) for shared in (False, True)]
        print(table(result))
        return
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
