"""fork(): a queue belongs to the process that opened it, never to a child of it.

After os.fork() the child holds copies of the parent's descriptors -- the
segments, the lock file, the producers' socket -- but none of its threads
(group commit, compactor, socket server), and a lock one of those threads
held at the fork stays held in the child forever. Writing through the copy
interleaves two writers in one log; closing it would flush, unlock the
parent's lock (flock locks belong to the open file, which parent and child
share) or remove the parent's socket.

So every open Queue, Log and RedisQueue registers here. In the child, before
any of its code runs, each is told it was forked: its locks are replaced by
fresh ones, every call raises ForkedError, and close() only lets go of the
child's descriptors -- it writes, truncates, unlinks and unlocks nothing.
The check is an attribute read; the write paths that are not hot (a commit's
batch, a segment roll, close) also compare the pid, for a fork made behind
Python's back (a C extension's fork() runs no at-fork hook).
"""

from __future__ import annotations

import os
import weakref
from typing import Any, Protocol

from walq.errors import ForkedError


class Forkable(Protocol):
    """An object that must not be used in a forked child."""

    def _after_fork_in_child(self) -> None:
        """Mark itself forked and replace its locks (runs in the child, one thread)."""
        ...


_open: weakref.WeakSet[Any] = weakref.WeakSet()


def track(obj: Forkable) -> int:
    """Register an object just opened; return the pid that owns it."""
    _open.add(obj)
    return os.getpid()


def error(what: str, owner_pid: int) -> ForkedError:
    """The error for using `what` (a path, a URL) in a process other than `owner_pid`."""
    return ForkedError(
        f"{what}: opened by process {owner_pid}; process {os.getpid()} is a fork() of it"
        " and may not use it: open the queue (or walq.connect) in the process that uses it"
    )


def _after_fork_in_child() -> None:
    for obj in list(_open):
        obj._after_fork_in_child()
    _open.clear()


if hasattr(os, "register_at_fork"):  # pragma: no branch - every POSIX Python
    os.register_at_fork(after_in_child=_after_fork_in_child)
