"""The read side of a directory queue: records read back by location, through few handles."""

from __future__ import annotations

import posixpath
from collections.abc import Iterable, Sequence
from typing import Protocol

from walq.core import format as fmt
from walq.core import framing
from walq.core.state import Loc, seq_of
from walq.directory.fs import File, FileSystem
from walq.errors import CorruptionError

# Segment files the owner keeps open for reading payloads (a cache: others are
# opened on demand), so that a queue of many segments needs few descriptors.
MAX_READERS = 16
# A run of adjacent records that `read_many` reads with one pread is cut at this size.
MAX_RUN = 4 << 20


class RecordSource(Protocol):
    """What reading records back needs of a log (walq.directory.log.Log): its record
    check, and the bytes it holds in memory that may not be in the file yet."""

    def record_check(self, crc: int, covered: bytes | memoryview) -> bool: ...
    def unwritten(self, seq: int, offset: int, size: int) -> bytes | None: ...
    def memory_tail(self, seq: int) -> tuple[int, bytes] | None: ...


class Readers:
    """Read handles by Loc.seg, least recently used first (callers hold the queue's lock).

    At most MAX_READERS, plus those pinned across a compaction's rename (see `pin`).
    """

    def __init__(self, fs: FileSystem, directory: str, wal: RecordSource) -> None:
        self.fs = fs
        self.directory = directory
        self._log = wal
        self._handles: dict[int, File] = {}
        self._pinned: set[int] = set()

    def __len__(self) -> int:
        return len(self._handles)

    def path(self, seg: int) -> str:
        """The file of Loc.seg `seg`."""
        return posixpath.join(self.directory, fmt.segment_name(seq_of(seg)))

    def read(self, loc: Loc) -> framing.Record:
        """The record at `loc`, checked against its CRC."""
        data = self._log.unwritten(loc.seg, loc.offset, loc.size)  # still in the buffer?
        if data is None:
            data = self.handle(loc.seg).pread(loc.size, loc.offset)
        record = framing.decode(data, 0, origin=loc.offset, check=self._log.record_check)
        if not isinstance(record, framing.Record):
            reason = getattr(record, "reason", "no record")
            raise CorruptionError(self.path(loc.seg), loc.offset, reason)
        return record

    def read_many(self, locs: Sequence[Loc]) -> list[framing.Record | CorruptionError]:
        """The records at `locs`, in their order, each checked against its CRC.

        Records that lie next to each other in a file (a batch enqueued
        together, claimed together) are read with one pread per run rather
        than one each. A record that does not check out is returned as its
        CorruptionError, so one damaged job does not cost the others.
        """
        order = sorted(range(len(locs)), key=locs.__getitem__)  # by segment, then offset
        out: list[framing.Record | CorruptionError] = [None] * len(locs)  # type: ignore[list-item]
        tails: dict[int, tuple[int, bytes] | None] = {}
        check = self._log.record_check
        check_record = framing.check_record
        max_body = fmt.MAX_BODY
        record_class = framing.Record
        header = fmt.RECORD_HEADER_SIZE
        i, n = 0, len(order)
        while i < n:
            seg, start, size = locs[order[i]]
            end = start + size
            j = i + 1
            while j < n and end - start < MAX_RUN:
                s, offset, size = locs[order[j]]
                if s != seg or offset != end:
                    break
                end += size
                j += 1
            if seg not in tails:
                tails[seg] = self._log.memory_tail(seg)
            data = memoryview(self._span(seg, start, end - start, tails[seg]))
            for k in order[i:j]:
                loc = locs[k]
                at = loc.offset - start
                found = check_record(data[: at + loc.size], at, max_body, start, check)
                if isinstance(found, tuple):
                    rtype, synced, end = found
                    body = bytes(data[at + header : end])
                    out[k] = record_class(at, rtype, synced, body, end)
                else:
                    reason = getattr(found, "reason", "no record")
                    out[k] = CorruptionError(self.path(seg), loc.offset, reason)
            i = j
        return out

    def _span(self, seg: int, start: int, size: int, tail: tuple[int, bytes] | None) -> bytes:
        """`size` bytes of Loc.seg `seg` from `start`: from the file, the memory tail, or both."""
        if tail is not None and start + size > tail[0]:
            at, held = tail
            if start >= at:
                return held[start - at : start - at + size]
            return self.handle(seg).pread(at - start, start) + held[: start + size - at]
        return self.handle(seg).pread(size, start)

    def handle(self, seg: int) -> File:
        """The read handle for Loc.seg `seg`, opened on demand."""
        handles = self._handles
        f = handles.pop(seg, None)
        if f is None:
            if len(handles) >= MAX_READERS:
                for old in [s for s in handles if s not in self._pinned]:
                    handles.pop(old).close()  # the least recently used first
                    if len(handles) < MAX_READERS:
                        break
            f = self.fs.open(self.path(seg))
        handles[seg] = f  # now the most recently used
        return f

    def pin(self, in_use: Iterable[int], upto: int, fresh: int) -> None:
        """Open and pin a read handle on the file a compaction's rename replaces.

        Called before a compaction renames its output over segment `upto`
        (`in_use`: the Loc.seg values jobs and results point at): the handle
        keeps the old file readable until every job has moved. (The older
        segments it covers stay in place until then: remove_superseded comes
        after `drop`.) A handle under `fresh`, the output's Loc.seg, would be
        on another file than the output: it is closed (`drop` keeps `fresh`).
        """
        stale = self._handles.pop(fresh, None)
        if stale is not None:
            stale.close()
        self._pinned.discard(fresh)
        for seg in in_use:
            if seq_of(seg) == upto:
                self.handle(seg)
                self._pinned.add(seg)

    def drop(self, upto: int, keep: int) -> None:
        """Close the handles on files a compaction replaced."""
        for seg in [s for s in self._handles if seq_of(s) <= upto and s != keep]:
            self._handles.pop(seg).close()
        self._pinned = {s for s in self._pinned if seq_of(s) > upto}

    def close(self) -> None:
        """Close every handle."""
        for f in self._handles.values():
            f.close()
        self._handles.clear()
