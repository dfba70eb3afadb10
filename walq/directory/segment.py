"""One segment file: created whole (header, zeroed space) and never renamed half-built."""

from __future__ import annotations

import contextlib
import logging
import posixpath

import attrs

from walq.core.format import SEGMENT_HEADER_SIZE, SegmentHeader, segment_name
from walq.directory.fs import File, FileSystem
from walq.errors import CompactionError

log = logging.getLogger("walq.log")

_ZEROS = bytes(1 << 20)
TMP_SUFFIX = ".tmp"  # a segment being created; recovery deletes leftovers
# The next segment, made ahead of the roll in the background; recovery deletes it too.
SPARE_SUFFIX = ".spare"


@attrs.define
class Segment:
    """An open segment file and what is known of it."""

    path: str
    header: SegmentHeader
    file: File

    @property
    def seq(self) -> int:
        return self.header.seq

    @classmethod
    def create(
        cls, fs: FileSystem, directory: str, header: SegmentHeader, preallocate: int
    ) -> Segment:
        """Create a segment durably: write it under a temporary name, fsync, rename, fsync dir."""
        seg = cls.prepare(fs, directory, header, preallocate, TMP_SUFFIX)
        try:
            seg.install(fs, directory)
        except BaseException:
            seg.close()
            raise
        return seg

    @classmethod
    def prepare(
        cls, fs: FileSystem, directory: str, header: SegmentHeader, preallocate: int, suffix: str
    ) -> Segment:
        """Write a whole segment under its name plus `suffix` and fsync it; `install` names it.

        The file is filled with zeros up to `preallocate` bytes so later
        fdatasyncs need not persist a new file size (type 0 reads as the end
        of the log), and so a full disk shows up now rather than mid-record.
        """
        tmp = posixpath.join(directory, segment_name(header.seq)) + suffix
        if fs.exists(tmp):
            fs.remove(tmp)
        f = fs.open(tmp, create=True)
        try:
            f.pwrite(header.encode(), 0)
            offset = SEGMENT_HEADER_SIZE
            while offset < preallocate:
                chunk = _ZEROS[: min(len(_ZEROS), preallocate - offset)]
                f.pwrite(chunk, offset)
                offset += len(chunk)
            f.sync()
        except BaseException:
            f.close()
            # A half-written file would hold on to the space a full disk lacks.
            with contextlib.suppress(OSError):
                fs.remove(tmp)
            raise
        return cls(tmp, header, f)

    def install(self, fs: FileSystem, directory: str) -> None:
        """Rename a prepared segment to its real name and fsync the directory."""
        path = posixpath.join(directory, segment_name(self.seq))
        fs.rename(self.path, path)
        self.path = self.file.path = path
        fs.sync_dir(directory)

    @classmethod
    def open(cls, fs: FileSystem, path: str, *, write: bool) -> Segment:
        """Open an existing segment and check its header."""
        f = fs.open(path, write=write)
        try:
            header = SegmentHeader.decode(f.pread(SEGMENT_HEADER_SIZE, 0), path)
        except BaseException:
            f.close()
            raise
        return cls(path, header, f)

    def read_all(self) -> bytes:
        """The whole file."""
        return self.file.pread(self.file.size(), 0)

    def close(self) -> None:
        """Close the file handle."""
        self.file.close()


def replace_segment(fs: FileSystem, tmp_path: str, final: str) -> bool:
    """Rename a complete, fsynced file over segment `final`; whether the directory fsync held.

    CompactionError if the rename fails (nothing changed). If only the fsync
    fails, the rename happened but may not survive a crash: the caller
    switches to the new file (it is the one on disk now) but keeps the
    segments it supersedes, which recovery sorts out either way.
    """
    directory = posixpath.dirname(final)
    try:
        fs.rename(tmp_path, final)
    except OSError as exc:  # nothing changed
        raise CompactionError(f"{final}: renaming the compacted segment failed: {exc}") from exc
    try:
        fs.sync_dir(directory)
    except OSError as exc:
        log.error("%s: fsync of the directory after a compaction failed: %s", directory, exc)
        return False
    return True


def remove_segments(fs: FileSystem, directory: str, paths: list[str]) -> None:
    """Delete segments a compacted one supersedes, then sync the directory."""
    try:
        for path in paths:
            fs.remove(path)
        if paths:
            fs.sync_dir(directory)
    except OSError as exc:
        raise CompactionError(f"{directory}: removing replaced segments: {exc}") from exc
