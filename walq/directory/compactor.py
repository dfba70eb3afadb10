"""The compactor: rewrite sealed segments as one holding only what is still live.

A compaction copies every live job whose record sits in a sealed segment -- its
payload, attempts, state and last error -- into `<seq>.wal.tmp` as `job`
records, plus a `meta` record (the id counter, cancelled/purged markers); it
fsyncs the file, renames it over the newest sealed segment, fsyncs the
directory, then deletes the older segments it covers and fsyncs again. The
active segment is never rewritten.

Why this is safe: events are absolute, so replaying the events that follow
the snapshot onto it changes nothing they had already changed. The snapshot
is taken in small chunks under the queue's lock (producers wait at most one
chunk), and the log is fsynced after the last chunk and before the rename, so
the snapshot never reflects an event that a crash could still take back.
A crash at any step leaves either the old segments or the new one (recovery
deletes `.tmp` files and segments a compacted one supersedes).
"""

from __future__ import annotations

import logging
import posixpath
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

import attrs

from walq.core import events as ev
from walq.core import format as fmt
from walq.core import framing
from walq.core.jobspec import clip_error
from walq.core.state import DEAD, SEQ_BITS, Loc
from walq.directory.checkpoint import Checkpointer, Written
from walq.directory.fs import File, FileSystem
from walq.directory.readers import Readers, RecordSource
from walq.directory.segment import Segment
from walq.directory.spool_guard import SpoolGuard
from walq.errors import ClosedError, CompactionError, CorruptionError, WalqError

log = logging.getLogger("walq.compactor")

CHUNK = 100  # jobs snapshotted per hold of the queue's lock (a few hundred microseconds)
WRITE_BUFFER = 256 << 10
SYNC_EVERY = 512 << 10
RELOCATE_CHUNK = 200
YIELD_EVERY = 4  # jobs copied between two yields of the interpreter lock (~50 µs)
# Seconds the copy pauses at each yield while the log grows (producers are busy).
# time.sleep(0) releases the interpreter lock, but the copying thread mostly takes
# it straight back before a producer woken from its fsync runs, and the producer
# then waits out a whole switch interval (5 ms): a real sleep hands it over, and
# one longer than a thread's wake-up lets the producer finish its enqueue first.
# benchmarks/compaction.py's latency runs, side by side: enqueue p99 2.5x and
# throughput 0.63x with sleep(0) every 8 jobs; 2.4x and 0.54x with 0.2 ms every 8
# (a noisy hour); 1.4x and 0.85x with this. The price: under steady load a
# compaction copies about 8,000 jobs a second; an idle queue's does not pause.
BUSY_PAUSE = 0.0005


@attrs.frozen
class Snapshot:
    """One live job as a compaction copies it."""

    id: int
    loc: Loc
    error_loc: Loc | None
    dead: bool
    attempts: int
    due_wall: float
    waiting: bool = False  # for the jobs in `after`
    after: tuple[tuple[int, ...], int] | None = None  # (parents, policy) if it has any


class SegmentLog(RecordSource, Protocol):
    """What the compactor does with a queue's log (walq.directory.log.Log)."""

    @property
    def spare_error(self) -> str | None: ...
    def spare_wanted(self) -> bool: ...
    def appended_bytes(self) -> int: ...
    def prepare_spare(self) -> bool: ...
    def sealed(self) -> list[Segment]: ...
    def segment_bytes(self) -> tuple[int, int]: ...
    def flush(self) -> None: ...
    def install(self, tmp_path: str, header: fmt.SegmentHeader) -> list[str] | None: ...
    def remove_superseded(self, paths: list[str]) -> None: ...


