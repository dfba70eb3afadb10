"""The process lock: one owner per queue directory, across processes and threads."""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import portalocker

from walq.errors import LockedError
from walq.fs import open_fd

# flock locks belong to an open file description, so a second open of the lock
# file in the same process already conflicts on Linux; this registry makes the
# rule hold on every platform and gives a clearer message.
_held: set[str] = set()
_held_guard = threading.Lock()


class ProcessLock:
    """An exclusive, non-blocking portalocker lock on a file, held until released."""

    def __init__(self, path: str, handle: Any) -> None:
        self.path = path
        self._handle = handle

    @classmethod
    def acquire(cls, path: str, timeout: float = 0.0) -> ProcessLock:
        """Take the lock, waiting up to `timeout` seconds; raise LockedError if it is held."""
        key = os.path.realpath(path)
        deadline = time.monotonic() + max(timeout, 0.0)
        while True:
            with _held_guard:
                if key not in _held:
                    # Never through a link planted as LOCK; root gives it to the queue's owner.
                    fd = open_fd(path, os.O_RDWR | os.O_CREAT)
                    handle = os.fdopen(fd, "r+b")  # held for the owner's life
                    try:
                        os.fchmod(fd, 0o600)
                        portalocker.lock(handle, portalocker.LOCK_EX | portalocker.LOCK_NB)
                    except (portalocker.LockException, OSError):
                        handle.close()
                    else:
                        _held.add(key)
                        return cls(key, handle)
            if time.monotonic() >= deadline:
                raise LockedError(f"{path}: the queue is owned by another process or thread")
            time.sleep(0.02)

    def release(self) -> None:
        """Give the lock up (idempotent)."""
        handle = self._handle
        if handle is None:
            return
        self._handle = None
        try:
            portalocker.unlock(handle)
        finally:
            handle.close()
            with _held_guard:
                _held.discard(self.path)
