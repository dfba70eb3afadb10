"""The handler tools/torture_redis.py runs: it sleeps, and notes its start and end in the ledger.

The ledger (WALQ_TORTURE_LEDGER) and the host's name (WALQ_TORTURE_HOST) come
from the owner's environment. Each line is one O_APPEND write, then fsync:
the start is on disk before any work, the end before the handler returns.
"""

from __future__ import annotations

import os
import time
from typing import Any

from tools.torture_redis import note
from walq.core.job import Job
from walq.worker.tasks import Tasks

tasks = Tasks()


# Each kill of an owner charges the attempts it interrupted: allow plenty.
@tasks.task(timeout=120.0, max_attempts=100)
def work(payload: Any, job: Job) -> None:
    ledger, host = os.environ["WALQ_TORTURE_LEDGER"], os.environ["WALQ_TORTURE_HOST"]
    note(ledger, f"start {job.id} {job.attempt} {host}")
    time.sleep(float(payload["seconds"]))
    note(ledger, f"end {job.id} {job.attempt} {host}")
