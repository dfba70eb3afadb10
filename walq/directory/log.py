"""The segmented log: appends, group commit, sealing and compaction installs.

Appends go to an in-memory buffer under a short lock. Under sync="always" a
caller then waits in `commit`: the first waiter becomes the leader, writes
everything buffered so far in one pwrite and fdatasyncs once, and every
caller whose record was in that batch returns -- so N concurrent producers
share one fsync. Under "interval" and "never" the buffer reaches the kernel
before `append` returns (a process crash loses nothing), and fsyncs happen
every `sync_interval` seconds or only when segments are sealed and on close.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import posixpath
import threading
import time
from _thread import allocate_lock as _allocate_lock
from collections.abc import Callable, Sequence
from typing import Any

from walq import forks
from walq.core import framing
from walq.core.format import (
    MAX_BODY,
    MAX_SEGMENT_SIZE,
    MAX_SEQ,
    RECORD_HEADER_SIZE,
    SEGMENT_HEADER_SIZE,
    SegmentHeader,
    segment_name,
)
from walq.core.state import Loc
from walq.directory.fs import FileSystem, file_size
from walq.directory.recovery import CUT_DIR, Damage, Recovery, Resume, Sink
from walq.directory.segment import Segment, remove_segments, replace_segment
from walq.directory.spare import Spare
from walq.errors import (
    ArgumentError,
    ClosedError,
    LockedError,
    LogFailedError,
)

__all__ = ["CUT_DIR", "SYNC_MODES", "Damage", "Log"]  # CUT_DIR, Damage: recovery's

log = logging.getLogger("walq.log")

SYNC_MODES = ("always", "interval", "never")
SLOW_SYNC = 1.0  # seconds: an fdatasync slower than this is logged


# The largest record replay accepts (framing refuses a longer body as damage).
_MAX_RECORD = RECORD_HEADER_SIZE + MAX_BODY

# Segments start small and grow with the write rate, up to `segment_size`: an
# idle or small queue holds a few MiB, a busy one keeps large preallocated
# segments (an fdatasync never persists a new file size, and rolls are rare).
# The next segment is sized (a power of two times MIN_SEGMENT) to last at least
# SEGMENT_SECONDS at the rate the active one is filling, but grows by at most
# double (a burst is not a rate) and shrinks by at most half per segment.
MIN_SEGMENT = 1 << 20
SEGMENT_SECONDS = 4.0


class Log:
    """An append-only log of records in numbered segment files in one directory."""

    # How the log is read on open (a seam: walq.testing.plant plants a bug in it).
    recovery_class: type[Recovery] = Recovery
    # How a valid record is told (its checksum test): a seam for a subclass or
    # the `record_check` argument; walq.testing.plant swaps it.
    record_check: framing.RecordCheck = staticmethod(framing.crc_matches)

    def __init__(
        self,
        fs: FileSystem,
        directory: str,
        *,
        segment_size: int,
        sync: str,
        sync_interval: float,
        record_check: framing.RecordCheck | None = None,
    ) -> None:
        if sync not in SYNC_MODES:
            raise ArgumentError(f"sync must be one of {', '.join(SYNC_MODES)}, not {sync!r}")
        if not 4096 <= segment_size <= MAX_SEGMENT_SIZE:
            raise ArgumentError(f"segment_size must be 4096..{MAX_SEGMENT_SIZE} bytes")
        if sync_interval <= 0:
            raise ArgumentError("sync_interval must be positive")
        self.fs = fs
        self.directory = directory
        if record_check is not None:
            self.record_check = record_check
        self.segment_size = segment_size
        self.sync_mode = sync
        self.sync_interval = sync_interval
        self._mu = threading.Lock()
        self._cond = threading.Condition(self._mu)
        self._active: Segment | None = None
        self._sealed: list[Segment] = []
        self._buf: list[bytes] = []
        self._buf_start = 0  # file offset of the first buffered byte
        # A batch a commit's leader has taken from the buffer and may not have
        # written yet: (its file offset, its bytes), or None. See unwritten().
        self._inflight: tuple[int, bytes] | None = None
        self._end = 0  # file offset after the last appended byte
        self._appended = 0  # lsn: bytes appended since open
        self._synced = 0  # lsn up to which everything is durable
        self._seg_lsn = 0  # the lsn that offset SEGMENT_HEADER_SIZE of the active segment has
        self._leader = False
        # [lsn, parked lock, the next parked lock to release, made leader] behind the leader
        self._waiters: list[list[Any]] = []
        self._failed: LogFailedError | None = None
        self._closed = False
        self._syncer: threading.Thread | None = None
        self.on_roll: Callable[[], None] | None = None  # a segment was sealed (the compactor)
        # The active segment is half full: time to prepare the next (the compactor's thread).
        self.on_half: Callable[[], None] | None = None
        # The active segment's size: it rolls when full (see MIN_SEGMENT), and when
        # it was started (monotonic), which tells how fast it fills.
        self._floor = min(MIN_SEGMENT, segment_size)
        self._capacity = self._floor
        self._started = time.monotonic()
        self._half_at = self._capacity // 2
        # The next segment's file, made ahead of the roll by `prepare_spare`.
        self.spare = Spare(fs, directory, segment_size)
        # Each fdatasync's duration (metrics); may be called with the lock held.
        self.on_sync: Callable[[float], None] | None = None
        self.fsyncs = 0
        self.sync_seconds = 0.0
        # Checks that this process still owns the directory (the lock's verify):
        # called once per commit batch and at each roll; LockedError fails the log.
        self.guard: Callable[[], None] | None = None
        self._forked = False  # set in a fork() child: it may not write (walq.forks)
        self._pid = forks.track(self)

    def _after_fork_in_child(self) -> None:
        self._forked = True
        self._mu = threading.Lock()  # a parent's thread may have held them at the fork
        self._cond = threading.Condition(self._mu)
        self.spare.after_fork_in_child()

    def _check_process(self) -> None:
        """ForkedError unless this process opened the log (a syscall: not per record)."""
        if self._forked or os.getpid() != self._pid:
            self._forked = True
            raise forks.error(self.directory, self._pid)
        if self.guard is not None:
            try:
                self.guard()
            except (LockedError, OSError) as exc:
                self._fail(f"{exc}: stopping writes so that two owners never write one log")
        # The uid that cut/ must have (walq.directory.fs.queue_dir_owner); None: not checked.
        self.owner_uid: int | None = None

    # -- recovery --------------------------------------------------------------

    def recover(
        self,
        *,
        skip_damage: bool,
        sink: Sink,
        load: Sink | None = None,
        resume: Resume | None = None,
    ) -> list[Damage]:
        """Replay every segment into `sink` (walq.directory.recovery); return the damage handled.

        Leaves the newest segment open for appending (creating segment 1 in
        an empty directory).
        """
        fs, d = self.fs, self.directory
        recovery = self.recovery_class(fs, d, getattr(self, "owner_uid", None), self.record_check)
        found = recovery.run(skip_damage=skip_damage, sink=sink, load=load, resume=resume)
        opened = found.segments
        if opened:
            self._end = found.end
            # lsn 0 is the recovered end, so the next record's watermark says
            # everything before it is durable (it is: see the sync below).
            self._seg_lsn = SEGMENT_HEADER_SIZE - found.end
            *sealed, active = opened
            self._sealed = sealed
            for s in self._sealed:
                s.close()  # sealed segments are read through the reader's handles
            self._active = active
            try:
                size = active.file.size()
            except OSError:
                size = self.segment_size
            self._capacity = max(self._floor, min(self.segment_size, size))
            self._half_at = self._capacity // 2
            # The previous owner's last writes may have reached the kernel but not
            # the disk -- or, if its fsync failed, may sit in the page cache marked
            # clean, so that a plain fsync now would "succeed" without writing them.
            # Rewrite what no watermark vouches for, then sync: only then build on it.
            active.file.pwrite(found.unvouched, found.vouched)
            active.file.sync()
        else:
            self._active = Segment.create(fs, d, SegmentHeader(1, 1), self._capacity)
            self._end = SEGMENT_HEADER_SIZE
        self._buf_start = self._end
        # (A number past MAX_SEQ is never reached: that file is simply never read.)
        past = max([s for s in found.left_out if self._active.seq < s < MAX_SEQ], default=None)
        if self._active.seq in found.rebuilt or past is not None:
            # Nothing is appended behind a damaged header (it stays as found, for
            # repair), nor under the number of a segment that was left out.
            with self._mu:
                self._roll(None if past is None else past + 1)
        if self.sync_mode == "interval":
            self._syncer = threading.Thread(target=self._sync_loop, name="walq-sync", daemon=True)
            self._syncer.start()
        return found.damage

    # -- appending ---------------------------------------------------------------

    @property
    def active_seq(self) -> int:
        assert self._active is not None
        return self._active.seq

    @property
    def sealed_seqs(self) -> list[int]:
        return [s.seq for s in self._sealed]

    def append(self, records: Sequence[tuple[int, bytes]]) -> tuple[list[Loc], int]:
        """Append records; return where each went and the lsn to `commit` for all of them."""
        locs: list[Loc] = []
        header = framing.header
        with self._mu:
            self._check_open()
            assert self._active is not None
            buf = self._buf
            seq = self._active.seq
            limit = self._capacity
            # Locals for the loop; written back before a roll and at the end. The
            # watermark only moves under this lock, so it holds for the whole call.
            end = start = self._end
            synced = SEGMENT_HEADER_SIZE + max(0, self._synced - self._seg_lsn)
            for rtype, body in records:
                size = RECORD_HEADER_SIZE + len(body)
                if end + size > limit or size > _MAX_RECORD:
                    if size > _MAX_RECORD:
                        # Replay would read it as damage: refuse it (callers keep
                        # their records smaller; this is the last line).
                        self._end = end  # the records before this one stay appended
                        self._appended += end - start
                        raise ArgumentError(
                            f"a record of {size} bytes exceeds the largest a log holds "
                            f"({_MAX_RECORD} bytes)"
                        )
                    if end > SEGMENT_HEADER_SIZE:
                        self._end = end
                        self._appended += end - start
                        while self._end + size > limit and self._end > SEGMENT_HEADER_SIZE:
                            if self._leader:
                                self._cond.wait()
                                self._check_open()
                                continue
                            self._roll()
                            limit = self._capacity
                        buf = self._buf
                        seq = self._active.seq
                        end = start = self._end
                        synced = SEGMENT_HEADER_SIZE + max(0, self._synced - self._seg_lsn)
                    if end + size > MAX_SEGMENT_SIZE:
                        self._end = end  # the records before this one stay appended
                        self._appended += end - start
                        raise ArgumentError(f"a record of {size} bytes cannot fit in a segment")
                buf += (header(rtype, body, synced), body)  # joined once, when written
                locs.append(Loc(seq, end, size))
                end += size
            self._end = end
            self._appended += end - start
            if self._end >= self._half_at:
                self._half_at = MAX_SEGMENT_SIZE + 1  # once per segment (spare_wanted reads it)
                if self.on_half is not None:
                    self.on_half()
            if self.sync_mode != "always":
                # Reach the kernel before returning, so a process crash loses nothing.
                self._write_buffer()
            return locs, self._appended

    def _write_buffer(self) -> None:
        """Write buffered bytes to the active segment (called with the lock held)."""
        if not self._buf:
            return
        assert self._active is not None
        data = b"".join(self._buf)
        try:
            self._active.file.pwrite(data, self._buf_start)
        except OSError as exc:
            self._fail(f"write to {self._active.path} failed: {exc}")
        self._buf = []
        self._buf_start += len(data)

    def _roll(self, seq: int | None = None) -> None:
        """Seal the active segment (flush, fsync) and start the next (lock held, no leader).

        The next is numbered `seq`, or the active one's number + 1.
        """
        assert self._active is not None
        self._check_process()
        old = self._active
        self._write_buffer()
        try:
            old.file.truncate(self._end)  # give back the unused preallocated tail
        except OSError as exc:
            self._fail(f"truncating {old.path} failed: {exc}")
        self._timed_sync(old)
        self._synced = self._appended
        seq = old.seq + 1 if seq is None else seq
        header = SegmentHeader(seq, seq)
        size = self._next_capacity()
        try:
            new = self.spare.next_segment(header, size)
            size = new.file.size()  # a spare made earlier may have another size
        except OSError as exc:
            self._fail(f"creating segment {header.seq} in {self.directory} failed: {exc}")
        old.close()
        self._sealed.append(old)
        self._active = new
        self._end = self._buf_start = SEGMENT_HEADER_SIZE
        self._seg_lsn = self._appended
        self._capacity = max(self._floor, min(self.segment_size, size))
        self._started = time.monotonic()
        self._half_at = self._capacity // 2
        if self.on_roll is not None:
            self.on_roll()

    def _next_capacity(self) -> int:
        """The size for the next segment (lock held): what lasts SEGMENT_SECONDS at the
        rate the active one is filling, from half to twice the active one's size,
        within MIN_SEGMENT..segment_size (see SEGMENT_SECONDS)."""
        elapsed = max(1e-3, time.monotonic() - self._started)
        want = (self._end - SEGMENT_HEADER_SIZE) / elapsed * SEGMENT_SECONDS
        size = self._floor
        while size < want and size < self.segment_size:
            size *= 2
        size = min(max(size, self._capacity // 2), 2 * self._capacity)
        return max(self._floor, min(self.segment_size, size))

    def commit(self, lsn: int) -> None:
        """Return once everything up to `lsn` is durable (group commit).

        The first caller to find no leader becomes one: it writes the whole
        buffer and fdatasyncs once. Callers arriving meanwhile park on a
        private lock. The leader wakes those its sync covered as a chain, each
        woken caller waking the next (so they take the interpreter lock one
        after another, not all at once), and at the end of the chain one of
        the rest, to whom it hands the leadership: by the time that one takes
        the buffer, the woken callers have appended their next records to it.
        """
        while True:
            with self._mu:
                if self._synced >= lsn:
                    return
                if self._failed is not None:
                    raise self._failed
                if self._forked:  # the leader it would wait for is not in this process
                    raise forks.error(self.directory, self._pid)
                if not self._leader:
                    self._check_process()  # once per batch: what the fsync is for
                    self._leader = True
                    batch = self._take_batch()
                    break
                gate = _allocate_lock()
                gate.acquire()
                waiter: list[Any] = [lsn, gate, None, False]
                self._waiters.append(waiter)
            gate.acquire()  # released when our lsn is durable, or when we are to lead
            following = waiter[2]
            if following is not None:
                following.release()  # pass the wake-up along the chain
            if waiter[3]:  # the leadership was handed to us
                with self._mu:
                    batch = self._take_batch()
                break
        seg, data, start, target = batch
        try:
            if data:
                try:
                    seg.file.pwrite(data, start)
                except OSError as exc:
                    raise self._fail_unlocked(f"write to {seg.path} failed: {exc}") from exc
            self._timed_sync(seg)
        finally:
            self._hand_over(target)
        if self._failed is not None:
            raise self._failed

    def _take_batch(self) -> tuple[Segment, bytes, int, int]:
        """The leader takes the buffer (lock held): (segment, bytes, offset, lsn after them)."""
        assert self._active is not None
        data = b"".join(self._buf)
        start = self._buf_start
        self._buf = []
        self._buf_start += len(data)
        self._inflight = (start, data)
        return self._active, data, start, self._appended

    def _hand_over(self, target: int) -> None:
        """End a leader's turn: wake the callers it made durable, then the next leader."""
        with self._mu:
            self._inflight = None
            if self._failed is None:
                self._synced = max(self._synced, target)
            done = self._synced
            failed = self._failed is not None
            wake = [w for w in self._waiters if w[0] <= done or failed]
            rest = [w for w in self._waiters if w[0] > done and not failed]
            if rest:
                heir = rest.pop(0)
                heir[3] = True  # stays leader-held: nobody else may start a batch meanwhile
                wake.append(heir)
            else:
                self._leader = False
            self._waiters = rest
            for w, following in itertools.pairwise(wake):
                w[2] = following[1]
            self._cond.notify_all()
        if wake:
            wake[0][1].release()

    def flush(self) -> None:
        """Make every appended record durable now, whatever the sync mode."""
        with self._mu:
            self._check_open()  # a failed log says so even with nothing new to sync
            lsn = self._appended
        self.commit(lsn)

    def unwritten(self, seq: int, offset: int, size: int) -> bytes | None:
        """The `size` bytes at `offset` of segment `seq` if they are not in the file yet.

        Appended records wait in the buffer for a commit, and a commit's leader
        writes its batch outside the lock: a reader takes those bytes from
        memory rather than flushing (an fsync) or waiting. None: read the file.
        (A record is never split between the buffer and a batch.)
        """
        with self._mu:
            if self._active is None or seq != self._active.seq:
                return None
            if offset >= self._buf_start:
                at = offset - self._buf_start
                return b"".join(self._buf)[at : at + size]
            if self._inflight is not None and offset >= self._inflight[0]:
                at = offset - self._inflight[0]
                return self._inflight[1][at : at + size]
            return None

    def memory_tail(self, seq: int) -> tuple[int, bytes] | None:
        """(file offset, bytes) of segment `seq` held in memory and maybe not in the file yet.

        The batch a commit's leader is writing, then the buffer: every byte
        from that offset on. Bytes before it are in the file. None: `seq` is
        not the active segment, or nothing is held (read the file). One call
        serves a whole run of records (`unwritten` serves one).
        """
        with self._mu:
            if self._active is None or seq != self._active.seq:
                return None
            inflight = self._inflight
            if inflight is None:
                if not self._buf:
                    return None
                return self._buf_start, b"".join(self._buf)
            return inflight[0], b"".join((inflight[1], *self._buf))

    def _timed_sync(self, seg: Segment) -> None:
        started = time.monotonic()
        try:
            seg.file.sync()
        except OSError as exc:
            raise self._fail_unlocked(f"fsync of {seg.path} failed: {exc}") from exc
        elapsed = time.monotonic() - started
        self.fsyncs += 1
        self.sync_seconds += elapsed
        if self.on_sync is not None:
            self.on_sync(elapsed)
        if elapsed > SLOW_SYNC:
            log.warning("fdatasync of %s took %.2f s", seg.path, elapsed)

    def _fail(self, message: str) -> None:
        """Record a write failure (lock held) and raise it: the log takes no more writes."""
        raise self._fail_unlocked(message)

    def _fail_unlocked(self, message: str) -> LogFailedError:
        if self._failed is None:
            self._failed = LogFailedError(message + "; the queue accepts no more writes: reopen it")
            log.error("%s", message)
        return self._failed

    def _check_open(self) -> None:
        if self._forked:
            raise forks.error(self.directory, self._pid)
        if self._closed:
            raise ClosedError(f"{self.directory}: the queue is closed")
        if self._failed is not None:
            raise self._failed

    @property
    def failed(self) -> LogFailedError | None:
        return self._failed

    def _sync_loop(self) -> None:
        while True:
            time.sleep(self.sync_interval)
            with self._mu:
                if self._closed or self._failed is not None:
                    return
                lsn = self._appended
            try:
                self.commit(lsn)
            except (LogFailedError, ClosedError):
                return

    # -- the spare segment ------------------------------------------------------------

    def spare_wanted(self) -> bool:
        """Whether the active segment is half full and its successor not yet made."""
        with self._mu:
            if self._closed or self._failed is not None or self._active is None:
                return False
            passed_half = self._half_at > MAX_SEGMENT_SIZE  # append disarmed it
            seq = self._active.seq + 1
        spare = self.spare.segment
        return passed_half and (spare is None or spare.seq != seq)

    def prepare_spare(self) -> bool:
        """Make the next segment's file now, so the coming roll only renames it.

        Called from a background thread (the compactor's): the zeros are
        written and fsynced with no lock of the log held, so appends and
        commits go on. Returns whether it made one.
        """
        with self._mu:
            if self._closed or self._failed is not None or self._active is None:
                return False
            header = SegmentHeader(self._active.seq + 1, self._active.seq + 1)
            size = self._next_capacity()
        return self.spare.prepare(header, closed=lambda: self._closed, size=size)

    @property
    def spare_error(self) -> str | None:
        """Why the last spare segment could not be made (None: it was, or none was tried)."""
        return self.spare.error

    # -- compaction support ---------------------------------------------------------------

    def seal(self) -> bool:
        """Seal the active segment now (if it holds any record) and start a new one."""
        with self._mu:
            self._check_open()
            while self._leader:
                self._cond.wait()
                self._check_open()
            if self._end <= SEGMENT_HEADER_SIZE:
                return False
            self._roll()
            return True

    def position(self) -> tuple[int, int, list[Segment]]:
        """(active segment, offset after the last appended record, every live segment)."""
        with self._mu:
            self._check_open()
            assert self._active is not None
            return self._active.seq, self._end, [*self._sealed, self._active]

    def appended_bytes(self) -> int:
        """Bytes appended since open (a rough measure of how far the log has grown)."""
        with self._mu:
            return self._appended

    def sealed(self) -> list[Segment]:
        """The sealed segments, oldest first (their files are closed)."""
        with self._mu:
            return list(self._sealed)

    def install(self, tmp_path: str, header: SegmentHeader) -> list[str] | None:
        """Put a compacted segment in place of sealed segments header.first..header.seq.

        The temporary file must already be complete and fsynced. The rename
        replaces segment `seq` atomically; once the directory is synced the
        older segments it covers are superseded (recovery deletes them if this
        process dies first). Returns those older segments' paths, for
        `remove_superseded` -- or None if the directory fsync failed, when
        they must stay. No lock is held across the file-system calls, so
        appends go on meanwhile.
        """
        d = self.directory
        final = posixpath.join(d, segment_name(header.seq))
        with self._mu:
            self._check_open()
            covered = [s for s in self._sealed if header.first <= s.seq <= header.seq]
        if not covered or covered[-1].seq != header.seq:
            raise ArgumentError(f"segment {header.seq} is not a sealed segment of {d}")
        durable = replace_segment(self.fs, tmp_path, final)
        with self._mu:
            rest = [s for s in self._sealed if s.seq > header.seq]
            self._sealed = [Segment(final, header, covered[-1].file), *rest]
        return [s.path for s in covered[:-1]] if durable else None

    def remove_superseded(self, paths: list[str]) -> None:
        """Delete segments a compacted one supersedes, then sync the directory.

        A failure leaves them for the next open to delete (they are superseded).
        """
        remove_segments(self.fs, self.directory, paths)

    def segment_bytes(self) -> tuple[int, int]:
        """(bytes used in sealed segments, bytes appended to the active one)."""
        with self._mu:
            sealed = 0
            for seg in self._sealed:
                with contextlib.suppress(OSError):
                    sealed += file_size(self.fs, seg.path)
            return sealed, self._end

    # -- reading and closing ---------------------------------------------------------

    def segment_paths(self) -> list[str]:
        """Paths of every live segment, oldest first."""
        segs = [*self._sealed, *([self._active] if self._active else [])]
        return [s.path for s in segs]

    def close(self) -> None:
        """Make everything durable and close the files (idempotent).

        In a fork() child it only closes the child's descriptors: the parent's
        buffer, spare segment and files are the parent's to flush and remove.
        """
        if self._forked or os.getpid() != self._pid:
            self._forked = self._closed = True
            for seg in (self._active, self.spare.segment):
                if seg is not None:
                    seg.close()
            return
        if self._closed:
            return
        try:
            if self._failed is None:
                self.flush()
        finally:
            with self._mu:
                self._closed = True
                self._cond.notify_all()
            if self._syncer is not None and self._syncer is not threading.current_thread():
                self._syncer.join(timeout=5)
            if self._active is not None:
                self._active.close()
            self.spare.close()
