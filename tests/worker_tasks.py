"""Handlers for the worker tests: each misbehaves in one way a real handler can."""

from __future__ import annotations

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
    return {1, 2}
