"""The guard between spool ingestion and what drops its evidence (compaction, checkpoints).

Until an ingested spool file's removal is durable, the origins in its jobs'
ENQUEUE records are what proves it was ingested: a power cut can bring the file
back, and the next owner skips the items the log names. Ingestion holds the
guard from its enqueue through the removal and the spool directory's fsync, and
a compaction or a checkpoint (both drop those origins) takes it first. When the
removal or the fsync fails, the guard stays unsettled until a later spool poll
succeeds; until then compaction and checkpoints wait.
"""

from __future__ import annotations

import threading
from types import TracebackType

from walq.errors import CompactionError


class SpoolGuard:
    """A lock, and whether ingested spool files are not yet removed for good."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.to_remove: set[str] = set()  # names of ingested spool files still there
        self.unsettled: str | None = None  # why a removal is not known durable (None: none)

    def __enter__(self) -> SpoolGuard:
        self._lock.acquire()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._lock.release()

    def check(self, what: str) -> None:
        """CompactionError if an ingested file's removal is not durable yet (guard held):
        `what` (which drops origins) must wait."""
        if self.unsettled is not None:
            raise CompactionError(f"{self.unsettled}; {what} waits until a spool poll retries it")
