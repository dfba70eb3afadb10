"""Handlers for the worker tests: each misbehaves in one way a real handler can."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from typing import Any

from walq.core.job import Job
from walq.core.retry import CircuitBreaker, Permanent, RateLimit, RetryAfter
from walq.worker.tasks import Tasks

tasks = Tasks()


def _note(payload: Any, job: Job, what: str = "ran") -> None:
    """Append a line to the test's ledger file (O_APPEND: one write per line)."""
    path = payload.get("ledger") if isinstance(payload, dict) else None
    if path:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, f"{job.id} {job.attempt} {os.getpid()} {what}\n".encode())
        finally:
            os.close(fd)


@tasks.task(timeout=10.0)
def ok(payload: Any, job: Job) -> None:
    _note(payload, job)


@tasks.task(timeout=10.0, max_attempts=2)
def raises(payload: Any, job: Job) -> None:
    raise ValueError(f"bad value {payload['n']}")


@tasks.task(timeout=10.0)
def permanent(payload: Any, job: Job) -> None:
    raise Permanent("this input can never work")


@tasks.task(timeout=10.0, max_attempts=2)
def exits(payload: Any, job: Job) -> None:
    os._exit(7)


@tasks.task(timeout=10.0, max_attempts=2)
def segfaults(payload: Any, job: Job) -> None:
    os.kill(os.getpid(), signal.SIGKILL)


@tasks.task(timeout=0.5, max_attempts=2)
def hangs(payload: Any, job: Job) -> None:
    _note(payload, job, "start")
    while True:
        time.sleep(0.1)


@tasks.task(timeout=0.5, max_attempts=1)
def ignores_sigterm(payload: Any, job: Job) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    while True:
        time.sleep(0.1)


@tasks.task(timeout=10.0, max_attempts=1)
def leaks(payload: Any, job: Job) -> None:
    hog = [bytearray(1 << 20) for _ in range(400)]  # 400 MiB, touched
    time.sleep(5)
    del hog


@tasks.task(timeout=30.0)
def sleeps(payload: Any, job: Job) -> None:
    _note(payload, job, "start")
    time.sleep(payload["seconds"])
    _note(payload, job, "end")


@tasks.task(timeout=30.0, max_attempts=3)
def kills_owner(payload: Any, job: Job) -> None:
    _note(payload, job, "poison")
    os.kill(os.getppid(), signal.SIGKILL)
    time.sleep(5)


@tasks.task(timeout=10.0, concurrency=1)
def exclusive(payload: Any, job: Job) -> None:
    _note(payload, job, "start")
    time.sleep(0.05)
    _note(payload, job, "end")


@tasks.task(timeout=10.0, max_attempts=50, breaker=CircuitBreaker(failures=3, cooldown=60.0))
def flaky_downstream(payload: Any, job: Job) -> None:
    _note(payload, job)
    raise ConnectionError("downstream is down")


@tasks.task(timeout=10.0, rate=RateLimit(per_second=20.0, burst=1))
def rate_limited(payload: Any, job: Job) -> None:
    _note(payload, job, f"{time.monotonic():.4f}")


@tasks.task(timeout=10.0, max_attempts=5)
def asks_for_delay(payload: Any, job: Job) -> None:
    _note(payload, job)
    if job.attempt == 1:
        raise RetryAfter(0.5, "come back later")


@tasks.task(timeout=10.0)
def double(payload: Any, job: Job) -> Any:
    """Returns its payload doubled; with "then", enqueues that task with the result."""
    value = payload["n"] * 2
    if payload.get("then"):
        job.enqueue(payload["then"], {"n": value})
    return {"n": value}


@tasks.task(timeout=10.0)
def total(payload: Any, job: Job) -> Any:
    """Sums its parents' results (a fan-in)."""
    return sum(r["n"] for r in job.parents.values())


@tasks.task(timeout=10.0)
def returns_a_set(payload: Any, job: Job) -> Any:
    """Returns no result a queue can store; with "then", a follow-up job too."""
    if payload.get("then"):
        job.enqueue(payload["then"], {"n": 1})
    return {1, 2}


# -- the same tasks, as coroutines: `atasks` runs them on the worker processes' event loops -----

atasks = Tasks()


@atasks.task("ok", timeout=10.0)
async def a_ok(payload: Any, job: Job) -> None:
    await asyncio.sleep(0)
    _note(payload, job)


