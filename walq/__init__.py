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
    CompactionError,
    CorruptionError,
    ForkedError,
    LeaseLost,
    LockedError,
    LogFailedError,
    NotAQueueError,
    PayloadError,
    ProtocolError,
    QueueFull,
    StateError,
    TaskModuleError,
    UnknownJobError,
    UnsafeDirectoryError,
    WalqError,
    WorkerStartError,
)
from walq.job import DeadJob, Job
from walq.producer import Producer, connect
from walq.queue import Queue
from walq.redisq import BackendError, DurabilityError, RedisQueue
from walq.tasks import Task, Tasks
from walq.worker import Worker

__version__ = "0.1.0"

__all__ = [
    "ArgumentError",
    "BackendError",
    "Backoff",
    "CircuitBreaker",
    "ClosedError",
    "CompactionError",
    "CorruptionError",
    "DeadJob",
    "DurabilityError",
    "ForkedError",
    "Job",
    "LeaseLost",
    "LockedError",
    "LogFailedError",
    "NotAQueueError",
    "Now",
    "PayloadError",
    "Permanent",
    "Producer",
    "ProtocolError",
    "Queue",
    "QueueFull",
    "RateLimit",
    "RedisQueue",
    "RetryAfter",
    "RetryBudget",
    "StateError",
    "Task",
    "TaskModuleError",
    "Tasks",
    "UnknownJobError",
    "UnsafeDirectoryError",
    "WalqError",
    "Worker",
    "WorkerStartError",
    "__version__",
    "connect",
]
