"""The read side of a directory queue: records read back by location, through few handles."""

from __future__ import annotations

import posixpath
from collections.abc import Iterable

from walq.core import format as fmt
from walq.core import framing
from walq.core.state import Loc, seq_of
from walq.directory.fs import File, FileSystem
from walq.directory.log import Log
from walq.errors import CorruptionError

# Segment files the owner keeps open for reading payloads (a cache: others are
# opened on demand), so that a queue of many segments needs few descriptors.
MAX_READERS = 16


class Readers:
    """Read handles by Loc.seg, least recently used first (callers hold the queue's lock).

    At most MAX_READERS, plus those pinned across a compaction's rename (see `pin`).
    """

    def __init__(self, fs: FileSystem, directory: str, wal: Log) -> None:
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

    def pin(self, in_use: Iterable[int], upto: int) -> None:
        """Open and pin a read handle on the file a compaction's rename replaces.

        Called before a compaction renames its output over segment `upto`
        (`in_use`: the Loc.seg values jobs point at): the handle keeps the old
        file readable until every job has moved. (The older segments it covers
        stay in place until then: remove_superseded comes after `drop`.)
        """
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