class Compactable(Protocol):
    """What the compactor needs of a queue (walq.directory.base.CompactionView).

    Each call takes the queue's lock itself; `ingest_lock` is held while
    choosing the segments to rewrite (no spool ingestion is then half done,
    and none whose file's removal failed is left unsettled: see SpoolGuard).
    """

    @property
    def path(self) -> str:
        """The queue directory."""

    @property
    def fs(self) -> FileSystem:
        """The file system the queue lives on."""

    @property
    def wal(self) -> SegmentLog:
        """The queue's log."""

    @property
    def ingest_lock(self) -> SpoolGuard:
        """Held by spool ingestion from an enqueue until its file's unlink is durable."""

    def sync(self) -> None:
        """Make everything appended so far durable."""

    def live_bytes_upto(self, seq: int) -> int:
        """Bytes of live jobs' records in segments <= `seq`."""

    def live_ids(self) -> list[int]:
        """The ids of every live job, in id order."""

    def snapshot(self, ids: list[int], upto: int) -> list[Snapshot]:
        """The live jobs among `ids` whose record lies in segments <= `upto`."""

    def meta_event(self) -> ev.Meta:
        """The id counter and cancelled/purged markers, as a meta record says them."""

    def results_upto(self, upto: int) -> list[tuple[int, float, Loc]]:
        """(job id, wall time it expires, record) of unexpired results in segments <= `upto`."""

    def relocate_results(self, upto: int, moves: dict[int, Loc]) -> None:
        """Point results at their copies in the compacted segment `upto`."""

    def snapshot_records(self) -> list[tuple[int, bytes]]:
        """The snapshot's records other than the jobs' (the meta record first), as
        (type, body): a compacted segment and a checkpoint both carry them."""

    def generation(self) -> int:
        """The highest compaction generation any location the queue holds carries."""

    def pin_readers(self, upto: int, fresh: int) -> None:
        """Keep the file that the rename over segment `upto` replaces readable; forget any
        handle under Loc.seg `fresh` (the output's: one opened before the rename is stale)."""

    def relocate(self, upto: int, moves: dict[int, tuple[Loc, bool]]) -> None:
        """Point jobs at their records in the compacted segment `upto`."""

    def drop_readers(self, upto: int, keep: int) -> None:
        """Close the handles on files the compaction replaced (but Loc.seg `keep`)."""


@attrs.frozen
class CompactionResult:
    """What one compaction did."""

    segments_in: int
    bytes_in: int
    bytes_out: int
    jobs: int
    seconds: float


@attrs.frozen
class Policy:
    """When the background compactor runs.

    Compact when there is at least one sealed segment and the garbage in the
    sealed segments (bytes not belonging to live jobs) is at least
    `garbage_ratio` of them, or when there are `max_sealed` sealed segments.
    """

    garbage_ratio: float = 0.5
    max_sealed: int = 8
    interval: float = 1.0


BACKOFF_MAX = 60.0  # seconds: the longest wait between retries of a failing background step


@attrs.frozen
class Failing:
    """The background compactor keeps failing: since when (wall clock), why, how often."""

    since: float
    error: str
    failures: int

    def text(self) -> str:
        """`failing since <UTC time>: <reason> (<n> attempts)`, as stats show it."""
        when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.since))
        return f"failing since {when}: {self.error} ({self.failures} attempts)"

    def as_dict(self) -> dict[str, Any]:
        return {
            "state": "failing",
            "since": self.since,
            "error": self.error,
            "failures": self.failures,
            "text": self.text(),
        }


def should_compact(policy: Policy, sealed: int, sealed_bytes: int, live_sealed: int) -> bool:
    """The trigger, as a pure function of the numbers it looks at."""
    if sealed == 0:
        return False
    if sealed >= policy.max_sealed and sealed_bytes > live_sealed * 1.1:
        return True
    garbage = sealed_bytes - live_sealed
    return (
        sealed_bytes > 0
        and garbage >= policy.garbage_ratio * sealed_bytes
        and (sealed > 1 or garbage > fmt.SEGMENT_HEADER_SIZE * 100)
    )


