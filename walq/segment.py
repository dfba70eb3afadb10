"""One segment file: created whole (header, zeroed space) and never renamed half-built."""

from __future__ import annotations

import posixpath

import attrs

from walq.core.format import SEGMENT_HEADER_SIZE, SegmentHeader, segment_name
from walq.fs import File, FileSystem

_ZEROS = bytes(1 << 20)


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
        """Create a segment durably: write it under a temporary name, fsync, rename, fsync dir.

        The file is filled with zeros up to `preallocate` bytes so later
        fdatasyncs need not persist a new file size (type 0 reads as the end
        of the log), and so a full disk shows up now rather than mid-record.
        """
        path = posixpath.join(directory, segment_name(header.seq))
        tmp = path + ".tmp"
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
            raise
        fs.rename(tmp, path)
        f.path = path
        fs.sync_dir(directory)
        return cls(path, header, f)

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
