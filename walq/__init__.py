"""walq: a crash-safe job queue that lives in one directory."""

from walq.core.state import Now
from walq.errors import (
    ArgumentError,
    ClosedError,
    CorruptionError,
    LeaseLost,
    LockedError,
    LogFailedError,
    NotAQueueError,
    PayloadError,
    ProtocolError,
    QueueFull,
    StateError,
    UnknownJobError,
    WalqError,
)
from walq.job import DeadJob, Job
from walq.queue import Queue

__version__ = "0.1.0"

__all__ = [
    "ArgumentError",
    "ClosedError",
    "CorruptionError",
    "DeadJob",
    "Job",
    "LeaseLost",
    "LockedError",
    "LogFailedError",
    "NotAQueueError",
    "Now",
    "PayloadError",
    "ProtocolError",
    "Queue",
    "QueueFull",
    "StateError",
    "UnknownJobError",
    "WalqError",
    "__version__",
]
