"""The checkpoint file of a directory queue: written in the background, trusted only if it agrees.

Opening a queue replays its whole log; with a checkpoint (walq.core.checkpoint)
it restores the index as of a log position and replays only what follows.
The file is replaced atomically (written as `checkpoint.tmp`, fsynced,
renamed, the directory fsynced) and only after the log is fsynced up to
the position it covers. On open it is used only if its checksums hold and
the segments it names are still there, unchanged (their headers and the
checksums of the bytes it covers); anything else -- damage, a stale file a
compaction outran, another queue's file -- is logged and ignored, and the
whole log is replayed as if there were none. Deleting it is always safe.
"""

from __future__ import annotations

import contextlib
import logging
import posixpath
import time
from collections.abc import Callable, Sequence
from typing import Any

import attrs
from crc32c import crc32c

from walq.core import checkpoint as ckpt
from walq.core import format as fmt
from walq.core.state import Now, QueueState
from walq.directory.fs import FileSystem
from walq.directory.recovery import Sink
from walq.directory.segment import TMP_SUFFIX, Segment
from walq.errors import CorruptionError

log = logging.getLogger("walq.checkpoint")

FILE_NAME = ckpt.FILE_NAME
TMP_NAME = FILE_NAME + TMP_SUFFIX  # recovery deletes a leftover with the segments' .tmp files


def path_of(directory: str) -> str:
    """Where the checkpoint of the queue in `directory` lives."""
    return posixpath.join(directory, FILE_NAME)


def read(fs: FileSystem, directory: str) -> ckpt.Checkpoint | None:
    """The queue's checkpoint if it has a sound one; None (logged) if it is missing or damaged."""
    path = path_of(directory)
    if not fs.exists(path):
        return None
    try:
        f = fs.open(path)
        try:
            held = [f.pread(f.size(), 0)]  # decode takes the bytes: freed once unmarshalled
        finally:
            f.close()
        return ckpt.decode(held, path)
    except (OSError, CorruptionError) as exc:
        log.warning("%s: checkpoint ignored, replaying the whole log: %s", path, exc)
        return None


def read_summary(fs: FileSystem, directory: str) -> tuple[ckpt.Summary | None, str | None]:
    """The checkpoint's header for stats and fsck: (summary, None), (None, why not) or (None, None).

    Reads only the fixed header (the body's checksum is fsck's: `read`).
    """
    path = path_of(directory)
    if not fs.exists(path):
        return None, None
    try:
        f = fs.open(path)
        try:
            head = f.pread(ckpt.HEADER_SIZE, 0)
        finally:
            f.close()
        return ckpt.summary(head, path)[0], None
    except (OSError, CorruptionError) as exc:
        return None, str(exc)


def info(fs: FileSystem, directory: str, now: float) -> dict[str, Any] | None:
    """The checkpoint as `stats` shows it (header only); None if there is none.

    {"written", "age", "seq", "offset", "jobs"}, or {"error"} if its header is damaged.
    """
    head, error = read_summary(fs, directory)
    if head is None:
        return None if error is None else {"error": error}
    return {
        "written": head.written,
        "age": max(0.0, now - head.written),
        "seq": head.seq,
        "offset": head.offset,
        "jobs": head.jobs,
    }


def check(fs: FileSystem, directory: str) -> tuple[ckpt.Summary | None, str | None]:
    """fsck's full check: (summary, None) if an open would use it, else (summary or None, why).

    Reads the whole file and the segment bytes it covers; changes nothing.
    """
    path = path_of(directory)
    if not fs.exists(path):
        return None, None
    try:
        f = fs.open(path)
        try:
            data = f.pread(f.size(), 0)
        finally:
            f.close()
        cp = ckpt.decode(data, path)
    except (OSError, CorruptionError) as exc:
        return None, str(exc)
    segments = []
    try:
        for m in cp.image.marks:
            seg = Segment.open(fs, posixpath.join(directory, fmt.segment_name(m.seq)), write=False)
            seg.close()
            segments.append(seg)
    except (OSError, CorruptionError) as exc:
        return cp.summary, f"a segment it names cannot be read: {exc}"
    why = Resume(fs, directory, cp, QueueState(), Now(0.0, 0.0)).disagreement(segments)
    return cp.summary, why


