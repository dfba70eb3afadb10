"""The spare segment: the log's next segment file, made ahead of the roll.

Writing and fsyncing a segment of zeros takes tens of milliseconds; made in
advance (by the compactor's thread, with no lock of the log held) the roll
only renames it into place. Until then the file is named `<seq>.wal.spare`,
which recovery deletes if a crash leaves it behind.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from walq.core.format import SegmentHeader
from walq.directory.fs import FileSystem
from walq.directory.segment import SPARE_SUFFIX, Segment

log = logging.getLogger("walq.log")


class Spare:
    """At most one prepared next segment of one log directory."""

    def __init__(self, fs: FileSystem, directory: str, segment_size: int) -> None:
        self.fs = fs
        self.directory = directory
        self.segment_size = segment_size
        self.segment: Segment | None = None  # the prepared file, if any
        self.error: str | None = None  # why the last one could not be made
        self._mu = threading.Lock()  # held while one is made; never under the log's lock

    def after_fork_in_child(self) -> None:
        """A parent's thread may have held the lock at the fork: take a fresh one."""
        self._mu = threading.Lock()

    def prepare(
        self, header: SegmentHeader, closed: Callable[[], bool], size: int | None = None
    ) -> bool:
        """Make the segment `header` names (`size` bytes, preallocated), unless made already;
        return whether it made one.

        A spare made for another segment (a roll came first) is deleted. `closed`
        is asked under the lock, so a log closing meanwhile leaves no file behind.
        """
        with self._mu:
            if self.segment is not None:
                if self.segment.header == header:
                    return False
                self.discard(self.segment)  # the roll it was made for came first
                self.segment = None
            if closed():
                return False
            try:
                self.segment = Segment.prepare(
                    self.fs, self.directory, header, size or self.segment_size, SPARE_SUFFIX
                )
            except OSError as exc:  # the roll will try again, synchronously, and say so
                self.error = f"preparing segment {header.seq} failed: {exc}"
                log.warning("%s: %s", self.directory, self.error)
                return False
            self.error = None
        return True

    def next_segment(self, header: SegmentHeader, size: int | None = None) -> Segment:
        """The segment `header` names: the spare renamed into place if made for it, else a
        new one of `size` bytes.

        Waits for a spare being made now (it is nearly done). OSError if the
        file cannot be created or renamed.
        """
        with self._mu:
            spare, self.segment = self.segment, None
        if spare is not None and spare.header == header:
            try:
                spare.install(self.fs, self.directory)
            except BaseException:
                spare.close()
                raise
            return spare
        if spare is not None:
            self.discard(spare)
        return Segment.create(self.fs, self.directory, header, size or self.segment_size)

    def discard(self, spare: Segment) -> None:
        """Close and delete a spare segment (best effort: recovery deletes leftovers)."""
        spare.close()
        try:
            self.fs.remove(spare.path)
        except OSError as exc:
            log.warning("%s: removing the unused %s failed: %s", self.directory, spare.path, exc)

    def close(self) -> None:
        """Delete the spare, if any (the log is closing)."""
        with self._mu:
            if self.segment is not None:
                self.discard(self.segment)
                self.segment = None
