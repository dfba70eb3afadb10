"""The worker's status for `walq stats` and metrics: breakers, running counts, counters.

The backend keeps it where operators read it (`record_worker_status`: the
directory's status file, a Redis key), every few seconds and once at the end.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import attrs

from walq.backend import QueueBackend
from walq.core.gates import RetryBudget
from walq.errors import WalqError
from walq.worker.heartbeat import Link
from walq.worker.outcomes import RECENT_FIELDS, TaskRuntime
from walq.worker.slots import Slot
from walq.worker.tasks import Tasks


def worker_status(
    queue: QueueBackend,
    tasks: Tasks,
    runtime: dict[str, TaskRuntime],
    processes: int,
    counters: dict[str, int],
    budget: RetryBudget | None = None,
    slots: Sequence[Slot] = (),
    recent: Iterable[Sequence[Any]] = (),
) -> dict[str, Any]:
    """Breaker states, limits, running counts, the retry budget and counters: what
    `walq stats` and `walq ui` show; `recent`, the last attempts that ended (the log
    records no worker and no time for an attempt: `walq ui` shows them from here)."""
    now = time.monotonic()
    by_task = {}
    for task in tasks:
        policy = task.policy
        breaker = policy.breaker
        rate = policy.rate
        by_task[task.name] = {
            "running": runtime[task.name].running,
            "breaker": breaker.state(now) if breaker is not None else "off",
            "concurrency": policy.concurrency,
            "rate": None
            if rate is None
            else {
                "per_second": rate.per_second,
                "burst": rate.burst,
                "tokens": round(rate.tokens(now), 3),
            },
        }
    health = getattr(queue, "compactor_health", None)  # a file queue's, not Redis's
    return {
        "pid": os.getpid(),
        "processes": processes,
        "updated": time.time(),
        "tasks": by_task,
        "counters": dict(counters),
        # Each worker process: the jobs it runs now and for how long (`walq ui` shows them).
        "children": [
            {
                "pid": slot.proc.pid,
                "jobs": [
                    {
                        "job": jid,
                        "task": slot.jobs[jid][1].name,
                        "attempt": slot.jobs[jid][0].attempt,
                        "running_for": round(now - began, 3),
                    }
                    for jid, began in slot.started.items()
                    if jid in slot.jobs
                ],
                "completed": slot.completed,
            }
            for slot in slots
        ],
        "retry_budget": None
        if budget is None
        else {
            "ratio": budget.ratio,
            "floor": budget.floor,
            "window": budget.window,
            "balance": round(budget.balance(now), 3),
        },
        "compactor": health() if health is not None else None,
        "recent": [_ended(r) for r in recent],
    }


@attrs.define
class StatusWriter:
    """Records `status()` through the backend at most every `interval` seconds."""

    queue: QueueBackend
    link: Link
    status: Callable[[], dict[str, Any]]
    interval: float
    _written: float = attrs.field(default=0.0, init=False)

    def maybe_write(self) -> None:
        if time.monotonic() - self._written >= self.interval:
            self.write()

    def write(self, final: bool = False) -> None:
        """Record the status now; `final` marks the worker stopped."""
        self._written = time.monotonic()
        status = self.status()
        status["stopped"] = final
        if self.link.down:
            return  # the server is unreachable: the next status after it is back
        with contextlib.suppress(WalqError):
            self.queue.record_worker_status(status)


def _ended(row: Sequence[Any]) -> dict[str, Any]:
    """One attempt that ended, as the status file holds it (a Recorder's tuple)."""
    out = dict(zip(RECENT_FIELDS, row, strict=True))
    out["seconds"], out["ended"] = round(out["seconds"], 4), round(out["ended"], 3)
    return out
