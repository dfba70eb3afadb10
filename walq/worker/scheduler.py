"""The owner's schedule thread: each registered schedule's due ticks, enqueued once.

Exactly-once does not rest on this thread's timing: `QueueBackend.fire_schedule`
chooses the ticks from the last tick the queue recorded and records the new
one with their enqueues, in one durable write (one script on Redis). This
thread only decides how often to ask: at each schedule's next tick, and at
least every POLL seconds (a wall clock that jumps is noticed within it).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence

from walq.backend import QueueBackend
from walq.core.schedule import Schedule
from walq.errors import WalqError

log = logging.getLogger("walq.worker")

POLL = 1.0  # seconds between looks at most
RETRY = 1.0  # seconds before a firing that failed (server away, queue full) is tried again


class Scheduler:
    """A thread that fires `schedules` on `queue` until stopped."""

    def __init__(self, queue: QueueBackend, schedules: Sequence[Schedule]) -> None:
        self.queue = queue
        self.schedules = list(schedules)
        self.fired = 0  # jobs enqueued for ticks
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self.schedules and self._thread is None:
            self._thread = threading.Thread(target=self._run, name="walq-scheduler", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def fire_all(self) -> float:
        """Fire every schedule once; the seconds until one is worth asking again."""
        wait = POLL
        now = time.time()
        for sched in self.schedules:
            try:
                ids = self.queue.fire_schedule(sched)
            except WalqError as exc:
                log.warning("schedule %s: the tick could not be enqueued yet: %s", sched.name, exc)
                wait = min(wait, RETRY)
                continue
            if ids:
                self.fired += len(ids)
                log.info("schedule %s: enqueued jobs %s", sched.name, ids)
            nxt = sched.timetable.after(now)
            if nxt is not None:
                wait = min(wait, max(0.01, nxt - now))
        return wait

    def _run(self) -> None:
        while not self._stop.is_set():
            wait = self.fire_all()
            self._stop.wait(wait)
