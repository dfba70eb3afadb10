"""Spool ingestion: the owner enqueues what producers spooled, exactly once across crashes.

Each spooled item is enqueued with origin `<time_ns>-<pid>-<random>#<index>`
(the file's unique stem and the item's place in it, recorded in its ENQUEUE
record); the file is unlinked and the spool directory fsynced only after the
enqueue is durable, and on open `replayed_origins` names the items already in
the log, so a file that survived a crash is unlinked without enqueueing those
items again. A compactor that drops ENQUEUE records must hold `ingest_lock`,
which ingestion holds from the enqueue through the unlink and the directory fsync;
when the unlink or the fsync fails, the lock (a SpoolGuard) stays unsettled and
compaction and checkpoints wait until a later poll makes the removal durable.
"""

from __future__ import annotations

import contextlib
import logging
import posixpath
import threading
import time
from collections.abc import Iterable, Mapping, Set
from typing import Any, Protocol

import attrs

from walq.directory.fs import FileSystem, check_owner, own_dir
from walq.directory.spool_guard import SpoolGuard
from walq.errors import (
    ClosedError,
    CorruptionError,
    LogFailedError,
    QueueFull,
    UnsafeDirectoryError,
    WalqError,
)
from walq.producers import spool, wire

log = logging.getLogger("walq.server")


class IngestTarget(Protocol):
    """What the producer server needs of the queue it serves (an open Queue is one)."""

    @property
    def path(self) -> str:
        """The queue's directory: the spool and the socket's name are in it."""

    @property
    def fs(self) -> FileSystem: ...

    @property
    def owner_uid(self) -> int | None:
        """The uid that must own spool files (None: not checked, trust_dir=True)."""

    @property
    def replayed_origins(self) -> Set[str]:
        """The origins of the enqueues in the log: spooled items already ingested."""

    @property
    def ingest_lock(self) -> SpoolGuard:
        """Held from an ingestion's enqueue through its unlinks and the spool-dir fsync
        (the queue's compactor takes it before dropping ENQUEUE records)."""

    def enqueue_many(
        self, items: Iterable[tuple[str, Any, Mapping[str, Any]]], *, sync: bool | None = None
    ) -> list[int]:
        """As QueueBackend.enqueue_many (walq/backend.py)."""

    def result(self, job_id: int, timeout: float | None = None) -> Any:
        """As QueueBackend.result (walq/backend.py)."""

    def status(self, job_id: int) -> str:
        """As QueueBackend.status (walq/backend.py)."""


@attrs.define
class _File:
    """A spool file read for ingestion: the items not yet in the log, by index."""

    name: str
    stem: str
    wall: float
    todo: list[tuple[int, wire.Item]]


