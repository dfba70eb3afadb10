"""The file-system seam: every file-system call walq makes goes through here.

`OsFileSystem` is the real one. Tests substitute a file system that forgets
unsynced writes, tears them, or fails fsync (`walq.testing.faultfs`), so the
crash model in docs/FORMAT.md can be exercised without pulling a power cord.
"""

from __future__ import annotations

import errno
import fcntl
import os
import sys
from typing import Protocol

from walq.lock import ProcessLock


class File(Protocol):
    """An open file addressed by offset; writes are positional, never appends."""

    path: str

    def pread(self, size: int, offset: int) -> bytes:
        """Read up to `size` bytes at `offset` (fewer at end of file)."""
        ...

    def pwrite(self, data: bytes, offset: int) -> None:
        """Write all of `data` at `offset` (reaches the kernel, not the disk)."""
        ...

    def sync(self) -> None:
        """Make the file's data and size durable (fdatasync; F_FULLFSYNC on macOS)."""
        ...

    def truncate(self, size: int) -> None:
        """Set the file's size."""
        ...

    def size(self) -> int:
        """The file's current size in bytes."""
        ...

    def close(self) -> None:
        """Release the handle; unsynced data stays in the kernel's cache."""
        ...


class Lock(Protocol):
    """An exclusive owner lock on a queue directory."""

    def release(self) -> None:
        """Give the lock up."""
        ...


class FileSystem(Protocol):
    """The narrow set of file-system operations walq needs."""

    def open(self, path: str, *, write: bool = False, create: bool = False) -> File:
        """Open `path`; `create` makes a new file (mode 0600) and fails if it exists."""
        ...

    def exists(self, path: str) -> bool:
        """Whether `path` names an existing file or directory."""
        ...

    def is_dir(self, path: str) -> bool:
        """Whether `path` names an existing directory."""
        ...

    def listdir(self, path: str) -> list[str]:
        """The names in directory `path`, sorted."""
        ...

    def makedirs(self, path: str, mode: int = 0o700) -> None:
        """Create `path` and missing parents with `mode` (durable once the parent is synced)."""
        ...

    def rename(self, src: str, dst: str) -> None:
        """Atomically replace `dst` with `src` (durable once the directory is synced)."""
        ...

    def remove(self, path: str) -> None:
        """Unlink a file (durable once the directory is synced)."""
        ...

    def sync_dir(self, path: str) -> None:
        """Make creations, renames and removals in directory `path` durable."""
        ...

    def free_bytes(self, path: str) -> int:
        """Bytes available to unprivileged writers on the file system holding `path`."""
        ...

    def lock(self, path: str, timeout: float) -> Lock:
        """Take the exclusive lock file `path`, waiting up to `timeout` seconds."""
        ...


class OsFile:
    """A real file descriptor."""

    __slots__ = ("_fd", "path")

    def __init__(self, path: str, fd: int) -> None:
        self.path = path
        self._fd = fd

    def pread(self, size: int, offset: int) -> bytes:
        chunks = []
        while size > 0:
            chunk = os.pread(self._fd, size, offset)
            if not chunk:
                break
            chunks.append(chunk)
            size -= len(chunk)
            offset += len(chunk)
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def pwrite(self, data: bytes, offset: int) -> None:
        view = memoryview(data)
        while view:
            written = os.pwrite(self._fd, view, offset)
            view = view[written:]
            offset += written

    def sync(self) -> None:
        _datasync(self._fd)

    def truncate(self, size: int) -> None:
        os.ftruncate(self._fd, size)

    def size(self) -> int:
        return os.fstat(self._fd).st_size

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def _datasync(fd: int) -> None:
    if sys.platform == "darwin":  # pragma: no cover - exercised on macOS only
        # fsync on macOS only reaches the drive's cache; F_FULLFSYNC reaches the platter.
        fcntl.fcntl(fd, fcntl.F_FULLFSYNC)
    elif hasattr(os, "fdatasync"):
        os.fdatasync(fd)
    else:  # pragma: no cover - platforms without fdatasync
        os.fsync(fd)


class OsFileSystem:
    """The real file system."""

    def open(self, path: str, *, write: bool = False, create: bool = False) -> File:
        flags = os.O_RDWR if write or create else os.O_RDONLY
        if create:
            flags |= os.O_CREAT | os.O_EXCL
        flags |= getattr(os, "O_CLOEXEC", 0)
        return OsFile(path, os.open(path, flags, 0o600))

    def exists(self, path: str) -> bool:
        return os.path.exists(path)

    def is_dir(self, path: str) -> bool:
        return os.path.isdir(path)

    def listdir(self, path: str) -> list[str]:
        return sorted(os.listdir(path))

    def makedirs(self, path: str, mode: int = 0o700) -> None:
        os.makedirs(path, mode=mode, exist_ok=True)

    def rename(self, src: str, dst: str) -> None:
        os.replace(src, dst)

    def remove(self, path: str) -> None:
        os.remove(path)

    def sync_dir(self, path: str) -> None:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            os.fsync(fd)
        except OSError as exc:  # pragma: no cover - some file systems refuse dir fsync
            if exc.errno not in (errno.EINVAL, errno.ENOTSUP):
                raise
        finally:
            os.close(fd)

    def free_bytes(self, path: str) -> int:
        st = os.statvfs(path)
        return st.f_bavail * st.f_frsize

    def lock(self, path: str, timeout: float) -> Lock:
        return ProcessLock.acquire(path, timeout)
