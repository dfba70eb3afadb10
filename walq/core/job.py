"""What a claim hands out: a Job (and a DeadJob), built in one place for every backend."""

from __future__ import annotations

from typing import Any

import attrs

from walq.core.jobspec import decode_payload


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