class Compactor:
    """Compacts one queue's sealed segments, on demand or from a background thread."""

    def __init__(self, queue: Compactable, policy: Policy | None = None) -> None:
        self.queue = queue
        self.policy = policy or Policy()
        self._running = threading.Lock()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self.runs = 0  # compactions done
        # The last Loc.seg generation a compacted segment was given (see Loc). Each
        # output takes one above every generation in use and above this, even if a
        # later step of its compaction fails: a generation given twice to the same
        # segment number would leave jobs at offsets into the file it replaced
        # (relocation sees their location as current), read as damage.
        self.generation = 0
        self.last: CompactionResult | None = None
        # Set while background steps fail (a full disk, say); cleared by the next success.
        self.failing: Failing | None = None
        # Writes the queue's checkpoint after the round's compaction, when due.
        self.checkpointer: Checkpointer | None = None

    # -- background --------------------------------------------------------------------

    def start(self) -> None:
        """Run the policy every `interval` seconds in a daemon thread."""
        self._thread = threading.Thread(target=self._loop, name="walq-compactor", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the background thread, waiting for a compaction in progress."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()

    def poke(self) -> None:
        """A segment was sealed or is half full: act now rather than at the next tick."""
        self._wake.set()

    def _loop(self) -> None:
        retry_at = 0.0  # while failing: no attempt before this (monotonic), pokes or not
        while not self._stop.is_set():
            wait = self.policy.interval
            if self.failing is not None:
                wait = max(0.0, retry_at - time.monotonic())
            self._wake.wait(wait)
            self._wake.clear()
            if self._stop.is_set():
                return
            if self.failing is not None and time.monotonic() < retry_at:
                continue
            try:
                self._step()
            except ClosedError:
                return  # the queue closed under a compaction in progress: it was abandoned
            except (WalqError, OSError) as exc:
                # A full disk or an I/O error is usually transient: retry with backoff,
                # and say so in stats and metrics until a step succeeds again.
                backoff = self._failed(exc)
                retry_at = time.monotonic() + backoff
            else:
                if self.failing is not None:
                    log.warning(
                        "%s: background compaction works again after %d failures",
                        self.queue.path,
                        self.failing.failures,
                    )
                    self.failing = None

    def _step(self) -> None:
        """One background round: make the next segment's spare, compact if due."""
        wal = self.queue.wal
        spare_failed = wal.spare_wanted() and not wal.prepare_spare() and wal.spare_error
        if self.due():
            self.compact()  # even when the spare failed: compacting may free the space it lacked
        self.checkpoint(force=False)
        if spare_failed:
            raise CompactionError(f"{self.queue.path}: {wal.spare_error}")

    def checkpoint(self, *, force: bool = True) -> Written | None:
        """Write the queue's checkpoint now (force) or if its policy says it is due.

        Never beside a compaction: the segments a checkpoint names must not
        be replaced between its capture and its rename.
        """
        cp = self.checkpointer
        if cp is None or not (force or cp.due()):
            return None
        with self._running:
            return cp.write()

    def _failed(self, exc: BaseException) -> float:
        """Record a failed background round; return the seconds to wait before the next."""
        error = str(exc) or type(exc).__name__
        was = self.failing
        failures = 1 if was is None else was.failures + 1
        since = time.time() if was is None else was.since
        self.failing = Failing(since, error, failures)
        backoff: float = min(BACKOFF_MAX, self.policy.interval * 2.0 ** min(failures - 1, 16))
        if was is None or was.error != error:
            log.error(
                "%s: background compaction failed (retrying in %.0f s, with backoff): %s",
                self.queue.path,
                backoff,
                error,
            )
        return backoff

    def health(self) -> dict[str, Any] | None:
        """None while the background compactor works; else what `Failing.as_dict` says."""
        failing = self.failing
        return None if failing is None else failing.as_dict()

    def due(self) -> bool:
        """Whether the policy says to compact now."""
        sealed = self.queue.wal.sealed()
        if not sealed:
            return False
        sealed_bytes, _ = self.queue.wal.segment_bytes()
        last = sealed[-1].seq
        live = self.queue.live_bytes_upto(last)
        return should_compact(self.policy, len(sealed), sealed_bytes, live)

    # -- one compaction ------------------------------------------------------------------

    def compact(self, progress: Callable[[int, int], None] | None = None) -> CompactionResult:
        """Compact every sealed segment now; `progress(done, total)` is called per chunk."""
        with self._running:
            started = time.monotonic()
            q = self.queue
            # No spool ingestion is half done (enqueued, unlink not yet durable)
            # in what we choose: we must not drop its enqueue record's origin.
            with q.ingest_lock:
                q.ingest_lock.check("compaction")
                sealed = q.wal.sealed()
            if not sealed:
                return CompactionResult(0, 0, 0, 0, 0.0)
            # The output starts the log: it covers from segment 1 (docs/FORMAT.md), which
            # also accepts the loss of segments that recovery="skip" found missing.
            header = fmt.SegmentHeader(seq=sealed[-1].seq, first=1)
            bytes_in, _ = q.wal.segment_bytes()
            tmp = posixpath.join(q.path, fmt.segment_name(header.seq)) + ".tmp"
            # The output's records get a Loc.seg of their own (see Loc): the old
            # segment under the same number stays readable until all jobs move.
            generation = max(self.generation, q.generation()) + 1
            out = _Writer(q.fs, tmp, header, header.seq | (generation << SEQ_BITS))
            readers = Readers(q.fs, q.path, q.wal)
            try:
                jobs = self._copy_live(header.seq, out, readers, progress)
                self._copy_results(header.seq, out, readers)
                for rtype, body in q.snapshot_records():
                    out.add(rtype, body)
                out.finish()
            except OSError as exc:
                out.abandon()
                raise CompactionError(
                    f"{tmp}: writing the compacted segment failed: {exc}"
                ) from exc
            except BaseException:
                out.abandon()
                raise
            finally:
                readers.close()
            # Everything the snapshot reflects must be durable before it replaces
            # the segments holding the events it summarises.
            q.sync()
            # Readers keep the old files open across the swap, so a claim reading
            # a payload between the rename and the relocation still reads it right.
            q.pin_readers(header.seq, out.seg_id)
            self.generation = generation  # taken for good from here on, whatever fails next
            if self.checkpointer is not None:
                self.checkpointer.outdated()  # its marks of the replaced segments are stale
            old = q.wal.install(tmp, header)
            # Move the jobs over a chunk at a time, so producers never wait long.
            moves = list(out.moves.items())
            for start in range(0, len(moves), RELOCATE_CHUNK):
                q.relocate(header.seq, dict(moves[start : start + RELOCATE_CHUNK]))
            q.relocate_results(header.seq, out.result_moves)
            q.drop_readers(header.seq, keep=out.seg_id)
            if old is None:
                raise CompactionError(
                    f"{q.path}: compacted, but the directory fsync failed: the replaced "
                    "segments are kept until the next open sorts them out"
                )
            q.wal.remove_superseded(old)
            result = CompactionResult(
                segments_in=len(sealed),
                bytes_in=bytes_in,
                bytes_out=out.offset,
                jobs=jobs,
                seconds=time.monotonic() - started,
            )
            self.runs += 1
            self.last = result
            log.info(
                "%s: compacted %d segments (%d bytes) into %d bytes, %d live jobs, %.3f s",
                q.path, result.segments_in, result.bytes_in, result.bytes_out, jobs,
                result.seconds,
            )  # fmt: skip
            return result

    def _copy_live(
        self,
        upto: int,
        out: _Writer,
        readers: Readers,
        progress: Callable[[int, int], None] | None,
    ) -> int:
        q = self.queue
        ids = q.live_ids()
        copied = 0
        grown = q.wal.appended_bytes()
        for start in range(0, len(ids), CHUNK):
            chunk = q.snapshot(ids[start : start + CHUNK], upto)
            # One pread per run of adjacent records (jobs enqueued together lie together).
            records = readers.read_many([snap.loc for snap in chunk])
            for snap, record in zip(chunk, records, strict=True):
                if isinstance(record, CorruptionError):
                    raise record
                error = ""
                if snap.error_loc is not None:
                    fail = ev.decode(*_rt(readers.read(snap.error_loc)))
                    error = fail.error if isinstance(fail, ev.Fail | ev.Job) else ""
                    error = clip_error(error)  # one written before errors were bounded
                state = DEAD if snap.dead else ev.WAITING if snap.waiting else ev.PENDING
                body = None
                if snap.after is None:
                    # Most live jobs: their enqueue or job record, the payload copied as is.
                    try:
                        body = ev.compacted_job(
                            record.rtype, record.body, snap.id, due=snap.due_wall, state=state,
                            attempts=snap.attempts, error=error,
                        )  # fmt: skip
                    except ev.BadEvent as exc:
                        raise CorruptionError(
                            readers.path(snap.loc.seg), snap.loc.offset, str(exc)
                        ) from None
                if body is not None:
                    out.add(fmt.JOB, body, job_id=snap.id, keep_error=snap.dead)
                else:
                    kept = self._kept(snap, record, state, error, readers)
                    out.add(kept.rtype, kept.encode(), job_id=snap.id, keep_error=snap.dead)
                copied += 1
                if copied % YIELD_EVERY == 0:
                    # Let the producers' threads have the interpreter (see BUSY_PAUSE).
                    was, grown = grown, q.wal.appended_bytes()
                    time.sleep(BUSY_PAUSE if grown != was else 0)
            if progress is not None:
                progress(min(start + CHUNK, len(ids)), len(ids))
        return copied

    @staticmethod
    def _kept(
        snap: Snapshot, record: framing.Record, state: int, error: str, readers: Readers
    ) -> ev.Job | ev.After:
        """The job record (wrapped in its `after` record if it has parents) a compaction
        writes for a job with parents, or whose record is neither a plain enqueue nor a
        job record (both decoded: the fast path `ev.compacted_job` copies the others)."""
        e = ev.job_event(ev.decode(record.rtype, record.body), snap.id)
        if e is None:
            raise CorruptionError(
                readers.path(snap.loc.seg), snap.loc.offset, "job record is not a job"
            )
        job = ev.Job(
            id=snap.id, task=e.task, payload=e.payload, kind=e.kind, key=e.key,
            priority=e.priority, max_attempts=e.max_attempts, due=snap.due_wall,
            created=e.created, state=state, attempts=snap.attempts, error=error,
        )  # fmt: skip
        if snap.after is not None:
            return ev.After(parents=snap.after[0], policy=snap.after[1], job=job)
        return job

    def _copy_results(self, upto: int, out: _Writer, readers: Readers) -> None:
        """Copy every unexpired result recorded in segments <= `upto` (a finish record each)."""
        for jid, until, loc in self.queue.results_upto(upto):
            e = ev.decode(*_rt(readers.read(loc)))
            if not isinstance(e, ev.Finish):
                raise CorruptionError(readers.path(loc.seg), loc.offset, "result is not a finish")
            kept = ev.Finish(id=jid, keep_until=until, result_kind=e.result_kind, result=e.result)
            at = out.offset + len(out.buf)
            out.add(kept.rtype, kept.encode())
            out.result_moves[jid] = Loc(out.seg_id, at, out.offset + len(out.buf) - at)


def _rt(record: framing.Record) -> tuple[int, bytes]:
    return record.rtype, record.body


class _Writer:
    """Builds the compacted segment in a temporary file; remembers where each job went."""

    def __init__(self, fs: Any, path: str, header: fmt.SegmentHeader, seg_id: int) -> None:
        self.fs = fs
        self.path = path
        self.header = header
        self.seg_id = seg_id
        try:
            if fs.exists(path):
                fs.remove(path)
            self.file: File = fs.open(path, create=True)
        except OSError as exc:
            raise CompactionError(f"{path}: cannot create the compacted segment: {exc}") from exc
        self.offset = 0
        self.synced = 0
        self.buf = bytearray(header.encode())
        self.moves: dict[int, tuple[Loc, bool]] = {}
        self.result_moves: dict[int, Loc] = {}

    def add(self, rtype: int, body: bytes, *, job_id: int = 0, keep_error: bool = False) -> None:
        at = self.offset + len(self.buf)
        # The file is fsynced whole before it becomes a segment, so each record
        # may claim everything before it as synced.
        data = framing.encode(rtype, body, at)
        self.buf += data
        if job_id:
            self.moves[job_id] = (Loc(self.seg_id, at, len(data)), keep_error)
        if len(self.buf) >= WRITE_BUFFER:
            self._flush()

    def _flush(self) -> None:
        self.file.pwrite(bytes(self.buf), self.offset)
        self.offset += len(self.buf)
        self.buf = bytearray()
        if self.offset - self.synced >= SYNC_EVERY:
            # Sync as we go: one big fsync at the end would hold up the log's
            # small fdatasyncs behind it in the file system's journal.
            self.file.sync()
            self.synced = self.offset

    def finish(self) -> None:
        self._flush()
        self.file.sync()
        self.file.close()

    def abandon(self) -> None:
        try:
            self.file.close()
            if self.fs.exists(self.path):
                self.fs.remove(self.path)
        except OSError:
            pass  # a leftover .tmp is removed on the next open
