"""Handlers in a module that is slow to import, or fails to, in worker processes.

The environment decides, read at import time: WALQ_TEST_IMPORT_DELAY (seconds to
sleep while importing) and WALQ_TEST_IMPORT_FAIL (raise while importing). A test
sets them after importing this module itself, so only its worker processes
(started with spawn) see them.
"""

from __future__ import annotations

import os
import time
from typing import Any

from tests.worker_tasks import _note
from walq.core.job import Job
from walq.core.retry import CircuitBreaker, RateLimit
from walq.worker.tasks import Tasks

time.sleep(float(os.environ.get("WALQ_TEST_IMPORT_DELAY", "0")))
if os.environ.get("WALQ_TEST_IMPORT_FAIL"):
    raise RuntimeError("boom at import")

tasks = Tasks()


@tasks.task(timeout=2.0, max_attempts=3)
def needs_1_5_s(payload: Any, job: Job) -> None:
    _note(payload, job, "start")
    time.sleep(1.5)
    _note(payload, job, "end")


@tasks.task(timeout=10.0, rate=RateLimit(per_second=2.0, burst=1))
def rate_2(payload: Any, job: Job) -> None:
    _note(payload, job, f"{time.monotonic():.4f}")


@tasks.task(timeout=10.0, max_attempts=50, breaker=CircuitBreaker(failures=3, cooldown=60.0))
def fails_fast(payload: Any, job: Job) -> None:
    _note(payload, job)
    raise ConnectionError("downstream is down")


@tasks.task(timeout=10.0)
def returns_coroutine(payload: Any, job: Job) -> Any:
    import asyncio

    _note(payload, job)
    return asyncio.sleep(0)


@tasks.task(timeout=10.0)
def noop(payload: Any, job: Job) -> None:
    _note(payload, job)
