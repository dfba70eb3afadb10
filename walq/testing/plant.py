"""Known bugs to plant on purpose, so a torture tool can prove it would catch them.

The directory's storage bugs are subclasses of walq.Queue and of its log
(take the class from `queue_class`); the worker bugs are subclasses of
walq.Worker that undo one promise through a seam (take the class from
`worker_class`). Nothing here is reachable unless a test or a torture tool
asks. `WALQ_PLANT_BUG` (comma-separated names) lets a tool plant them in an
owner subprocess: call `plant_from_env()`, then `queue_class()` and
`worker_class()` there.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any, TypeVar, cast

from walq.core.jobspec import Output
from walq.directory.log import Log
from walq.directory.queue import Queue
from walq.directory.recovery import Recovery
from walq.directory.segment import Segment
from walq.worker.heartbeat import Heartbeat
from walq.worker.pool import Worker

BUGS = {
    "skip-fsync": "the log never calls fdatasync (power loss then loses confirmed jobs)",
    "forget-ack": "ack returns without writing the ack record (acked jobs come back)",
    "accept-bad-crc": "the decoder accepts records whose checksum does not match",
    "ignore-missing-segments": "a removed segment goes unnoticed (its jobs vanish silently)",
    "heartbeat-off": "the Worker never renews its leases (long jobs run twice at once)",
}


# The storage bugs `queue_class` plants; `plant` adds to (or takes from) this set.
QUEUE_BUGS = frozenset({"skip-fsync", "forget-ack", "ignore-missing-segments", "accept-bad-crc"})
_planted: set[str] = set()

Q = TypeVar("Q", bound=Queue)


class SkipsFsync(Log):
    """A log that never calls fdatasync on its segments."""

    def _timed_sync(self, seg: Segment) -> None:
        pass


class IgnoresMissingSegments(Recovery):
    """A recovery that never notices a removed segment (walq as it was before the check)."""

    def missing(self, spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
        return []


class ForgetsAck:
    """A Queue mixin: ack returns without writing the ack record (the job stays running)."""

    def _record_acks(self, ids: list[int], how: object = None) -> int | None:
        return None

    def _record_finishes(
        self, finished: list[tuple[int, Output]], how: object = None
    ) -> int | None:
        return None  # an ack with a result or follow-up jobs: forgotten the same way


def accept_any_record(crc: int, covered: bytes | memoryview) -> bool:
    """A record check that passes every checksum (the accept-bad-crc bug)."""
    return True


def queue_class(base: type[Q] = Queue, names: Iterable[str] | None = None) -> type[Q]:  # type: ignore[assignment]
    """`base` (a Queue class) with the named storage bugs planted, else `base` itself.

    names: default, the storage bugs `plant` planted in this process.
    """
    chosen = QUEUE_BUGS & set(_planted if names is None else names)
    if not chosen:
        return base
    log_class: type[Log] = SkipsFsync if "skip-fsync" in chosen else Log
    if "accept-bad-crc" in chosen:
        log_class = type(
            "PlantedLog", (log_class,), {"record_check": staticmethod(accept_any_record)}
        )
    if "ignore-missing-segments" in chosen:
        log_class = type("PlantedLog", (log_class,), {"recovery_class": IgnoresMissingSegments})
    bases: tuple[type, ...] = (ForgetsAck, base) if "forget-ack" in chosen else (base,)
    return cast("type[Q]", type(f"Planted{base.__name__}", bases, {"_log_class": log_class}))


class DiesOnGroupSigterm(Worker):
    """Its worker processes keep SIGTERM's default action: a group stop kills the handlers."""

    _group_signals = ()


class SilentHeartbeat(Heartbeat):
    """A heartbeat that never renews a lease."""

    def beat(self) -> bool:
        return False


class HeartbeatOff(Worker):
    """Never renews its leases: a job longer than the lease is claimed again by
    another worker while it still runs."""

    heartbeat_class = SilentHeartbeat


class TimeoutFromDispatch(Worker):
    """Hands jobs to worker processes still importing their tasks, as before the
    ready handshake: the handler's timeout then counts the import."""

    def _takes_jobs(self, slot: Any) -> bool:
        return not slot.retiring and slot.kill_reason is None


WORKER_BUGS: dict[str, type[Worker]] = {
    "die-on-group-sigterm": DiesOnGroupSigterm,
    "timeout-from-dispatch": TimeoutFromDispatch,
    "heartbeat-off": HeartbeatOff,
}


def worker_class(names: list[str]) -> type[Worker]:
    """The Worker class with the named worker bug planted (at most one), else Worker."""
    chosen = [WORKER_BUGS[n] for n in names if n in WORKER_BUGS]
    if len(chosen) > 1:
        raise ValueError("plant at most one worker bug at a time")
    return chosen[0] if chosen else Worker


def plant(name: str, on: bool = True) -> None:
    """Plant (or remove) the named bug in this process."""
    if name in QUEUE_BUGS:  # takes effect in the queues opened through `queue_class`
        if on:
            _planted.add(name)
        else:
            _planted.discard(name)
    elif name not in WORKER_BUGS:
        raise ValueError(f"unknown bug {name!r}; choose from {', '.join(BUGS)}")


def plant_from_env() -> list[str]:
    """Plant every storage bug named in WALQ_PLANT_BUG; return every name (the queue and
    worker bugs among them are planted by using `queue_class()` and `worker_class(names)`)."""
    names = [n for n in os.environ.get("WALQ_PLANT_BUG", "").split(",") if n]
    for name in names:
        if name not in WORKER_BUGS:
            plant(name)
    return names


def clear() -> None:
    """Remove every planted bug."""
    for name in BUGS:
        plant(name, on=False)