class SpoolIngester:
    """Settles and ingests the spool of `target`; counts in the server's `counters`."""

    def __init__(
        self,
        target: IngestTarget,
        counters: dict[str, int],
        stop: threading.Event,
        *,
        batch_items: int = 1000,
        batch_bytes: int = 8 << 20,
    ) -> None:
        self.target = target
        self.fs = target.fs
        self.spool_dir = posixpath.join(target.path, spool.SPOOL_DIR)
        self.counters = counters
        for name in ("ingested_jobs", "ingested_files", "rejected_files", "damaged_files",
                     "tmp_removed"):  # fmt: skip
            counters.setdefault(name, 0)
        self.stop = stop  # set: an ingestion under way ends after its current batch
        self.batch_items = batch_items
        self.batch_bytes = batch_bytes
        self.ingest_lock = target.ingest_lock
        self._ingest_mu = threading.Lock()  # one ingestion at a time
        self._stuck: set[str] = set()  # damaged or refused, and could not be set aside
        self._reported: str | None = None  # the last unsettled removal logged
        self._waiting_logged = False

    def prepare(self) -> None:
        """Create the spool directory (or check it is the owner's)."""
        own_dir(self.fs, self.spool_dir, self.target.owner_uid, create=True)

    def reconcile(self) -> int:
        """Settle the spool files a crashed owner had enqueued but not removed; how many.

        A file whose items are all in the log (queue.replayed_origins) is
        removed; one the crash cut in the middle of has the rest of its items
        moved to a file of their own first. Done before anything else (and
        under `ingest_lock`), so that afterwards no spool file has items in the
        log, and a compaction that drops ENQUEUE records loses no origin that
        matters.
        """
        seen = self.target.replayed_origins
        stems = {o.rpartition("#")[0] for o in seen}
        if not stems:
            return 0
        try:
            names = self.fs.listdir(self.spool_dir)
        except FileNotFoundError:
            return 0
        settled: list[str] = []
        with self._ingest_mu, self.ingest_lock:
            for entry in spool.live_entries(names):
                if entry.stem not in stems:
                    continue
                loaded = self._load(entry)
                if loaded is None:
                    continue
                if loaded.todo:
                    moved = spool.write_remainder(
                        self.fs, self.spool_dir, entry, loaded.wall, loaded.todo
                    )
                    log.info(
                        "%s/%s: partly ingested before a crash; the rest moved to %s",
                        self.spool_dir,
                        entry.name,
                        moved,
                    )
                settled.append(entry.name)
            if settled:
                self.fs.sync_dir(self.spool_dir)  # the moved items are durable first
            # Also with nothing to settle: a removal the crashed owner made may not be
            # durable yet (it restarted without a power cut), and its origins are here.
            self._unlink(settled)
        return len(settled)

    def ingest(self) -> int:
        """Ingest every whole spool file now; return how many items were enqueued."""
        with self._ingest_mu:
            return self._ingest()

    def _ingest(self) -> int:
        # Checked at every poll: a spool/ swapped for a link to a directory others
        # can write would hand their files to this owner to run.
        if not own_dir(self.fs, self.spool_dir, self.target.owner_uid, create=False):
            return 0
        if self.ingest_lock.unsettled is not None:
            with self.ingest_lock:
                if not self._unlink([]):  # retried first; nothing new until it holds
                    return 0
        names = self.fs.listdir(self.spool_dir)
        self._sweep_tmp(names)
        added = 0
        batch: list[_File] = []
        size = count = 0
        for entry in spool.live_entries(names):
            if self.stop.is_set():
                break
            if entry.name in self._stuck:
                continue
            loaded = self._load(entry)
            if loaded is None:
                continue
            batch.append(loaded)
            size += entry.size
            count += len(loaded.todo)
            if size >= self.batch_bytes or count >= self.batch_items:
                n, go_on = self._flush(batch)
                added += n
                if not go_on:
                    return added
                batch, size, count = [], 0, 0
        if batch:
            added += self._flush(batch)[0]
        return added

    def _sweep_tmp(self, names: list[str]) -> None:
        """Remove the .tmp files of producers that died mid-write (older than a minute)."""
        now = time.time_ns()
        for name in names:
            started = spool.tmp_time_ns(name)
            if started is not None and now - started > spool.TMP_MAX_AGE_NS:
                with contextlib.suppress(FileNotFoundError):
                    self.fs.remove(posixpath.join(self.spool_dir, name))
                    self.counters["tmp_removed"] += 1
                    log.info("%s/%s: removed a producer's unfinished file", self.spool_dir, name)

    def _load(self, entry: spool.Entry) -> _File | None:
        """A spool file's items not yet in the log; None if gone or damaged (set aside)."""
        name = entry.name
        path = posixpath.join(self.spool_dir, name)
        try:
            check_owner(self.fs, path, self.target.owner_uid)
            spooled = spool.read(self.fs, path)
        except FileNotFoundError:
            return None
        except (CorruptionError, UnsafeDirectoryError, OSError) as exc:
            self.counters["damaged_files"] += 1
            log.error("%s: cannot ingest (%s); set aside as %s", path, exc, name + spool.DAMAGED)
            self._set_aside(name, spool.DAMAGED, str(exc))
            return None
        seen = self.target.replayed_origins
        todo = [
            (i, item)
            for i, item in enumerate(spooled.items)
            if spool.origin(entry.stem, i) not in seen
        ]
        return _File(name, entry.stem, spooled.wall, todo)

    def _flush(self, batch: list[_File]) -> tuple[int, bool]:
        """Enqueue a batch of files durably, then unlink them; (items added, go on?)."""
        with self.ingest_lock:
            try:
                added = self._enqueue(batch)
                done, go_on = batch, True
            except (ClosedError, LogFailedError):
                return 0, False
            except WalqError:
                added, done, go_on = self._one_by_one(batch)
            if done and not self._unlink([f.name for f in done]):
                go_on = False
        self.counters["ingested_jobs"] += added
        self.counters["ingested_files"] += len(done)
        if done and self._waiting_logged:
            self._waiting_logged = False
            log.info("%s: ingesting again", self.spool_dir)
        return added, go_on

    def _one_by_one(self, batch: list[_File]) -> tuple[int, list[_File], bool]:
        """After a batch failed: each file alone; set aside those the queue refuses."""
        added = 0
        done: list[_File] = []
        for f in batch:
            try:
                added += self._enqueue([f])
            except (ClosedError, LogFailedError):
                return added, done, False
            except QueueFull as exc:
                if not self._waiting_logged:
                    self._waiting_logged = True
                    log.warning("%s: ingestion waits: %s", self.spool_dir, exc)
                return added, done, False
            except WalqError as exc:
                self.counters["rejected_files"] += 1
                log.error(
                    "%s/%s: refused by the queue (%s); set aside as %s",
                    self.spool_dir,
                    f.name,
                    exc,
                    f.name + spool.REJECTED,
                )
                self._set_aside(f.name, spool.REJECTED, f"refused by the queue: {exc}")
                continue
            done.append(f)
        return added, done, True

    def _enqueue(self, files: list[_File]) -> int:
        now = time.time()
        items = []
        for f in files:
            for i, item in f.todo:
                delay = max(0.0, f.wall + item.delay - now) if item.delay else 0.0
                items.append(item.for_queue(delay=delay, origin=spool.origin(f.stem, i)))
        if items:
            self.target.enqueue_many(items, sync=True)
        return len(items)

    def _unlink(self, names: list[str]) -> bool:
        """Remove ingested files (and any an earlier call could not) and fsync the spool
        directory (ingest_lock held); whether that is all durable now.

        Until it is, the guard stays unsettled: compaction and checkpoints keep the
        origins that say the files were ingested, and ingestion retries this first.
        """
        guard = self.ingest_lock
        guard.to_remove.update(names)
        why = f"{self.spool_dir}: the removal of ingested spool files is not fsynced yet"
        for name in sorted(guard.to_remove):
            path = posixpath.join(self.spool_dir, name)
            try:
                self.fs.remove(path)
            except FileNotFoundError:
                pass
            except OSError as exc:
                why = f"{path}: ingested, but removing it failed: {exc}"
                continue
            guard.to_remove.discard(name)
        guard.unsettled = why
        if not guard.to_remove:
            try:
                self.fs.sync_dir(self.spool_dir)
            except OSError as exc:
                guard.unsettled = (
                    f"{self.spool_dir}: fsync after removing ingested files failed: {exc}"
                )
            else:
                guard.unsettled = None
        if guard.unsettled is not None and guard.unsettled != self._reported:
            log.error("%s", guard.unsettled)  # once per cause: each poll retries
        self._reported = guard.unsettled
        return guard.unsettled is None

    def _set_aside(self, name: str, suffix: str, reason: str) -> None:
        path = posixpath.join(self.spool_dir, name)
        try:
            spool.set_aside(self.fs, self.spool_dir, name, suffix, reason)
        except OSError as exc:
            log.error("%s: cannot set it aside (%s); skipping it", path, exc)
            self._stuck.add(name)
