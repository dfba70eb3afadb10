"""walq's exceptions: one hierarchy under WalqError, each naming what it is about."""

from __future__ import annotations


class WalqError(Exception):
    """Base class of every error walq raises on purpose."""


class LockedError(WalqError):
    """Another owner (process or thread) holds the queue directory's lock."""


class NoOwnerError(WalqError):
    """An action needs the queue's running owner (its socket), and none answers."""


class CorruptionError(WalqError):
    """A queue file holds bytes that are not a valid record: names the file and offset."""

    def __init__(self, path: str, offset: int, reason: str) -> None:
        super().__init__(f"{path}: corrupt at offset {offset}: {reason}")
        self.path = path
        self.offset = offset
        self.reason = reason


class NotAQueueError(WalqError):
    """The directory does not exist or holds no walq queue (read-only tools)."""


class UnsafeDirectoryError(WalqError):
    """The queue directory (or walq's file in it) is another user's or writable by others."""


class QueueFull(WalqError):
    """A cap (max_pending, max_bytes, free-disk floor) refuses the enqueue."""


class ClosedError(WalqError):
    """The queue (or producer) was closed."""


class LogFailedError(WalqError):
    """A write or fsync failed: the log refuses further writes until reopened.

    An fsync is never retried, because after a failure a retry can falsely
    succeed while the data is lost (the kernel has dropped the dirty pages).
    """


class CompactionError(WalqError):
    """A compaction could not write its output; the queue is unchanged and goes on."""


class UnknownJobError(WalqError, KeyError):
    """No job with this id exists (never enqueued, or purged)."""

    def __str__(self) -> str:
        # KeyError quotes its argument; a message reads better plain.
        return str(self.args[0]) if self.args else "unknown job"


class StateError(WalqError):
    """The job is not in a state that allows the operation (e.g. ack of a done job)."""


class LeaseLost(StateError):
    """The caller's attempt no longer holds the job: its lease expired or it was cancelled."""


class WorkerStartError(WalqError):
    """A worker process failed while starting: importing the main module or the task module,
    or taking longer than the Worker's start_timeout. The Worker stops; no job is charged."""


class ArgumentError(WalqError, ValueError):
    """An argument is out of range or of the wrong kind."""


class TaskModuleError(ArgumentError):
    """The tasks module named by "module:attr" raised while it was imported.

    `detail` is the traceback of the user's code (from the module's own
    frames), for a command line to show above its one-line message.
    """

    def __init__(self, message: str, detail: str) -> None:
        super().__init__(message)
        self.detail = detail


class PayloadError(ArgumentError):
    """A payload is not JSON-serialisable, not bytes, or larger than the limit."""


class ProtocolError(WalqError):
    """A producer message was malformed, truncated or oversized."""


class ForkedError(WalqError):
    """A queue or producer connection opened by one process was used in a fork() of it."""


class BackendError(WalqError):
    """The Redis server could not be reached, or refused the command.

    For a write, whether it took effect is unknown: a lost reply does not
    mean a lost command. walq never retries a write (an enqueue would be
    doubled); reads are retried a few times.
    """


class DurabilityError(WalqError):
    """The server is not configured durably and the caller asked for durability."""


class DurabilityWarning(UserWarning):
    """(A warning, not an error.) The server's persistence is weaker than walq's guarantees need."""


class MissingDependency(WalqError, ImportError):
    """redis-py is not installed."""
