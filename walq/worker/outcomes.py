"""The owner's record of attempts: their outcomes, written to the queue.

A finished attempt is acked, or failed as its task's policy decides (retry,
with which delay, or dead); a job never started is released uncharged. A
result for an attempt that no longer holds its job is dropped (docs/WORKER.md).
"""

from __future__ import annotations

import functools
import logging
import random
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import attrs

from walq.backend import QueueBackend
from walq.core.job import Job, Ran
from walq.core.jobspec import FAILS_FOR_GOOD, check_result_size, decode_result
from walq.core.retry import Permanent, RetryAfter, RetryBudget
from walq.errors import PayloadError, StateError, WalqError
from walq.worker.heartbeat import Heartbeat, Link
from walq.worker.tasks import Task

log = logging.getLogger("walq.worker")

# Finished attempts the worker's status reports (a server's queue keeps no history of them).
RECENT = 100
RECENT_FIELDS = ("job", "attempt", "task", "process", "seconds", "ended", "ok", "cause")


@attrs.frozen
class Outcome:
    """A finished attempt: ok, or a failure report."""

    job: Job
    task: Task
    ok: bool
    report: dict[str, Any] | None = None
    seconds: float = 0.0  # how long the attempt ran, as the owner saw it
    process: int = 0  # the pid of the worker process that ran it
    ended: float = 0.0  # the wall time the owner saw it end (0: when it is written)

    def ran(self) -> Ran:
        """How the attempt ran, for the job's history (its start counted back from its end)."""
        ended = self.ended or time.time()
        return Ran(ended - self.seconds, self.seconds, self.process)


@attrs.define
class TaskRuntime:
    running: int = 0