READ_CHUNK = 4 << 20


def mark(
    fs: FileSystem, seg_path: str, header: fmt.SegmentHeader, end: int | None
) -> ckpt.SegmentMark:
    """A segment's mark: the CRC32C of its bytes from the header's end to `end` (None: all)."""
    f = fs.open(seg_path)
    try:
        stop = f.size() if end is None else min(end, f.size())
        crc = 0
        at = fmt.SEGMENT_HEADER_SIZE
        while at < stop:
            chunk = f.pread(min(READ_CHUNK, stop - at), at)
            if not chunk:
                break
            crc = crc32c(chunk, crc)
            at += len(chunk)
    finally:
        f.close()
    return ckpt.SegmentMark(header.seq, header.first, max(at, fmt.SEGMENT_HEADER_SIZE), crc)


def write(fs: FileSystem, directory: str, data: bytes) -> None:
    """Replace the checkpoint atomically: a temporary file, fsync, rename, fsync the directory."""
    tmp = posixpath.join(directory, TMP_NAME)
    if fs.exists(tmp):
        fs.remove(tmp)
    f = fs.open(tmp, create=True)
    try:
        f.pwrite(data, 0)
        f.sync()
    except BaseException:
        f.close()
        with contextlib.suppress(OSError):
            fs.remove(tmp)
        raise
    f.close()
    fs.rename(tmp, path_of(directory))
    fs.sync_dir(directory)


def remove(fs: FileSystem, directory: str) -> None:
    """Delete the checkpoint (best effort: a stale one is ignored on open anyway)."""
    with contextlib.suppress(OSError):
        if fs.exists(path_of(directory)):
            fs.remove(path_of(directory))
            fs.sync_dir(directory)


@attrs.define
class Resume:
    """Recovery's start from a checkpoint: accepted only if the segments agree with it.

    Recovery (walq.directory.recovery) calls `accept` with the log's segments
    before it replays any; on agreement the state is restored and recovery
    replays from the checkpoint's position on.
    """

    fs: FileSystem
    directory: str
    checkpoint: ckpt.Checkpoint
    state: QueueState
    now: Now
    sink: Sink | None = None  # the replay's sink for records the fast path hands on
    restored: ckpt.Restored | None = None
    load: Sink | None = None  # the fast path's sink, made for the restored state

    def accept(self, segments: Sequence[Segment]) -> tuple[int, int] | None:
        """(seq, offset) to replay from, the state restored; None (logged) to replay it all."""
        why = self.disagreement(segments)
        if why is not None:
            log.warning(
                "%s: checkpoint ignored (%s), replaying the whole log",
                path_of(self.directory),
                why,
            )
            return None
        try:
            self.restored = ckpt.restore(self.state, self.checkpoint.image, self.now)
        except Exception as exc:
            # restore changed the state: the caller must start again from a fresh one.
            raise CheckpointRejected(str(exc)) from exc
        if self.sink is not None:
            self.load = self.state.replay_sink(self.now, self.sink)
        s = self.checkpoint.summary
        return s.seq, s.offset

    def disagreement(self, segments: Sequence[Segment]) -> str | None:
        """Why the segments do not match the checkpoint's marks, or None if they all do."""
        marks = self.checkpoint.image.marks
        if len(segments) < len(marks):
            return f"it names {len(marks)} segments, the log has {len(segments)}"
        for i, (m, seg) in enumerate(zip(marks, segments, strict=False)):
            if (seg.header.seq, seg.header.first) != (m.seq, m.first):
                return (
                    f"it names segment {m.seq} (from {m.first}), the log has "
                    f"{seg.header.seq} (from {seg.header.first}): stale or another queue's"
                )
            try:
                # A sealed segment whole (bytes added after its end are damage too);
                # the checkpoint's own segment up to its position (the rest is replayed).
                now = mark(self.fs, seg.path, seg.header, m.end if i == len(marks) - 1 else None)
            except OSError as exc:
                return f"reading {seg.path}: {exc}"
            if now != m:
                return f"{seg.path} does not hold the bytes it covered (offset {m.end})"
        return None


