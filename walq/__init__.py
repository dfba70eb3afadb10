"""walq: a crash-safe job queue that lives in one directory."""

from walq.aio.producer import AsyncProducer, aconnect
from walq.aio.queue import AsyncQueue
from walq.backend import QueueBackend
from walq.backends import open
from walq.core.job import DeadJob, Job, Ran
from walq.core.retry import (
    Backoff,
    CircuitBreaker,
    Permanent,
    RateLimit,
    RetryAfter,
    RetryBudget,
)
from walq.core.state import Now
from walq.directory.queue import Queue
from walq.errors import (
    ArgumentError,
    BackendError,
    ClosedError,
    CompactionError,
    CorruptionError,
    DurabilityError,
    ForkedError,
    JobCancelled,
    JobFailed,
    LeaseLost,
    LockedError,
    LogFailedError,
    NoOwnerError,
    NotAQueueError,
    PayloadError,
    ProtocolError,
    QueueFull,
    ResultTimeout,
    StateError,
    TaskModuleError,
    UnknownJobError,
    UnsafeDirectoryError,
    WalqError,
    WorkerStartError,
)
from walq.producers.client import Producer, connect
from walq.producers.control import Admin
from walq.redisq.queue import RedisQueue
from walq.worker.pool import Worker
from walq.worker.tasks import Task, Tasks

__version__ = "0.1.0"

__all__ = [
    "Admin",
    "ArgumentError",
    "AsyncProducer",
    "AsyncQueue",
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
    "JobCancelled",
    "JobFailed",
    "LeaseLost",
    "LockedError",
    "LogFailedError",
    "NoOwnerError",
    "NotAQueueError",
    "Now",
    "PayloadError",
    "Permanent",
    "Producer",
    "ProtocolError",
    "Queue",
    "QueueBackend",
    "QueueFull",
    "Ran",
    "RateLimit",
    "RedisQueue",
    "ResultTimeout",
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
    "aconnect",
    "connect",
    "open",
]
