"""Who owns a queue directory, found without taking its lock, and its worker's status."""

from __future__ import annotations

import contextlib
import json
import os
import posixpath
import time
from typing import Any

import attrs

from walq.directory.fs import open_fd
from walq.directory.queue import LOCK_FILE, STATUS_FILE
from walq.errors import CorruptionError, LockedError

STATUS_FRESH = 30.0  # seconds: an older worker status is stale


@attrs.frozen
class Owner:
    """Whether a process holds the queue's lock: True, False, or None (cannot tell)."""

    running: bool | None
    pid: int | None = None


def owner(path: str) -> Owner:
    """Who holds the queue's lock, found without taking it (Linux: /proc/locks)."""
    lock_path = posixpath.join(path, LOCK_FILE)
    want = set()
    # The owner locks the lock file and the directory (walq.directory.lock): the file may be gone.
    for locked in (lock_path, path):
        try:
            st = os.lstat(locked)  # a link planted as LOCK is not the owner's
        except FileNotFoundError:
            continue
        except OSError:
            return Owner(None)
        want.add(f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}")
    if not want:
        return Owner(False)
    from walq.directory import lock as walq_lock  # noqa: PLC0415 - the registry of this process

    if os.path.realpath(lock_path) in walq_lock._held:
        return Owner(True, os.getpid())
    try:
        with open("/proc/locks") as f:
            lines = f.read().splitlines()
    except OSError:
        return Owner(None)
    for line in lines:
        parts = line.split()
        # "1: FLOCK  ADVISORY  WRITE 1234 fe:00:5678 0 EOF" ("->" marks a waiter)
        if len(parts) >= 6 and "->" not in parts and parts[5] in want:
            with contextlib.suppress(ValueError):
                return Owner(True, int(parts[4]))
            return Owner(True)
    return Owner(False)


def owner_running(path: str) -> LockedError:
    """The refusal of a step that needs the lock of `path` while an owner holds it."""
    who = owner(path)
    pid = f" (pid {who.pid})" if who.pid else ""
    return LockedError(f"{path}: an owner is running{pid}")


def worker_status(path: str) -> dict[str, Any] | None:
    """The worker's advisory status file if it is recent and its worker runs; else None.

    Its age is judged by the clock read once the file is read: a clock read
    before (say, before a long replay) makes a status written meanwhile look
    as if it came from the future, and it would be thrown away as stale.
    """
    try:
        with os.fdopen(open_fd(posixpath.join(path, STATUS_FILE), os.O_RDONLY)) as f:
            status = json.load(f)
    except (OSError, ValueError, CorruptionError):  # advisory: a link planted there is ignored
        return None
    now = time.time()
    if not isinstance(status, dict) or status.get("stopped"):
        return None
    updated = status.get("updated")
    if not isinstance(updated, int | float) or not 0 <= now - updated <= STATUS_FRESH:
        return None
    status["age"] = max(0.0, now - float(updated))
    return status