class CheckpointRejected(Exception):
    """A checkpoint that passed its checks failed to restore: replay the whole log instead."""


@attrs.frozen
class Written:
    """One checkpoint written: when, where its position is, how many jobs, how long it took."""

    written: float
    seq: int
    offset: int
    jobs: int
    seconds: float
    bytes: int


@attrs.frozen
class Policy:
    """When the background checkpoint is written.

    When the log has grown by `min_bytes` since the last one, and at least
    `min_interval` seconds -- and `cost_factor` times the last one's duration,
    so that writing checkpoints of a large index costs at most about
    1/cost_factor of one core -- have passed.
    """

    min_bytes: int = 4 << 20
    min_interval: float = 5.0
    cost_factor: float = 10.0


class Checkpointer:
    """Writes a queue's checkpoint: `due` says when, `write` does it (the compactor's thread).

    `capture` is called with no lock held and returns, taken under the
    queue's lock at one instant, the copies for walq.core.checkpoint.image,
    the log position they reflect and the segments up to it; `sync` makes
    the log durable up to there.
    """

    def __init__(
        self,
        fs: FileSystem,
        directory: str,
        capture: Callable[[], tuple[dict[str, Any], int, int, list[Segment]]],
        sync: Callable[[], None],
        appended: Callable[[], int],
        policy: Policy | None = None,
    ) -> None:
        self.fs = fs
        self.directory = directory
        self.capture = capture
        self.sync = sync
        self.appended = appended
        self.policy = policy or Policy()
        self.background = True  # False: only `write` on demand, never `due`
        self.last: Written | None = None
        self._last_at = 0.0  # monotonic
        self._last_bytes = 0  # appended() at the last one
        self._last_cost = 0.0
        # Sealed segments do not change until a compaction replaces them: marked once.
        self._marks: dict[tuple[str, int, int], ckpt.SegmentMark] = {}

    def due(self) -> bool:
        """Whether the policy says to write one now."""
        p = self.policy
        if not self.background or self.appended() - self._last_bytes < p.min_bytes:
            return False
        wait = max(p.min_interval, p.cost_factor * self._last_cost)
        return time.monotonic() - self._last_at >= wait

    def outdated(self) -> None:
        """A compaction is about to replace segments the checkpoint on disk names: delete it
        (every open would ignore it, with a warning, until the next one), write one when
        allowed."""
        remove(self.fs, self.directory)
        self._last_bytes = -self.policy.min_bytes
        self._marks.clear()

    def write(self) -> Written:
        """Write a checkpoint of the queue now (OSError or WalqError if it cannot)."""
        started = time.monotonic()
        appended = self.appended()
        taken, seq, offset, segments = self.capture()
        # Everything the image reflects must be durable before a checkpoint says so.
        self.sync()
        marks = []
        for seg in segments:
            if seg.seq == seq:
                marks.append(mark(self.fs, seg.path, seg.header, offset))
                continue
            key = (seg.path, seg.header.seq, seg.header.first)
            known = self._marks.get(key)
            if known is None:
                known = self._marks[key] = mark(self.fs, seg.path, seg.header, None)
            marks.append(known)
        for key in [k for k in self._marks if k[1] >= seq]:
            del self._marks[key]  # not sealed (yet): never cached
        img = ckpt.image(taken, marks)
        wall = time.time()
        data = ckpt.encode(img, wall)
        write(self.fs, self.directory, data)
        took = time.monotonic() - started
        self._last_at, self._last_bytes, self._last_cost = time.monotonic(), appended, took
        self.last = Written(wall, seq, offset, len(img.jobs), took, len(data))
        log.info(
            "%s: checkpoint of %d jobs at segment %d offset %d (%d bytes, %.3f s)",
            self.directory, len(img.jobs), seq, offset, len(data), took,
        )  # fmt: skip
        return self.last
