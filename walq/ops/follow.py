"""`walq dump --follow`: the records appended to a live queue, as they appear."""

from __future__ import annotations

import os
import posixpath
import time
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import attrs

from walq.core import format as fmt
from walq.core import framing
from walq.directory.fs import FileSystem, OsFileSystem
from walq.errors import CorruptionError
from walq.ops.dump import Dumper, LogEnd, damage_row, notice_row
from walq.ops.scan import SNIPPET, segment_seqs


class _Readable(Protocol):
    def pread(self, size: int, offset: int) -> bytes: ...
    def size(self) -> int: ...
    def close(self) -> None: ...


class _Empty:
    """Stands for a segment whose header is damaged: it reads as empty."""

    def pread(self, size: int, offset: int) -> bytes:
        return b""

    def size(self) -> int:
        return 0

    def close(self) -> None:
        pass


def follow(
    path: str,
    start: LogEnd | None,
    *,
    dumper: Dumper | None = None,
    poll: float = 0.25,
    stop: Callable[[], bool] = lambda: False,
    fs: FileSystem | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> Iterator[dict[str, Any]]:
    """Rows of the records appended to a live queue after `start`, as they appear.

    Only complete, valid records are reported while a segment is being
    written (a half-written record is the writer at work). When a newer
    segment appears, the current one is sealed: what is left of it is read
    once more and any damage in it reported. A segment that a compaction
    rewrote meanwhile is announced and read whole (its `job` records stand for
    the events that were compacted away). Runs until `stop()` is true or the
    caller stops iterating.
    """
    fs = fs or OsFileSystem()
    dumper = dumper or Dumper()
    at = start or LogEnd(0, fmt.SEGMENT_HEADER_SIZE, 0)
    seq, offset, first = at.seq, at.offset, at.first
    f: _Readable | None = None
    idle: tuple[int, int] | None = None  # (size, mtime) of the active segment when idle
    try:
        while not stop():
            if f is None:
                opened = _open_from(fs, path, seq, offset, first)
                if opened is None:
                    sleep(poll)
                    continue
                f, seq, offset, notice = opened
                if notice is not None:
                    yield notice
            if any(s > seq for s in segment_seqs(path, fs)):
                # Sealed: the owner wrote all of it before creating the next segment.
                yield from _sealed_rest(seq, offset, f.pread(f.size(), 0), dumper)
                f.close()
                f = None
                seq, offset, first = seq + 1, fmt.SEGMENT_HEADER_SIZE, seq + 1
                continue
            stamp = _stamp(fs, posixpath.join(path, fmt.segment_name(seq)))
            if stamp is not None and stamp == idle:
                sleep(poll)  # the file has not changed since it last had nothing new
                continue
            pos = 0
            for rec in _new_records(f, offset):
                yield dumper.record_row(seq, rec)
                pos = rec.end - offset
            offset += pos
            if pos == 0:
                # Nothing new: wait for the file to change (a stat, not a read). A
                # stamp of the last second may hide a write in the same clock tick.
                recent = stamp is not None and time.time_ns() - stamp[1] < 1_000_000_000
                idle = None if recent else stamp
                sleep(poll)
            else:
                idle = None
    finally:
        if f is not None:
            f.close()


CHUNK = 64 << 10  # bytes read at a time from the active segment (it may be preallocated)


def _new_records(f: _Readable, offset: int) -> Iterator[framing.Record]:
    """The complete records of `f` from `offset` on, read a chunk at a time (no zeroed tail)."""
    size = f.size()
    want = CHUNK
    while offset < size:
        data = f.pread(min(want, size - offset), offset)
        pos = 0
        while True:
            item = framing.decode(data, pos, origin=offset)
            if not isinstance(item, framing.Record):
                break
            yield attrs.evolve(item, offset=offset + pos, end=offset + item.end)
            pos = item.end
        if isinstance(item, framing.Incomplete) and len(data) < size - offset:
            want = len(data) * 2 if pos == 0 else CHUNK  # a record larger than the chunk
        elif pos == 0 or len(data) < want:
            return  # the end of the records written so far
        offset += pos


def _stamp(fs: FileSystem, seg_path: str) -> tuple[int, int] | None:
    """(size, mtime in ns) of a segment file; None where the file system cannot say."""
    if not isinstance(fs, OsFileSystem):
        return None
    try:
        st = os.stat(seg_path)
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


def _open_from(
    fs: FileSystem, path: str, seq: int, offset: int, first: int
) -> tuple[_Readable, int, int, dict[str, Any] | None] | None:
    """Open segment `seq` (or the first one after it) to read from `offset`; None if none yet.

    `first` is the first segment that `seq` covered when it was last read: if
    its header now says otherwise, a compaction rewrote it, and it is read
    whole with a notice (so is a later segment that covers `seq`).
    """
    for s in segment_seqs(path, fs):
        if s < seq:
            continue
        seg_path = posixpath.join(path, fmt.segment_name(s))
        try:
            f = fs.open(seg_path)
        except FileNotFoundError:
            continue
        try:
            header = fmt.SegmentHeader.decode(f.pread(fmt.SEGMENT_HEADER_SIZE, 0), seg_path)
        except CorruptionError as exc:
            f.close()
            return _Empty(), s, 0, notice_row(s, 0, f"segment header damaged ({exc.reason})")
        rewritten = header.first != first if s == seq else header.first <= seq < s
        if s != seq or rewritten:
            offset = fmt.SEGMENT_HEADER_SIZE
        notice = None
        if rewritten:
            notice = notice_row(
                s, 0,
                f"segments {header.first}..{s} were compacted while following: "
                f"segment {s} holds the live jobs of all of them",
            )  # fmt: skip
        return f, s, offset, notice
    return None


def _sealed_rest(seq: int, offset: int, data: bytes, dumper: Dumper) -> Iterator[dict[str, Any]]:
    """The rest of sealed segment `seq` (whole file `data`) from `offset`: records and damage."""
    scan = framing.classify(data, offset, newest=False)
    for rec in scan.records:
        yield dumper.record_row(seq, rec)
    for gap in scan.gaps:
        yield damage_row(seq, gap, "damage", data[gap.start : min(gap.end, gap.start + SNIPPET)])
