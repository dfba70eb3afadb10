"""What keeps a Worker's claims alive: a heartbeat for its leases, and its link to the queue.

A claim's lease is short (Worker(lease=), 15 s by default), so that the job of
a host that died is back within about one lease. While the owner lives, a
`Heartbeat` thread extends the leases of every job it holds, the ones running
and the ones waiting for a worker process, all in one call (extend_many) every
lease/3, whatever the worker loop is doing. A lease it finds lost (the owner
was stalled past its lease, or the server was unreachable that long) is
counted and logged: another host may run that job now, and this attempt's
result will be dropped.

`Link` is the Worker's view of the connection to a Redis queue: an outage is
logged once when it starts and once when it ends; writes that failed (acks,
fails, releases) are kept in order and retried with backoff and jitter. A
retry is safe: each names its attempt and claim, so one that had taken effect
before its reply was lost is refused, not applied twice. The file queue never
has an outage.
"""

from __future__ import annotations

import collections
import logging
import random
import threading
import time
from collections.abc import Callable, Iterable

from walq.backend import QueueBackend
from walq.core.job import Job
from walq.errors import BackendError, WalqError

log = logging.getLogger("walq.worker")

DEFAULT_LEASE = 15.0  # seconds: a dead host's jobs are back within about this long
BACKOFF_MIN = 0.1  # seconds before the first reconnection attempt
BACKOFF_MAX = 5.0  # seconds between attempts at most


class Link:
    """One outage at a time: logged once, retried with backoff and jitter, writes kept."""

    def __init__(self, where: str, rng: random.Random | None = None) -> None:
        self.where = where
        self._rng = rng or random.Random()
        self._lock = threading.Lock()
        self._down_since: float | None = None
        self._pause = BACKOFF_MIN
        self._retry_at = 0.0
        self.backlog: collections.deque[Callable[[], None]] = collections.deque()
        self.outages = 0

    @property
    def down(self) -> bool:
        return self._down_since is not None

    def failed(self, exc: BaseException) -> float:
        """Note a failed call; return the seconds until the next attempt."""
        with self._lock:
            now = time.monotonic()
            if self._down_since is None:
                self._down_since = now
                self._pause = BACKOFF_MIN
                self.outages += 1
                log.warning(
                    "connection lost: %s; handlers keep running and their results are "
                    "kept; reconnecting with backoff",
                    exc,
                )
            else:
                self._pause = min(self._pause * 2, BACKOFF_MAX)
            wait = self._pause * (0.5 + self._rng.random() / 2)  # jitter: hosts do not march
            self._retry_at = now + wait
            return wait

    def ok(self) -> None:
        """Note a call that reached the server: an outage, if any, has ended."""
        with self._lock:
            if self._down_since is None:
                return
            took = time.monotonic() - self._down_since
            self._down_since = None
            log.warning(
                "%s: connection back after %.1f s; %d results to report",
                self.where,
                took,
                len(self.backlog),
            )

    def ready(self) -> bool:
        """Whether to call the server now: it is up, or the next retry is due."""
        return self._down_since is None or time.monotonic() >= self._retry_at

    def retry_in(self) -> float | None:
        """Seconds until the next retry, while the server is down."""
        if self._down_since is None:
            return None
        return max(0.0, self._retry_at - time.monotonic())

    def call(self, write: Callable[[], None]) -> None:
        """Make `write` now, or keep it (in order) for when the server is back."""
        if self.backlog or not self.ready():
            self.backlog.append(write)
            self.flush()
            return
        try:
            write()
        except BackendError as exc:
            self.failed(exc)
            self.backlog.append(write)
            return
        self.ok()

    def flush(self) -> None:
        """Make the kept writes, oldest first, while the server answers."""
        while self.backlog and self.ready():
            try:
                self.backlog[0]()
            except BackendError as exc:
                self.failed(exc)
                return
            self.backlog.popleft()
            self.ok()


class Heartbeat:
    """Extends the leases of the jobs a Worker holds, every lease/3, from its own thread."""

    def __init__(
        self,
        queue: QueueBackend,
        lease: float,
        link: Link,
        on_lost: Callable[[int, int, WalqError], None],
    ) -> None:
        self.queue = queue
        self.lease = lease
        self.interval = lease / 3
        self.link = link
        self.on_lost = on_lost
        self._held: dict[int, int] = {}  # job -> attempt, from claim to result
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.beats = 0

    def hold(self, jobs: Iterable[Job]) -> None:
        """Keep these claimed jobs' leases alive (call right after the claim)."""
        with self._lock:
            for job in jobs:
                self._held[job.id] = job.attempt

    def drop(self, job_id: int) -> None:
        """Stop extending a job's lease (call before its result or release is written)."""
        with self._lock:
            self._held.pop(job_id, None)

    def drop_many(self, job_ids: Iterable[int]) -> None:
        """drop() for many jobs, taking the lock once."""
        with self._lock:
            held = self._held
            for jid in job_ids:
                held.pop(jid, None)

    def held(self) -> int:
        with self._lock:
            return len(self._held)

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="walq-heartbeat", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
            self._thread = None

    def _run(self) -> None:
        wait = self.interval
        while not self._stop.wait(wait):
            wait = self.interval
            try:
                called = self.beat()
            except BackendError as exc:
                wait = min(self.interval, self.link.failed(exc))
            except WalqError as exc:  # the queue was closed under us: nothing to keep
                log.debug("heartbeat: %s", exc)
            except Exception:
                log.exception("heartbeat failed; trying again in %.1f s", wait)
            else:
                if called:
                    self.link.ok()

    def beat(self) -> bool:
        """Extend every held lease in one call; report those found lost.

        False if there was nothing to extend (no call made).
        """
        with self._lock:
            held = list(self._held.items())
        if not held:
            return False
        refused = self.queue.extend_many(
            [jid for jid, _ in held], lease=self.lease, attempts=[a for _, a in held]
        )
        self.beats += 1
        attempts = dict(held)
        for jid, exc in refused:
            with self._lock:
                # A job dropped meanwhile finished here: its refusal is no loss.
                if self._held.get(jid) != attempts[jid]:
                    continue
                del self._held[jid]
            self.on_lost(jid, attempts[jid], exc)
        return True
