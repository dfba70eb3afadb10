"""The handlers tools/torture_redis.py runs: they note their start and end in the ledger.

The ledger (WALQ_TORTURE_LEDGER) and the host's name (WALQ_TORTURE_HOST) come
from the owner's environment. Each line is one O_APPEND write, then fsync:
the start is on disk before any work, the end before the handler returns.
A job may also carry flow (a follow-up job, a parent): its lines are those of
tools/torture_tasks.py's flow_lines, which tools/flow_audit.py checks, written
before the end line. A schedule ticking every second (misfire="all") notes each tick.
"""

from __future__ import annotations

import os
import time
from typing import Any

from tools.flow_audit import TICK_EVERY, TICK_NAME
from tools.torture_redis import note
from tools.torture_tasks import flow_lines
from walq.core.job import Job
from walq.worker.tasks import Tasks

tasks = Tasks()


# Each kill of an owner charges the attempts it interrupted: allow plenty.
@tasks.task(timeout=120.0, max_attempts=100)
def work(payload: Any, job: Job) -> Any:
    ledger, host = os.environ["WALQ_TORTURE_LEDGER"], os.environ["WALQ_TORTURE_HOST"]
    note(ledger, f"start {job.id} {job.attempt} {host}")
    time.sleep(float(payload.get("seconds", 0.05)))
    nonce = payload.get("nonce")
    if nonce is not None:  # a flow job: its follow-up job, its parent's result
        for line in flow_lines(payload, job, nonce):
            note(ledger, line)
    note(ledger, f"end {job.id} {job.attempt} {host}")
    return nonce  # the result: a dependent checks it in job.parents


@tasks.periodic(TICK_NAME, every=TICK_EVERY, misfire="all", payload={"beat": True})
def beat(payload: Any, job: Job) -> None:
    """Record the tick this job is for."""
    note(os.environ["WALQ_TORTURE_LEDGER"], f"tick {job.id} {job.attempt} {job.key}")
