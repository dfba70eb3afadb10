"""Which claimed job may start now: each task's policy decides, just before a run.

The Worker hands `Admission.accept(...)` to `claim_many` as its per-job gate,
and wakes up when the next breaker or rate limit opens (`next_open`).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from typing import Any

import attrs

from walq.core.retry import RetryBudget
from walq.core.state import JobInfo
from walq.worker.outcomes import TaskRuntime
from walq.worker.tasks import Task, Tasks

log = logging.getLogger("walq.worker")


def gated(task: Task) -> bool:
    """Whether the task's policy limits when its jobs start (rate or concurrency)."""
    return task.policy.rate is not None or task.policy.concurrency is not None


def starts_at_once(task: Task, attempt: int, max_attempts: int) -> bool:
    """Whether a job about to make attempt `attempt` goes only to an idle worker, never
    prefetched: its task is gated, or this is its last attempt. A prefetched job is
    charged when claimed, so an owner killed before it ran would dead-letter a job on
    its last attempt without running it; started at once, it runs first."""
    return gated(task) or attempt >= max_attempts


@attrs.define
class Admission:
    """The tasks' policies as a claim's gate; `runtime` and `counters` are the Worker's."""

    tasks: Tasks
    runtime: dict[str, TaskRuntime]
    counters: dict[str, int]
    budget: RetryBudget
    rng: random.Random
    _unknown_warned: set[str] = attrs.field(factory=set, init=False)

    def accept(self, now: float, idle: int) -> Callable[[JobInfo], bool | float]:
        """The per-job gate of claim_many, for one claim with `idle` idle workers.

        True runs the job; False leaves the task's jobs pending for this round
        (its concurrency cap, breaker or rate limit says wait); a time defers
        just this job -- a retry the queue-wide budget cannot pay for yet.
        A task with a rate limit or concurrency cap is only admitted onto an
        idle worker, so admission time is start time (prefetch would bunch it);
        so is a job on its last attempt (see starts_at_once).
        """
        idle_left = [idle]

        def accept(info: JobInfo) -> bool | float:
            task = self.tasks.get(info.task)
            if task is None:
                if info.task not in self._unknown_warned:
                    self._unknown_warned.add(info.task)
                    log.warning(
                    "no handler for task %r: its jobs stay pending", info.task,
                    extra={"task": info.task},
                )  # fmt: skip
                return False
            if info.attempts >= info.max_attempts:
                return True  # out of attempts: the claim dead-letters it, nothing runs
            is_gated = starts_at_once(task, info.attempts + 1, info.max_attempts)
            if is_gated and idle_left[0] <= 0:
                return False
            runtime = self.runtime[info.task]
            adm = task.policy.admit(
                now, attempt=info.attempts + 1, running=runtime.running,
                budget=self.budget, rng=self.rng,
            )  # fmt: skip
            if adm.ok:
                runtime.running += 1
                if is_gated:
                    idle_left[0] -= 1
                return True
            if adm.pauses_task:
                return False
            self.counters["deferred"] += 1
            return adm.not_before

        return accept

    def next_open(self, now: float) -> float | None:
        """When the next breaker or rate limit that is shut now opens (None: none is)."""
        soonest: float | None = None
        for task in self.tasks:
            for gate in (task.policy.breaker, task.policy.rate):
                at = _gate_time(gate, now)
                if at is not None and at > now and (soonest is None or at < soonest):
                    soonest = at
        return soonest


def _gate_time(gate: Any, now: float) -> float | None:
    if gate is None:
        return None
    if hasattr(gate, "retry_at"):
        return float(gate.retry_at(now))
    return float(gate.next_available(now))