@attrs.define
class Recorder:
    """Writes outcomes to the queue through the link, and tells each task's policy.

    `runtime` and `counters` are the Worker's own (shared, not copied);
    `on_decided(task, now)` runs after a failure's policy decision, before it
    is written (a breaker it opened pauses the task's queued jobs).
    """

    queue: QueueBackend
    link: Link
    heartbeat: Heartbeat
    runtime: dict[str, TaskRuntime]
    counters: dict[str, int]
    budget: RetryBudget
    rng: random.Random
    on_decided: Callable[[Task, float], None]
    # The last RECENT attempts ended: which process ran each, for how long, and how it ended.
    recent: deque[tuple[Any, ...]] = attrs.field(factory=lambda: deque(maxlen=RECENT))

    def record(self, outcomes: list[Outcome]) -> None:
        """Ack and fail finished attempts; results for lost leases are dropped."""
        now = time.monotonic()
        wall = time.time()
        oks = []
        self.heartbeat.drop_many([out.job.id for out in outcomes])
        for out in outcomes:
            # A tuple per job (RECENT_FIELDS): the status writer makes the dicts, at most
            # once a second, instead of this loop once per job.
            self.recent.append(
                (
                    out.job.id, out.job.attempt, out.task.name, out.process, out.seconds, wall,
                    out.ok, None if out.ok else (out.report or {}).get("cause"),
                )
            )  # fmt: skip
            self.runtime[out.task.name].running -= 1
            if out.ok:
                oks.append(out)
                out.task.policy.on_success(now, attempt=out.job.attempt, budget=self.budget)
            else:
                self._fail(out, now)
        plain = [o for o in oks if not o.report]
        if plain:
            self.link.call(lambda: self._ack(plain))
        for out in oks:
            if out.report:
                self.link.call(functools.partial(self._ack_with_output, out))

    def _ack_with_output(self, out: Outcome) -> None:
        """Ack one attempt with its result and follow-up jobs, in one durable write.

        A result the queue refuses (over its max_result_bytes) fails the job
        for good: running it again would return the same.
        """
        job, report = out.job, out.report or {}
        kind, data = report["result"]
        try:
            check_result_size(len(data), self.queue.max_result_bytes, job.id, job.task)
        except PayloadError as exc:
            text = f"[result] attempt {job.attempt}: {exc}: {FAILS_FOR_GOOD}"
            self._write_fail(out, True, None, text)
            return
        try:
            self.queue.ack(
                job.id, attempt=job.attempt, sync=False,
                result=decode_result(kind, data), enqueue=report["enqueue"], ran=out.ran(),
            )  # fmt: skip
        except StateError as exc:
            self.counters["stale"] += 1
            log.info("job %d: result dropped: %s", job.id, exc, extra={"job_id": job.id})
            return
        except WalqError as exc:
            text = f"[exception] attempt {job.attempt}: the queue refused its result: {exc}"
            self._write_fail(out, True, None, text)
            return
        self.counters["ok"] += 1

    def _ack(self, oks: list[Outcome]) -> None:
        refused = self.queue.ack_many(
            [o.job.id for o in oks], attempts=[o.job.attempt for o in oks],
            sync=False, strict=False, ran=[o.ran() for o in oks],
        )  # fmt: skip
        self.counters["ok"] += len(oks) - len(refused)
        self.counters["stale"] += len(refused)
        for jid, exc in refused:
            log.info("job %d: result dropped: %s", jid, exc, extra={"job_id": jid})

    def _fail(self, out: Outcome, now: float) -> None:
        report = out.report or {}
        job, policy = out.job, out.task.policy
        error_type: type[BaseException] | BaseException
        if report.get("permanent"):
            error_type = Permanent
        elif report.get("no_retry", -1) >= 0:
            error_type = policy.no_retry[report["no_retry"]]
        elif report.get("retry_after") is not None:
            error_type = RetryAfter(float(report["retry_after"]), report.get("message", ""))
        elif report.get("retry_on", -1) >= 0:
            error_type = policy.retry_on[report["retry_on"]]
        elif report.get("cause") != "exception":
            error_type = _WorkerLost  # a timeout, a dead worker, the memory cap
        elif policy.retry_on:
            error_type = _Unlisted
        else:
            error_type = Exception
        decision = policy.on_failure(
            error_type, now, attempt=job.attempt, rng=self.rng,
            max_attempts=job.max_attempts or None, counts=not report.get("shared"),
        )  # fmt: skip
        self.on_decided(out.task, now)
        delay = decision.delay
        text = _error_text(report, job)
        self.link.call(lambda: self._write_fail(out, decision.dead, delay, text))

    def _write_fail(self, out: Outcome, dead: bool, delay: float | None, text: str) -> None:
        job, report = out.job, out.report or {}
        try:
            status = self.queue.fail(
                job.id, text, permanent=dead, attempt=job.attempt, delay=delay, sync=False,
                ran=out.ran(),
            )  # fmt: skip
        except StateError as exc:
            self.counters["stale"] += 1
            log.info(
                "job %d: failure of attempt %d dropped: %s", job.id, job.attempt, exc,
                extra={"job_id": job.id, "task": job.task},
            )  # fmt: skip
            return
        self.counters["failed"] += 1
        self.counters["dead" if status == "dead" else "retried"] += 1
        log.warning(
            "job %d (%s) attempt %d failed (%s): %s -> %s",
            job.id, job.task, job.attempt, report.get("cause", "result"),
            report.get("message", text.split("\n", 1)[0]),
            "dead" if status == "dead" else f"retry in {delay:.1f} s",
            extra={"job_id": job.id, "task": job.task},
        )  # fmt: skip

    def release(self, job: Job, task: Task, why: str) -> None:
        """Give a job back unstarted: released uncharged, its lease no longer renewed."""
        self.heartbeat.drop(job.id)
        self.runtime[task.name].running -= 1
        task.policy.on_abandon(time.monotonic())
        ran = Ran(time.time(), 0.0, 0)  # handed back unstarted: no process ran it
        self.link.call(lambda: self._write_release(job, why, ran))

    def _write_release(self, job: Job, why: str, ran: Ran) -> None:
        try:
            self.queue.release(job.id, attempt=job.attempt, sync=False, ran=ran)
        except StateError:
            return
        log.info("job %d released: %s", job.id, why, extra={"job_id": job.id, "task": job.task})


class _WorkerLost(RetryAfter):
    """Stands for an attempt that ended without an exception: a timeout, a dead worker.

    Passed as a type (never raised), so the policy retries it with backoff like
    any failure -- whatever the task's retry_on lists, since the handler never
    got to raise -- and counts it against the task's breaker.
    """


class _Unlisted(Exception):
    """Stands for an exception type missing from a task's retry_on list."""


def _error_text(report: dict[str, Any], job: Job) -> str:
    head = f"[{report.get('cause', 'exception')}] attempt {job.attempt}: "
    if report.get("cause") == "exception":
        head += f"{report.get('type')}: {report.get('message')}"
    else:
        head += str(report.get("message"))
    tb = report.get("traceback") or ""
    return head + ("\n" + tb if tb else "")
