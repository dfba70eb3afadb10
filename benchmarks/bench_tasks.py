"""The tasks of the worker-pool rows, importable by walq's spawned workers: a no-op,
as a plain function (`tasks`) and as a coroutine (`atasks`, with an I/O-bound
one that awaits asyncio.sleep(0.05)).

Each run appends one byte to $WALQ_BENCH_MARKER so the driver can count
completions the same way for walq and for huey (huey_tasks.py).
"""

from __future__ import annotations

import asyncio
from typing import Any

from benchutil import mark_done

import walq

tasks = walq.Tasks()


@tasks.task()
def noop(payload: Any, job: Any) -> None:
    mark_done()


atasks = walq.Tasks()


@atasks.task("noop")
async def anoop(payload: Any, job: Any) -> None:
    mark_done()


@atasks.task("sleep50")
async def sleep50(payload: Any, job: Any) -> None:
    """I/O-bound: 50 ms of waiting, no CPU."""
    await asyncio.sleep(0.05)
    mark_done()
