"""The queue API every backend offers, stated once (with its docstrings).

A backend subclasses QueueBackend: the public calls check their arguments
here, once, and call the backend's hooks (`_add`, `_claim_many`, ...); the
one-job calls are their batch calls.

The worker, the CLI, metrics and the producer server depend on this
interface, never on a concrete backend: `walq.open` (walq.backends) returns
one. A new backend is a module implementing it, a registry entry, and the
contract suite (tests/test_contract.py) run against it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any, Protocol, TypeVar, runtime_checkable

from walq.core import events as ev
from walq.core.job import DeadJob, Job, Ran, check_ran
from walq.core.jobspec import (
    Extra,
    HasExtra,
    JobSpec,
    Output,
    check_delay,
    check_extra,
    check_seconds,
    check_task,
    encode_result,
    follow_spec,
    make_spec,
    spec_and_extra,
    spec_from,
)
from walq.core.schedule import Schedule
from walq.core.state import JobInfo
from walq.core.text import excerpt
from walq.errors import ArgumentError, StateError, WalqError

EnqueueItem = tuple[str, Any] | tuple[str, Any, Mapping[str, Any]]
B = TypeVar("B", bound="QueueBackend")


@runtime_checkable
class QueueBackend(Protocol):
    """A durable job queue: what Queue (a directory) and RedisQueue (a server) both do.

    Every state change is durable when the call returns (per the backend's
    durability setting); a job is at-least-once: it runs again if its
    attempt's lease expires before an ack.
    """

    path: str  # where the queue lives, as shown to people (a URL without its password)
    max_payload: int  # bytes of one encoded payload
    max_result_bytes: int  # bytes of one stored result
    keep_results: float  # seconds a job's result is kept after it is done
    # Called (outside any lock) when a job may have become ready: a worker's wakeup.
    ready_listeners: list[Callable[[], None]]
    # Called with a job's id when it is cancelled while running (to stop its handler).
    cancel_listeners: list[Callable[[int], None]]

    # -- producing ----------------------------------------------------------------------

    def enqueue(
        self,
        task: str,
        payload: Any = None,
        *,
        key: str | None = None,
        delay: float = 0.0,
        priority: int = 0,
        max_attempts: int | None = None,
        sync: bool | None = None,
        timeout: float = 0.0,
        after: Iterable[int] | None = None,
        after_policy: str = "cancel",
        run_at: datetime | None = None,
        unique_for: float | None = None,
    ) -> int:
        """Add a job; return its id once durable (per the sync mode, or `sync=True`).

        With `key`, an unfinished job holding the same key is returned instead
        of a new one, or a done one whose key is still remembered: `unique_for`
        seconds keeps this job's key that long after it is done. `run_at` (an
        aware datetime) is when it falls due, instead of `delay`. A full queue
        raises QueueFull, after waiting up to `timeout`.
        With `after`, the job waits (status "waiting") until every job named
        there is done, then is pending (its delay counts from now); a parent
        that dies or is cancelled cancels it, or, with after_policy="always",
        does not hold it up. UnknownJobError if a parent does not exist.
        """
        extra = None
        when: object = delay
        if (
            after is not None
            or run_at is not None
            or unique_for is not None
            or (after_policy != "cancel")
        ):
            when, extra = check_extra(
                key=key, delay=delay, after=after, after_policy=after_policy,
                run_at=run_at, unique_for=unique_for, now=time.time(),
            )  # fmt: skip
        spec = make_spec(task, payload, key=key, delay=when, priority=priority,
                         max_attempts=max_attempts, max_payload=self.max_payload)  # fmt: skip
        if extra is None:
            return self._add((spec,), sync, timeout)[0]
        if extra.parents:
            return self._add_after(spec, extra.parents, extra.policy, sync, extra.unique_for)
        return self._add((spec,), sync, timeout, extra.unique_for)[0]

    def enqueue_many(
        self,
        items: Iterable[EnqueueItem],
        *,
        sync: bool | None = None,
        timeout: float = 0.0,
    ) -> list[int]:
        """Add many jobs; items are (task, payload[, options]).

        options: key, delay, priority, max_attempts, after, after_policy, run_at,
        unique_for (as for `enqueue`). Every item is checked (and every parent
        named in `after`) before any is added; on a directory all are one durable
        write; on Redis, one script for each run of items alike (docs/FLOW.md).
        """
        if not isinstance(items, list | tuple):
            items = list(items)  # read twice if an item has after= or unique_for=
        try:
            specs = [spec_from(raw, self.max_payload) for raw in items]  # the bulk path
        except HasExtra:
            pass
        else:
            return self._add(specs, sync, timeout)
        now = time.time()
        specs = []
        extras: dict[int, Extra] = {}
        for raw in items:
            spec, extra = spec_and_extra(raw, self.max_payload, now)
            if extra is not None:
                extras[len(specs)] = extra
            specs.append(spec)
        if not extras:  # run_at only
            return self._add(specs, sync, timeout)
        return self._add_mixed(specs, extras, sync, timeout)

    # -- consuming ----------------------------------------------------------------------

    def claim(
        self, lease: float = 60.0, timeout: float = 0.0, *, tasks: Iterable[str] | None = None
    ) -> Job | None:
        """Take the next ready job for `lease` seconds, waiting up to `timeout` for one.

        The attempt is durable before the job is returned, so a job that
        crashes the process is still counted.
        """
        jobs = self.claim_many(1, lease=lease, timeout=timeout, tasks=tasks)
        return jobs[0] if jobs else None

    def claim_many(
        self,
        n: int,
        *,
        lease: float = 60.0,
        timeout: float = 0.0,
        accept: Callable[[JobInfo], bool | float] | None = None,
        tasks: Iterable[str] | None = None,
    ) -> list[Job]:
        """Take up to `n` ready jobs with one durable write (see `claim`).

        `accept(info)` may refuse a job just before it is taken (True takes
        it, False skips it, a float defers it that many seconds); the worker
        uses it for per-task limits. `tasks`, if given, takes only jobs of
        those tasks (before `accept`).
        """
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ArgumentError(f"n must be a positive integer, not {excerpt(n)}")
        lease = check_seconds("lease", lease, positive=True)
        timeout = check_seconds("timeout", timeout)
        only = None if tasks is None else frozenset(check_task(t) for t in tasks)
        return self._claim_many(n, lease, timeout, accept, only)

    def ack(
        self,
        job_id: int,
        *,
        attempt: int | None = None,
        sync: bool | None = None,
        result: Any = None,
        enqueue: Iterable[EnqueueItem] = (),
        ran: Ran | None = None,
    ) -> None:
        """Finish a running job held by `attempt`, or by this handle's own claim.

        Without `attempt`, the claim this handle made last on the job decides:
        LeaseLost if it no longer holds the job (its lease expired, the job was
        claimed again or cancelled). Only cancel and requeue act without a claim.
        `result` (JSON or bytes, up to max_result_bytes) is kept for
        `keep_results` seconds (see `result`); the jobs in `enqueue` (items as
        for enqueue_many) are added in the same durable write as the ack.
        `ran`: how the attempt ran, kept in the job's history (see `Ran`; the
        directory backend writes it with the ack, a Redis server ignores it).
        """
        self.ack_many([job_id], attempts=None if attempt is None else [attempt], sync=sync,
                      results=[result], enqueues=[enqueue],
                      ran=None if ran is None else [ran])  # fmt: skip

    def ack_many(
        self,
        job_ids: Sequence[int],
        *,
        attempts: Sequence[int] | None = None,
        sync: bool | None = None,
        strict: bool = True,
        results: Sequence[Any] | None = None,
        enqueues: Sequence[Iterable[EnqueueItem]] | None = None,
        ran: Sequence[Ran] | None = None,
    ) -> list[tuple[int, StateError]]:
        """Finish many running jobs with one durable write.

        strict: if one job is not held (by its attempt), raise and ack none.
        Otherwise ack those that are held and return the others with why.
        results, enqueues, ran: each job's result, follow-up jobs and how it ran (see `ack`).
        """
        outputs = None
        if results is not None or enqueues is not None:
            outputs = self._outputs(job_ids, results, enqueues)
        if ran is not None:
            if len(ran) != len(job_ids):
                raise ArgumentError(
                    f"job_ids and ran differ in length ({len(job_ids)}, {len(ran)})"
                )
            ran = [check_ran(r) for r in ran]
        if ran is None:
            return self._ack_many(job_ids, attempts, sync, strict, outputs)
        return self._ack_many(job_ids, attempts, sync, strict, outputs, ran=ran)

    def _outputs(
        self,
        job_ids: Sequence[int],
        results: Sequence[Any] | None,
        enqueues: Sequence[Iterable[EnqueueItem]] | None,
    ) -> list[Output | None] | None:
        """Each job's encoded result and checked follow-up jobs (None: a plain ack)."""
        out: list[Output | None] = []
        now = time.time()
        for i, jid in enumerate(job_ids):
            kind, data = encode_result(
                None if results is None else results[i], self.max_result_bytes, jid
            )
            items = () if enqueues is None else enqueues[i]
            follow = tuple(follow_spec(raw, self.max_payload, now) for raw in items)
            out.append(Output(kind, data, follow) if kind != ev.RESULT_NONE or follow else None)
        return out if any(o is not None for o in out) else None

    def result(self, job_id: int, timeout: float | None = None) -> Any:
        """The value job `job_id`'s handler returned (None if it returned none or it expired).

        Waits up to `timeout` seconds (None: as long as it takes) for an
        unfinished job, then ResultTimeout. JobFailed (with its error) if the
        job is dead, JobCancelled (with the cause) if it was cancelled.
        """
        ...

    def fail(
        self,
        job_id: int,
        error: str = "",
        permanent: bool = False,
        *,
        attempt: int | None = None,
        delay: float | None = None,
        sync: bool | None = None,
        ran: Ran | None = None,
    ) -> str:
        """Record a failed attempt: retry after `delay` (default: backoff), or dead.

        Returns the job's new status, "scheduled" or "dead". `ran`: see `ack`.
        """
        wait = None if delay is None else check_delay(delay)
        if ran is None:
            return self._fail(job_id, error, permanent, attempt, wait, sync)
        return self._fail(job_id, error, permanent, attempt, wait, sync, ran=check_ran(ran))

    def release(
        self,
        job_id: int,
        *,
        attempt: int | None = None,
        sync: bool | None = None,
        ran: Ran | None = None,
    ) -> None:
        """Hand a running job back to pending without charging its attempt (`ran`: see `ack`)."""
        self._release(job_id, attempt, sync, None if ran is None else check_ran(ran))

    def extend(self, job_id: int, lease: float, *, attempt: int | None = None) -> None:
        """Push a running job's lease to `lease` seconds from now (a heartbeat)."""
        ...

    def extend_many(
        self, job_ids: Sequence[int], lease: float, *, attempts: Sequence[int] | None = None
    ) -> list[tuple[int, WalqError]]:
        """Extend many running jobs' leases at once (a worker's heartbeat).

        Each job's attempt (or this handle's claim) is checked as by `extend`;
        the jobs no longer held are returned with why, the others extended.
        """
        return self._extend_many(job_ids, check_seconds("lease", lease, positive=True), attempts)

    def fire_schedule(self, schedule: Schedule) -> list[int]:
        """Enqueue the due ticks of `schedule` and record its last tick, in one durable write.

        Which ticks are due is walq.core.schedule.due (its misfire policy) from
        the last tick the queue recorded; each tick's job has the key
        tick_key(name, tick), so a tick is one job however many owners fire
        it. Returns the ids of the ticks' jobs (none if nothing was due).
        """
        ...

    def schedules(self) -> list[dict[str, Any]]:
        """Every schedule the queue has recorded: name, last (wall seconds) and spec (JSON)."""
        ...

    def next_due_in(self) -> float | None:
        """Seconds until the next scheduled job falls due or a lease expires (None: none)."""
        ...

    # -- administration -----------------------------------------------------------------

    def status(self, job_id: int) -> str:
        """pending | scheduled | running | done | dead | cancelled (UnknownJobError if none)."""
        ...

    def cancel(self, job_id: int, *, sync: bool | None = None) -> bool:
        """Cancel an unfinished job; False if it had already finished.

        A running job's handler is stopped (cancel_listeners); a dead job is
        refused (StateError): purge or requeue it.
        """
        ...

    def dead_jobs(self) -> list[DeadJob]:
        """Every dead-lettered job with its last error."""
        ...

    def requeue(self, job_id: int, *, sync: bool | None = None) -> None:
        """Give a dead job a fresh start (its attempts reset)."""
        ...

    def purge(self, job_ids: Iterable[int] | None = None, *, sync: bool | None = None) -> int:
        """Delete dead jobs (all of them by default); return how many."""
        ...

    def pause(self, task: str, *, sync: bool | None = None) -> bool:
        """Stop claims of `task`'s pending jobs (running ones finish); False if already paused.

        Durable: a paused task stays paused across restarts until `resume`.
        """
        ...

    def resume(self, task: str, *, sync: bool | None = None) -> bool:
        """Let `task`'s pending jobs be claimed again; False if it was not paused."""
        ...

    def paused(self) -> list[str]:
        """The paused tasks, sorted."""
        ...

    def job_detail(self, job_id: int) -> dict[str, Any]:
        """One job as an operator sees it: id, status and, while it is live, task,
        attempts, max_attempts, priority, key, error (a dead job's last), due_in
        (scheduled) and lease_left (running), in seconds; a cancelled job's cause, if a
        parent's failure cancelled it. UnknownJobError if none.
        """
        ...

    def find(self, key: str) -> int | None:
        """The unfinished job holding idempotency key `key`, if any."""
        ...

    def jobs(
        self,
        state: str | None = None,
        task: str | None = None,
        *,
        limit: int = 100,
        after: int = 0,
    ) -> list[dict[str, Any]]:
        """Live jobs with ids above `after`, in id order, at most `limit` of them, optionally
        only those in `state` (pending, scheduled, running, dead) and of `task`: each a dict
        of id, task, status, attempts, priority and key.
        """
        ...

    def set_task_defaults(self, task: str, *, max_attempts: int) -> None:
        """Attempts allowed for jobs of `task` that did not set max_attempts themselves."""
        ...

    def stats(self) -> dict[str, Any]:
        """Counts by state and per task, bytes, and counters (walq.stats renders them)."""
        ...

    def record_worker_status(self, status: Mapping[str, Any], ttl: float = 30.0) -> None:
        """Publish a worker's status for `walq stats` (advisory; stale after `ttl` seconds)."""
        ...

    def sync(self) -> None:
        """Make every write so far durable (a no-op where every write already is)."""
        ...

    def shared_gates(self) -> Any | None:
        """The storm gates every host of this queue shares (walq.redisq.gates), or None.

        None where one host serves the queue (a directory): a worker's own
        retry budget, breakers, rate limits and caps are then the queue's.
        """
        return None

    def close(self) -> None:
        """Release the queue (idempotent; in a fork() child, only the child's copies)."""
        ...

    def __enter__(self: B) -> B:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- what each backend implements behind the calls above (arguments checked) ----------

    def _add(
        self, specs: Sequence[JobSpec], sync: bool | None, timeout: float, unique_for: float = 0.0
    ) -> list[int]:
        """Add validated jobs (coalescing keys, waiting up to `timeout` for room); their ids.

        unique_for: seconds the new jobs' keys are remembered once they are done.
        """
        ...

    def _claim_many(
        self, n: int, lease: float, timeout: float,
        accept: Callable[[JobInfo], bool | float] | None, tasks: frozenset[str] | None,
    ) -> list[Job]:  # fmt: skip
        """claim_many with its arguments checked (`tasks`: the task names, or None for all)."""
        ...

    def _ack_many(
        self,
        job_ids: Sequence[int],
        attempts: Sequence[int] | None,
        sync: bool | None,
        strict: bool,
        outputs: Sequence[Output | None] | None = None,
        *,
        ran: Sequence[Ran] | None = None,
    ) -> list[tuple[int, StateError]]:
        """ack_many's durable write (with each job's result and follow-up jobs, if any;
        `ran`: how each attempt ran, for the job's history, if the backend keeps it)."""
        ...

    def _add_after(
        self,
        spec: JobSpec,
        parents: tuple[int, ...],
        policy: int,
        sync: bool | None,
        unique_for: float = 0.0,
    ) -> int:
        """Add a job that waits for `parents` (checked: UnknownJobError for one that never was);
        unique_for: seconds its key is remembered once it is done."""
        ...

    def _add_mixed(
        self,
        specs: Sequence[JobSpec],
        extras: Mapping[int, Extra],
        sync: bool | None,
        timeout: float,
    ) -> list[int]:
        """enqueue_many of items some of which have an Extra (`extras`, by index): every
        parent checked before anything is added (UnknownJobError); their ids, in order."""
        ...

    def _fail(
        self, job_id: int, error: str, permanent: bool,
        attempt: int | None, delay: float | None, sync: bool | None,
        *, ran: Ran | None = None,
    ) -> str:  # fmt: skip
        """fail with its delay checked (None: the backend draws Backoff's)."""
        ...

    def _release(
        self, job_id: int, attempt: int | None, sync: bool | None, ran: Ran | None
    ) -> None:
        """release with its `ran` checked."""
        ...

    def _extend_many(
        self, job_ids: Sequence[int], lease: float, attempts: Sequence[int] | None
    ) -> list[tuple[int, WalqError]]:
        """extend_many with its lease checked."""
        ...