@atasks.task("raises", timeout=10.0, max_attempts=2)
async def a_raises(payload: Any, job: Job) -> None:
    await asyncio.sleep(0)
    raise ValueError(f"bad value {payload['n']}")


@atasks.task("permanent", timeout=10.0)
async def a_permanent(payload: Any, job: Job) -> None:
    raise Permanent("this input can never work")


@atasks.task("exits", timeout=10.0, max_attempts=2)
async def a_exits(payload: Any, job: Job) -> None:
    await asyncio.sleep(0)
    os._exit(7)


@atasks.task("segfaults", timeout=10.0, max_attempts=2)
async def a_segfaults(payload: Any, job: Job) -> None:
    os.kill(os.getpid(), signal.SIGKILL)


@atasks.task("hangs", timeout=0.5, max_attempts=2)
async def a_hangs(payload: Any, job: Job) -> None:
    _note(payload, job, "start")
    while True:
        await asyncio.sleep(0.1)


@atasks.task("ignores_sigterm", timeout=0.5, max_attempts=1)
async def a_ignores_sigterm(payload: Any, job: Job) -> None:
    """Ignores SIGTERM and its own cancellation: only the kill after kill_grace stops it."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    while True:
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(0.1)


@atasks.task("blocks_loop", timeout=0.5, max_attempts=1)
async def a_blocks_loop(payload: Any, job: Job) -> None:
    """Blocks the event loop (a sync call in a coroutine): no cancellation can reach it."""
    _note(payload, job, "start")
    time.sleep(3600)


@atasks.task("leaks", timeout=10.0, max_attempts=1)
async def a_leaks(payload: Any, job: Job) -> None:
    hog = [bytearray(1 << 20) for _ in range(400)]  # 400 MiB, touched
    await asyncio.sleep(5)
    del hog


@atasks.task("sleeps", timeout=30.0)
async def a_sleeps(payload: Any, job: Job) -> None:
    _note(payload, job, "start")
    await asyncio.sleep(payload["seconds"])
    _note(payload, job, "end")


@atasks.task("kills_owner", timeout=30.0, max_attempts=3)
async def a_kills_owner(payload: Any, job: Job) -> None:
    _note(payload, job, "poison")
    os.kill(os.getppid(), signal.SIGKILL)
    await asyncio.sleep(5)


@atasks.task("exclusive", timeout=10.0, concurrency=1)
async def a_exclusive(payload: Any, job: Job) -> None:
    _note(payload, job, "start")
    await asyncio.sleep(0.05)
    _note(payload, job, "end")


@atasks.task(
    "flaky_downstream", timeout=10.0, max_attempts=50,
    breaker=CircuitBreaker(failures=3, cooldown=60.0),
)  # fmt: skip
async def a_flaky_downstream(payload: Any, job: Job) -> None:
    _note(payload, job)
    raise ConnectionError("downstream is down")


@atasks.task("rate_limited", timeout=10.0, rate=RateLimit(per_second=20.0, burst=1))
async def a_rate_limited(payload: Any, job: Job) -> None:
    _note(payload, job, f"{time.monotonic():.4f}")


@atasks.task("asks_for_delay", timeout=10.0, max_attempts=5)
async def a_asks_for_delay(payload: Any, job: Job) -> None:
    _note(payload, job)
    if job.attempt == 1:
        raise RetryAfter(0.5, "come back later")


@atasks.task("returns_coroutine", timeout=10.0)
async def a_returns_coroutine(payload: Any, job: Job) -> Any:
    _note(payload, job)
    return asyncio.sleep(0)


@atasks.task("double", timeout=10.0)
async def a_double(payload: Any, job: Job) -> Any:
    await asyncio.sleep(0)
    return double(payload, job)


@atasks.task("total", timeout=10.0)
async def a_total(payload: Any, job: Job) -> Any:
    return total(payload, job)


@atasks.task("returns_a_set", timeout=10.0)
async def a_returns_a_set(payload: Any, job: Job) -> Any:
    await asyncio.sleep(0)
    return returns_a_set(payload, job)


REGISTRIES = {"def": tasks, "async def": atasks}  # the worker tests run for both
SPECS = {"def": "tests.worker_tasks:tasks", "async def": "tests.worker_tasks:atasks"}
