"""walq: a crash-safe job queue that lives in one directory."""

from walq.core.retry import (
    Backoff,
    CircuitBreaker,
    Permanent,
    RateLimit,
    RetryAfter,
    RetryBudget,
)
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
from walq.tasks import Task, Tasks
from walq.worker import Worker

__version__ = "0.1.0"

__all__ = [
    "ArgumentError",
    "Backoff",
    "CircuitBreaker",
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
    "Permanent",
    "ProtocolError",
    "Queue",
    "QueueFull",
    "RateLimit",
    "RetryAfter",
    "RetryBudget",
    "StateError",
    "Task",
    "Tasks",
    "UnknownJobError",
    "WalqError",
    "Worker",
    "__version__",
]
