"""Known bugs to plant on purpose, so a torture tool can prove it would catch them.

The storage bugs flip one flag in walq's own code; the worker bugs are
subclasses of walq.Worker that undo one promise through a seam (take the class
from `worker_class`). Nothing here is reachable unless a test or a torture tool
asks. `WALQ_PLANT_BUG` (comma-separated names) lets a tool plant them in an
owner subprocess: call `plant_from_env()` and `worker_class()` there.
"""

from __future__ import annotations

import os
from typing import Any

from walq.core import format, framing
from walq.directory import log, queue
from walq.worker import heartbeat
from walq.worker.pool import Worker

BUGS = {
    "skip-fsync": "the log never calls fdatasync (power loss then loses confirmed jobs)",
    "forget-ack": "ack returns without writing the ack record (acked jobs come back)",
    "accept-bad-crc": "the decoder accepts records whose checksum does not match",
    "ignore-missing-segments": "a removed segment goes unnoticed (its jobs vanish silently)",
    "heartbeat-off": "the Worker never renews its leases (long jobs run twice at once)",
}


class DiesOnGroupSigterm(Worker):
    """Its worker processes keep SIGTERM's default action: a group stop kills the handlers."""

    _group_signals = ()


class TimeoutFromDispatch(Worker):
    """Hands jobs to worker processes still importing their tasks, as before the
    ready handshake: the handler's timeout then counts the import."""

    def _takes_jobs(self, slot: Any) -> bool:
        return not slot.retiring and slot.kill_reason is None


WORKER_BUGS: dict[str, type[Worker]] = {
    "die-on-group-sigterm": DiesOnGroupSigterm,
    "timeout-from-dispatch": TimeoutFromDispatch,
}


def worker_class(names: list[str]) -> type[Worker]:
    """The Worker class with the named worker bug planted (at most one), else Worker."""
    chosen = [WORKER_BUGS[n] for n in names if n in WORKER_BUGS]
    if len(chosen) > 1:
        raise ValueError("plant at most one worker bug at a time")
    return chosen[0] if chosen else Worker


def accept_any_record(crc: int, covered: bytes | memoryview) -> bool:
    """A record check that passes every checksum (the accept-bad-crc bug)."""
    return True


def plant(name: str, on: bool = True) -> None:
    """Plant (or remove) the named bug in this process."""
    if name == "skip-fsync":
        log.PLANTED_SKIP_FSYNC = on
    elif name == "forget-ack":
        queue.PLANTED_FORGET_ACK = on
    elif name == "accept-bad-crc":
        log.Log.record_check = staticmethod(accept_any_record if on else framing.crc_matches)
    elif name == "ignore-missing-segments":
        format.PLANTED_IGNORE_MISSING = on
    elif name == "heartbeat-off":
        heartbeat.PLANTED_HEARTBEAT_OFF = on
    else:
        raise ValueError(f"unknown bug {name!r}; choose from {', '.join(BUGS)}")


def plant_from_env() -> list[str]:
    """Plant every storage bug named in WALQ_PLANT_BUG; return every name (the worker
    bugs among them are planted by using `worker_class(names)`)."""
    names = [n for n in os.environ.get("WALQ_PLANT_BUG", "").split(",") if n]
    for name in names:
        if name not in WORKER_BUGS:
            plant(name)
    return names


def clear() -> None:
    """Remove every planted bug."""
    for name in BUGS:
        plant(name, on=False)
