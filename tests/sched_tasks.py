"""A tasks module with one schedule, for the tests that run a real `walq worker`.

The schedule ticks every second; its misfire policy comes from WALQ_TEST_MISFIRE.
"""

from __future__ import annotations

import os
from typing import Any

from walq.core.job import Job
from walq.worker.tasks import Tasks

tasks = Tasks()


@tasks.periodic("beat", every=1, misfire=os.environ.get("WALQ_TEST_MISFIRE", "all"))
def beat(payload: Any, job: Job) -> None:
    """Notes the tick's key in the file WALQ_TEST_LEDGER names, if any (one write a line)."""
    path = os.environ.get("WALQ_TEST_LEDGER")
    if path:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, f"{job.key}\n".encode())
        finally:
            os.close(fd)
