"""What a claim hands out: a Job (and a DeadJob), built in one place for every backend."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, NamedTuple

import attrs

from walq.core.jobspec import decode_payload, follow_spec
from walq.core.text import excerpt
from walq.errors import ArgumentError


class Ran(NamedTuple):
    """How an attempt ran, as its owner saw it: kept in the job's history with its outcome.

    started: wall time it started; seconds: how long it ran; pid: the process
    that ran it (0: none, a job handed back unstarted).
    """

    started: float
    seconds: float
    pid: int


def check_ran(ran: object) -> Ran:
    """`ran` as a Ran, or ArgumentError: a finite start, seconds >= 0, a pid that fits u32."""
    if not isinstance(ran, tuple) or len(ran) != 3:
        raise ArgumentError(f"ran must be a walq.Ran(started, seconds, pid), not {excerpt(ran)}")
    started, seconds, pid = ran
    numbers = all(type(v) in (int, float) for v in (started, seconds))
    if not numbers or not math.isfinite(started) or not 0 <= seconds < math.inf:
        raise ArgumentError(
            f"ran needs a finite start and seconds >= 0, not {excerpt(started)}, {excerpt(seconds)}"
        )
    if type(pid) is not int or not 0 <= pid <= 0xFFFFFFFF:
        raise ArgumentError(
            f"ran's pid must be a whole number in 0..4294967295, not {excerpt(pid)}"
        )
    return Ran(float(started), float(seconds), pid)


@attrs.frozen(kw_only=True)
class Job:
    """A claimed job: run it, then ack, fail or release it by `id` (and `attempt`)."""

    id: int
    task: str
    payload: Any
    attempt: int
    key: str | None = None
    priority: int = 0
    max_attempts: int = 0
    enqueued_at: float = 0.0
    # The results of the jobs this one was enqueued after, by id (None: none kept).
    parents: Mapping[int, Any] = attrs.field(factory=dict)
    # Follow-up jobs added by `enqueue`, committed with this attempt's ack.
    outbox: list[Any] = attrs.field(factory=list, eq=False, repr=False)

    def enqueue(self, task: str, payload: Any = None, **options: Any) -> None:
        """Add a follow-up job, committed in the same durable write as this job's ack.

        options as for enqueue_many (key, delay, priority, max_attempts, run_at; not
        after= nor unique_for=: docs/FLOW.md). If this attempt fails or is lost, the
        job is never added; once the ack is durable, it is. Checked now: a bad item
        raises here, in the handler.
        """
        item = (task, payload, options) if options else (task, payload)
        follow_spec(item)
        self.outbox.append(item)

    def fields(self) -> dict[str, Any]:
        """The fields by name, as Job(**fields) takes them back: what a worker process is
        sent (attrs.asdict, which inspects the class on every call, costs several times more).
        """
        return {
            "id": self.id,
            "task": self.task,
            "payload": self.payload,
            "attempt": self.attempt,
            "key": self.key,
            "priority": self.priority,
            "max_attempts": self.max_attempts,
            "enqueued_at": self.enqueued_at,
            "parents": self.parents,  # the outbox starts empty in the worker process
        }


def build_job(
    *,
    id: int,
    task: str,
    kind: int,
    data: bytes,
    attempt: int,
    key: str | None,
    priority: int,
    max_attempts: int,
    enqueued_at: float,
    parents: Mapping[int, Any] | None = None,
) -> Job:
    """The Job a claim hands out, its payload decoded from (kind, data): every backend's one way.

    ValueError (or RecursionError) if the payload does not decode: bytes walq did
    not write, which the backend reports as damage rather than deliver.
    """
    return Job(
        id=id,
        task=task,
        payload=decode_payload(kind, data),
        attempt=attempt,
        key=key,
        priority=priority,
        max_attempts=max_attempts,
        enqueued_at=enqueued_at,
        parents=parents or {},
    )


@attrs.frozen(kw_only=True)
class DeadJob:
    """A dead-lettered job and the error of its last attempt."""

    id: int
    task: str
    payload: Any
    attempts: int
    error: str
    key: str | None = None


# The counters a queue keeps (file and Redis alike), in the order stats() shows them.
COUNTERS = (
    "enqueued",
    "coalesced",
    "claimed",
    "acked",
    "failed",
    "retried",
    "dead_lettered",
    "expired",
)
