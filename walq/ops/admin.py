"""Administration of a queue: enqueue, requeue, purge, compact, for either backend.

On a queue directory they take the queue's lock, so no owner may be running
(enqueue goes through a running owner instead); on a server they act at once.
"""

from __future__ import annotations

import contextlib
import posixpath
import warnings
from collections.abc import Iterable
from datetime import datetime
from typing import Any

import attrs

from walq import backends
from walq.backend import QueueBackend
from walq.core import format as fmt
from walq.directory.fs import FileSystem, OsFileSystem
from walq.directory.queue import RECOVERY_MODES
from walq.errors import DurabilityWarning, LockedError, StateError
from walq.ops.owner import owner_running
from walq.ops.scan import Progress, check_queue_dir, segment_seqs

__all__ = [  # RECOVERY_MODES: how a directory's owner may open past damage (`walq worker`)
    "RECOVERY_MODES",
    "Compacted",
    "Enqueued",
    "cancel",
    "compact",
    "enqueue",
    "open_server",
    "purge",
    "requeue",
]


def _open_owned(path: str, fs: FileSystem | None) -> Any:
    """Open the queue in `path` as its owner for one administrative step.

    NotAQueueError if it is not a queue (Queue.open would create one);
    LockedError naming the owner's pid if one runs.
    """
    from walq.directory.queue import Queue  # noqa: PLC0415 - the read-only tools never need it

    segment_seqs(path, fs)
    try:
        return Queue.open(path, compaction=False, fs=fs)
    except LockedError:
        raise owner_running(path) from None


def open_server(url: str) -> QueueBackend:
    """Open the existing queue at a server's `url` for one administrative step.

    A weak durability setting is what `walq stats` reports, not a warning here.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DurabilityWarning)
        return backends.open(url, create=False)


@attrs.frozen
class Enqueued:
    """Where `enqueue` put a job: its id (None while spooled) and the way it went."""

    job: int | None
    route: str  # "owner" (its socket), "direct" (no owner: the lock taken), "spool", "redis"


def enqueue(
    path: str,
    task: str,
    payload: Any = None,
    *,
    key: str | None = None,
    delay: float = 0.0,
    priority: int = 0,
    timeout: float = 60.0,
    create: bool = False,
    fs: FileSystem | None = None,
    after: Iterable[int] | None = None,
    after_policy: str = "cancel",
    run_at: datetime | None = None,
    unique_for: float | None = None,
) -> Enqueued:
    """Add one job durably to the queue in `path` (an existing queue or an empty directory).

    With no owner running, take the lock, open the queue (it replays, and
    ingests the spool) and enqueue directly, so the job is in the log at
    once. With an owner, send it over the owner's socket, waiting up to
    `timeout` seconds for the reply. Only an owner that holds the lock but
    cannot be reached leaves the job in the spool, for it to ingest. A queue
    whose lock this user may not open is left to the producer's way, whose
    error names the socket or spool the user may not use. `create` makes a
    missing directory a new queue. On a server, the job is added at once
    (route "redis"). after, after_policy, run_at, unique_for: as for QueueBackend.enqueue.
    """
    opts: dict[str, Any] = {"key": key, "delay": delay, "priority": priority, "after": after,
                            "after_policy": after_policy, "run_at": run_at,
                            "unique_for": unique_for}  # fmt: skip
    if backends.is_url(path):
        with backends.open(path) as server:
            added = server.enqueue(task, payload, **opts)
        return Enqueued(job=added, route="redis")
    from walq.directory.queue import Queue  # noqa: PLC0415
    from walq.producers.client import connect  # noqa: PLC0415 - the read-only tools never need it

    if not (create and not (fs or OsFileSystem()).exists(path)):
        check_queue_dir(path, fs)
    try:
        q = Queue.open(path, compaction=False, create=create, fs=fs)
    except (LockedError, PermissionError):  # an owner runs, or the queue is another user's
        with connect(path, timeout=timeout, fs=fs) as producer:
            jid = producer.enqueue(task, payload, **opts)
        return Enqueued(job=jid, route="spool" if jid is None else "owner")
    with q:
        jid = q.enqueue(task, payload, sync=True, **opts)
    return Enqueued(job=jid, route="direct")


def requeue(path: str, ids: Iterable[int], fs: FileSystem | None = None) -> list[int]:
    """Give dead jobs a fresh start; all or none (UnknownJobError/StateError). Needs the lock.

    On a server there is no lock: each job is requeued in turn (StateError at
    the first that is not dead).
    """
    wanted = list(ids)
    if backends.is_url(path):
        with open_server(path) as server:
            for jid in wanted:
                server.requeue(jid)
        return wanted
    with _open_owned(path, fs) as q:
        for jid in wanted:
            status = q.status(jid)
            if status != "dead":
                raise StateError(f"job {jid} is {status}, not dead")
        for jid in wanted:
            q.requeue(jid)
    return wanted


def cancel(path: str, ids: Iterable[int], fs: FileSystem | None = None) -> list[int]:
    """Cancel unfinished jobs; return those cancelled (the others had finished). Needs the lock.

    A dead job is refused (StateError): purge or requeue it.
    """
    wanted = list(ids)
    if backends.is_url(path):
        with open_server(path) as server:
            return [jid for jid in wanted if server.cancel(jid)]
    with _open_owned(path, fs) as q:
        for jid in wanted:
            if q.status(jid) == "dead":
                raise StateError(f"job {jid} is dead: purge or requeue it")
        return [jid for jid in wanted if q.cancel(jid)]


def purge(path: str, ids: Iterable[int] | None = None, fs: FileSystem | None = None) -> int:
    """Delete dead jobs (all of them, or `ids`); return how many. Needs the lock (a directory)."""
    if backends.is_url(path):
        with open_server(path) as server:
            return server.purge(ids)
    with _open_owned(path, fs) as q:
        if ids is not None:
            ids = list(ids)
            for jid in ids:
                q.status(jid)  # UnknownJobError for an id that never existed
        return int(q.purge(ids))


@attrs.frozen
class Compacted:
    """What `compact` did: the compaction's own numbers and the files' sizes around it."""

    segments_in: int
    bytes_in: int
    bytes_out: int
    jobs: int
    seconds: float
    disk_before: int
    disk_after: int
    segments_before: int
    segments_after: int


def compact(path: str, progress: Progress | None = None, fs: FileSystem | None = None) -> Compacted:
    """Compact the sealed segments of an owner-less queue. Needs the lock."""
    fs = fs or OsFileSystem()
    with _open_owned(path, fs) as q:
        before = _disk(fs, path)
        result = q.compact(progress=progress)
        after = _disk(fs, path)
    return Compacted(
        segments_in=result.segments_in,
        bytes_in=result.bytes_in,
        bytes_out=result.bytes_out,
        jobs=result.jobs,
        seconds=result.seconds,
        disk_before=before[1],
        disk_after=after[1],
        segments_before=before[0],
        segments_after=after[0],
    )


def _disk(fs: FileSystem, path: str) -> tuple[int, int]:
    """(segments, bytes) of the segment files in `path`."""
    count = total = 0
    for seq in segment_seqs(path, fs):
        with contextlib.suppress(FileNotFoundError):
            f = fs.open(posixpath.join(path, fmt.segment_name(seq)))
            try:
                total += f.size()
                count += 1
            finally:
                f.close()
    return count, total
