"""Handlers for the dashboard's tests and screenshots: demo-like work, limits, failures."""

from __future__ import annotations

import time
from typing import Any

from walq.core.job import Job
from walq.core.retry import RateLimit
from walq.worker.tasks import Tasks

tasks = Tasks()


@tasks.task(timeout=30.0, concurrency=2)
def resize(payload: Any, job: Job) -> None:
    """Pretend to resize an image: a little work."""
    time.sleep(float(payload.get("work", 0.05)))


@tasks.task(timeout=30.0, rate=RateLimit(per_second=20, burst=5))
def email(payload: Any, job: Job) -> None:
    """Pretend to send an email, at most 20 a second."""
    time.sleep(float(payload.get("work", 0.01)))


@tasks.task(timeout=30.0, max_attempts=2)
def report(payload: Any, job: Job) -> None:
    """Fails for good when the payload says so (a dead job with a traceback)."""
    if payload.get("fail"):
        _load_table(payload)
    time.sleep(float(payload.get("work", 0.02)))


def _load_table(payload: Any) -> None:
    raise LookupError(f"report {payload.get('n')}: the source table is missing")
