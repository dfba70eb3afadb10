"""The process lock: one owner per queue directory, across processes and threads.

The lock is taken twice: on the lock file and on the directory holding it.
A lock file can be deleted under a running owner (an operator "cleaning up
stale locks"), and the next opener would create a fresh one and lock that;
the directory cannot go while the queue is in it, so its lock is what keeps
one owner one owner. The file stays for the tools that look for it.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import threading
import time
from typing import Any

from walq.directory.fs import open_fd
from walq.errors import LockedError

log = logging.getLogger("walq.lock")

# flock locks belong to an open file description, so a second open of the lock
# file in the same process already conflicts on Linux; this registry makes the
# rule hold on every platform and gives a clearer message.
_held: set[str] = set()
_held_guard = threading.Lock()


class ProcessLock:
    """An exclusive, non-blocking flock on a file, held until released."""

    def __init__(self, path: str, handle: Any, dir_fd: int) -> None:
        self.path = path
        self._handle = handle
        self._dir_fd = dir_fd
        self._pid = os.getpid()
        st = os.fstat(handle.fileno())
        self._inode = (st.st_dev, st.st_ino)

    @classmethod
    def acquire(cls, path: str, timeout: float = 0.0) -> ProcessLock:
        """Take the lock, waiting up to `timeout` seconds; raise LockedError if it is held."""
        key = os.path.realpath(path)
        deadline = time.monotonic() + max(timeout, 0.0)
        while True:
            with _held_guard:
                if key not in _held:
                    dir_fd = _lock_dir(os.path.dirname(key))
                    if dir_fd is not None:
                        try:
                            handle = _open_lock_file(path)
                        except BaseException:
                            _close(dir_fd)
                            raise
                        try:
                            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                        except OSError:
                            handle.close()
                            _close(dir_fd)
                        else:
                            _held.add(key)
                            return cls(key, handle, dir_fd)
            if time.monotonic() >= deadline:
                raise LockedError(f"{path}: the queue is owned by another process or thread")
            time.sleep(0.02)

    def verify(self) -> None:
        """Check that the lock file at the path is still the one held (one lstat).

        A deleted or replaced lock file is locked again (and logged), so the
        tools that look for it find the owner; LockedError if another process
        holds the file now at the path -- the caller must stop writing.
        """
        try:
            st = os.lstat(self.path)
            if (st.st_dev, st.st_ino) == self._inode:
                return
        except FileNotFoundError:
            pass
        if self._handle is None or os.getpid() != self._pid:
            return
        handle = _open_lock_file(self.path)
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            raise LockedError(
                f"{self.path}: the lock file was replaced while this process owned the queue,"
                " and another process holds the new one"
            ) from None
        log.warning(
            "%s: the lock file was deleted or replaced while this process owned the queue;"
            " locked it again (do not delete it)",
            self.path,
        )
        old, self._handle = self._handle, handle
        st = os.fstat(handle.fileno())
        self._inode = (st.st_dev, st.st_ino)
        old.close()

    def release(self) -> None:
        """Give the lock up (idempotent)."""
        handle = self._handle
        if handle is None:
            return
        self._handle = None
        if os.getpid() != self._pid:
            # A fork() child: the lock is on the open file the parent shares, and
            # unlocking it here would free the parent's queue. Close our copies only.
            handle.close()
            _close(self._dir_fd)
            return
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
        finally:
            handle.close()
            _close(self._dir_fd)  # closing the last descriptor releases its flock
            with _held_guard:
                _held.discard(self.path)


def _open_lock_file(path: str) -> Any:
    """The lock file, opened for the owner's life: never through a link planted as LOCK,
    and given to the queue's owner when root makes it (walq.directory.fs.open_fd)."""
    fd = open_fd(path, os.O_RDWR | os.O_CREAT)
    try:
        os.fchmod(fd, 0o600)
    except BaseException:
        os.close(fd)
        raise
    return os.fdopen(fd, "r+b")


def _lock_dir(directory: str) -> int | None:
    """A descriptor of `directory` holding an exclusive flock; None if another holds it.

    On a file system that cannot lock a directory (some network file systems)
    the lock file alone guards the queue, as it did before: that is logged, and
    -1 returned.
    """
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return None
        log.warning(
            "%s: cannot lock the directory (%s); only its lock file guards it:"
            " do not delete the lock file while an owner runs",
            directory,
            exc,
        )
        return -1
    return fd


def _close(fd: int) -> None:
    if fd >= 0:
        os.close(fd)
