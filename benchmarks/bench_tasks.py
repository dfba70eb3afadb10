"""The no-op task of the worker-pool rows, importable by walq's spawned workers.

Each run appends one byte to $WALQ_BENCH_MARKER so the driver can count
completions the same way for walq and for huey (huey_tasks.py).
"""

from __future__ import annotations

from typing import Any

from benchutil import mark_done

import walq

tasks = walq.Tasks()


@tasks.task()
def noop(payload: Any, job: Any) -> None:
    mark_done()
