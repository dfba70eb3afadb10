"""The owner's tasks in benchmarks/operate.py: none of the queue's, so its jobs stay put."""

from __future__ import annotations

from typing import Any

import walq

tasks = walq.Tasks()


@tasks.task()
def idle(payload: Any, job: walq.Job) -> None:
    """Never enqueued: the owner serves its socket and runs nothing."""
