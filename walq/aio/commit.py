"""One committer thread that makes a batch of appended writes durable for an event loop.

A coroutine that appended a write (with sync=False, so the append only
buffers it) awaits `GroupCommitter.durable()`. The committer thread takes
every future waiting, calls the queue's `sync()` once (one fdatasync for the
whole batch), and resolves the batch with ONE `loop.call_soon_threadsafe`:
waiting costs no thread per caller and one wake-up of the loop per batch.

Why a resolved future means a durable write: `durable()` is called on the
loop's thread only after the append returned, so the append happened before
its future joined `_waiting`. The committer swaps `_waiting` out under its
lock, and only then calls `sync()`, which reads the log's appended position
under the log's lock: every append of the batch is at or before that
position, so that sync covers it. A future is resolved only after that sync
returned; an append made after the swap waits for the next sync. If the sync
raises (the log failed), the batch gets the exception: nothing unsynced is
ever reported durable.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

from walq.errors import ClosedError


class GroupCommitter:
    """Resolves futures of appended writes after one `sync()` per batch (see the module)."""

    def __init__(self, sync: Callable[[], None], loop: asyncio.AbstractEventLoop, where: str):
        self._sync = sync
        self._loop = loop
        self._where = where
        self._cond = threading.Condition(threading.Lock())
        self._waiting: list[asyncio.Future[None]] = []
        self._idle = False  # the thread waits on _cond: a new future must notify it
        self._closed = False
        self._thread: threading.Thread | None = None
        self.commits = 0  # syncs done, each one wake-up of the loop
        self.resolved = 0  # futures resolved by them

    def durable(self) -> asyncio.Future[None]:
        """A future resolved once every write appended before this call is durable.

        Call it on the loop's thread, right after the append returned.
        """
        fut = self._loop.create_future()
        with self._cond:
            if self._closed:
                raise ClosedError(f"{self._where}: the queue is closed")
            self._waiting.append(fut)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="walq-aio-commit", daemon=True
                )
                self._thread.start()
            elif self._idle:
                self._cond.notify()
        return fut

    def close(self) -> None:
        """Commit what waits, then stop the thread (blocking: call it from a thread)."""
        with self._cond:
            self._closed = True
            self._cond.notify()
            thread = self._thread
        if thread is not None:
            thread.join()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._waiting and not self._closed:
                    self._idle = True
                    self._cond.wait()
                    self._idle = False
                if not self._waiting:
                    return  # closed, and nothing is left to commit
                batch, self._waiting = self._waiting, []
            error: BaseException | None = None
            try:
                self._sync()  # reads the appended position now: after every append of batch
            except BaseException as exc:  # the batch learns why; the thread goes on
                error = exc
            self.commits += 1
            self.resolved += len(batch)
            try:
                self._loop.call_soon_threadsafe(_resolve, batch, error)
            except RuntimeError:  # the loop is closed: nobody is waiting any more
                return


def _resolve(batch: list[asyncio.Future[None]], error: BaseException | None) -> None:
    """On the loop: settle a whole batch (a caller that gave up has a cancelled future)."""
    for fut in batch:
        if fut.done():
            continue
        if error is None:
            fut.set_result(None)
        else:
            fut.set_exception(error)
