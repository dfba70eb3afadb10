"""AsyncQueue: the queue API (walq.backend.QueueBackend) as coroutines, on either backend.

    async with await walq.AsyncQueue.open("/var/lib/app/queue") as q:
        job_id = await q.enqueue("send_email", {"to": "a@b"})

How each call keeps the event loop free:

- On a directory queue (a backend with a `sync_mode`), a durable write --
  enqueue, enqueue_many, ack, ack_many, fail, release, cancel, requeue,
  purge -- is appended on the loop's thread with sync=False (a buffered
  append, microseconds), then awaits the group committer
  (walq.aio.commit): one thread, one fdatasync and one wake-up of the loop
  for every write appended before that sync began. No thread is parked per
  caller.
- Claims wait on the loop, not in a thread: each attempt is a claim without
  waiting run in the executor (its start record is made durable there), and
  between attempts the coroutine awaits the backend's ready_listeners, the
  next due time, or one second, whichever is first.
- Everything else, and every call on Redis, runs in a thread pool of
  `threads` threads (redis-py's blocking client; not redis.asyncio).

An AsyncQueue belongs to the event loop that opened it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from types import TracebackType
from typing import Any, TypeVar

from walq.aio.commit import GroupCommitter
from walq.backend import EnqueueItem, QueueBackend
from walq.backends import open as open_backend
from walq.core.job import DeadJob, Job, Ran
from walq.core.jobspec import check_seconds
from walq.core.schedule import Schedule
from walq.core.state import JobInfo
from walq.errors import ArgumentError, ClosedError, ResultTimeout, StateError, WalqError

T = TypeVar("T")

DEFAULT_THREADS = 16
_MAX_CLAIM_NAP = 1.0  # seconds a waiting claim sleeps at most between attempts


class AsyncQueue:
    """A QueueBackend's calls as coroutines, for asyncio code (see the module)."""

    def __init__(
        self,
        backend: QueueBackend,
        loop: asyncio.AbstractEventLoop,
        *,
        threads: int = DEFAULT_THREADS,
    ) -> None:
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise ArgumentError(f"threads must be a positive integer, not {threads!r}")
        self.backend = backend
        self._loop = loop
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="walq-aio")
        # A directory's queue takes sync=False writes and makes them durable with
        # one sync(): its group committer. None for a backend durable per call.
        self._committer: GroupCommitter | None = None
        self._sync_mode: str | None = getattr(backend, "sync_mode", None)
        if self._sync_mode is not None:
            self._committer = GroupCommitter(backend.sync, loop, backend.path)
        self._ready: asyncio.Future[None] | None = None  # resolved at the next ready news
        self._closed = False

    @classmethod
    async def open(
        cls, target: str, *, threads: int = DEFAULT_THREADS, **options: Any
    ) -> AsyncQueue:
        """Open the queue at `target` (a directory or a URL) as `walq.open` does, in a thread.

        `options` go to the backend's `open`; `threads` sizes the pool that runs
        the calls that block (claims' durable starts, stats, and all of Redis).
        """
        loop = asyncio.get_running_loop()
        backend = await loop.run_in_executor(
            None, functools.partial(open_backend, target, **options)
        )
        try:
            return cls(backend, loop, threads=threads)
        except BaseException:
            backend.close()
            raise

    # -- what the backend is ------------------------------------------------------------

    @property
    def path(self) -> str:
        return self.backend.path

    @property
    def max_payload(self) -> int:
        return self.backend.max_payload

    @property
    def ready_listeners(self) -> list[Callable[[], None]]:
        return self.backend.ready_listeners

    @property
    def cancel_listeners(self) -> list[Callable[[int], None]]:
        return self.backend.cancel_listeners

    @property
    def commits(self) -> int:
        """Group commits the committer made (each one wake-up of the loop); 0 on Redis."""
        return 0 if self._committer is None else self._committer.commits

    # -- producing ----------------------------------------------------------------------

    async def enqueue(
        self,
        task: str,
        payload: Any = None,
        *,
        key: str | None = None,
        delay: float = 0.0,
        priority: int = 0,
        max_attempts: int | None = None,
        sync: bool | None = None,
        timeout: float = 0.0,
        after: Iterable[int] | None = None,
        after_policy: str = "cancel",
        run_at: datetime | None = None,
        unique_for: float | None = None,
    ) -> int:
        call = functools.partial(
            self.backend.enqueue, task, payload, key=key, delay=delay, priority=priority,
            max_attempts=max_attempts, after=None if after is None else list(after),
            after_policy=after_policy, run_at=run_at, unique_for=unique_for,
        )  # fmt: skip
        job_id: int = await self._write(call, sync, timeout)
        return job_id

    async def enqueue_many(
        self, items: Iterable[EnqueueItem], *, sync: bool | None = None, timeout: float = 0.0
    ) -> list[int]:
        ids: list[int] = await self._write(
            functools.partial(self.backend.enqueue_many, list(items)), sync, timeout
        )
        return ids

    # -- consuming ----------------------------------------------------------------------

    async def claim(
        self, lease: float = 60.0, timeout: float = 0.0, *, tasks: Iterable[str] | None = None
    ) -> Job | None:
        jobs = await self.claim_many(1, lease=lease, timeout=timeout, tasks=tasks)
        return jobs[0] if jobs else None

    async def claim_many(
        self,
        n: int,
        *,
        lease: float = 60.0,
        timeout: float = 0.0,
        accept: Callable[[JobInfo], bool | float] | None = None,
        tasks: Iterable[str] | None = None,
    ) -> list[Job]:
        """Take up to `n` ready jobs (see QueueBackend.claim_many); `accept` runs in a thread.

        With a timeout, the wait is on the loop: attempts without waiting, woken
        by the backend's ready listeners (or a due time, or each second).
        """
        timeout = check_seconds("timeout", timeout)
        wanted = None if tasks is None else list(tasks)
        attempt = functools.partial(
            self.backend.claim_many, n, lease=lease, timeout=0.0, accept=accept, tasks=wanted
        )
        if not timeout:
            jobs: list[Job] = await self._run(attempt)
            return jobs
        deadline = self._loop.time() + timeout
        self._listen()
        while True:
            news = self._news()  # taken before the attempt: news during it is not lost
            jobs = await self._run(attempt)
            left = deadline - self._loop.time()
            if jobs or left <= 0:
                return jobs
            due = self.backend.next_due_in()
            nap = min(left, _MAX_CLAIM_NAP, _MAX_CLAIM_NAP if due is None else max(due, 0.001))
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(news), nap)

    async def ack(
        self,
        job_id: int,
        *,
        attempt: int | None = None,
        sync: bool | None = None,
        result: Any = None,
        enqueue: Iterable[EnqueueItem] = (),
        ran: Ran | None = None,
    ) -> None:
        call = functools.partial(
            self.backend.ack, job_id, attempt=attempt, result=result, enqueue=list(enqueue),
            ran=ran,
        )  # fmt: skip
        await self._write(call, sync)

    async def ack_many(
        self,
        job_ids: Sequence[int],
        *,
        attempts: Sequence[int] | None = None,
        sync: bool | None = None,
        strict: bool = True,
        results: Sequence[Any] | None = None,
        enqueues: Sequence[Iterable[EnqueueItem]] | None = None,
        ran: Sequence[Ran] | None = None,
    ) -> list[tuple[int, StateError]]:
        call = functools.partial(self.backend.ack_many, job_ids, attempts=attempts, strict=strict,
                                 results=results, enqueues=enqueues, ran=ran)  # fmt: skip
        refused: list[tuple[int, StateError]] = await self._write(call, sync)
        return refused

    async def result(self, job_id: int, timeout: float | None = None) -> Any:
        """The job's result (see QueueBackend.result); the wait is on the loop, polling."""
        wait = None if timeout is None else check_seconds("timeout", timeout)
        deadline = None if wait is None else self._loop.time() + wait
        pause = 0.01
        while True:
            try:
                return await self._run(functools.partial(self.backend.result, job_id, 0.0))
            except ResultTimeout:
                left = None if deadline is None else deadline - self._loop.time()
                if left is not None and left <= 0:
                    raise
            await asyncio.sleep(pause if left is None else min(pause, left))
            pause = min(pause * 2, 0.25)

    async def fail(
        self,
        job_id: int,
        error: str = "",
        permanent: bool = False,
        *,
        attempt: int | None = None,
        delay: float | None = None,
        sync: bool | None = None,
        ran: Ran | None = None,
    ) -> str:
        call = functools.partial(
            self.backend.fail, job_id, error, permanent, attempt=attempt, delay=delay, ran=ran
        )
        status: str = await self._write(call, sync)
        return status

    async def release(
        self,
        job_id: int,
        *,
        attempt: int | None = None,
        sync: bool | None = None,
        ran: Ran | None = None,
    ) -> None:
        call = functools.partial(self.backend.release, job_id, attempt=attempt, ran=ran)
        await self._write(call, sync)

    async def extend(self, job_id: int, lease: float, *, attempt: int | None = None) -> None:
        await self._run(functools.partial(self.backend.extend, job_id, lease, attempt=attempt))

    async def extend_many(
        self, job_ids: Sequence[int], lease: float, *, attempts: Sequence[int] | None = None
    ) -> list[tuple[int, WalqError]]:
        refused: list[tuple[int, WalqError]] = await self._run(
            functools.partial(self.backend.extend_many, job_ids, lease, attempts=attempts)
        )
        return refused

    async def next_due_in(self) -> float | None:
        due: float | None = await self._run(self.backend.next_due_in)
        return due

    # -- administration -----------------------------------------------------------------

    async def fire_schedule(self, schedule: Schedule) -> list[int]:
        ids: list[int] = await self._run(functools.partial(self.backend.fire_schedule, schedule))
        return ids

    async def schedules(self) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = await self._run(self.backend.schedules)
        return rows

    async def status(self, job_id: int) -> str:
        status: str = await self._run(functools.partial(self.backend.status, job_id))
        return status

    async def cancel(self, job_id: int, *, sync: bool | None = None) -> bool:
        cancelled: bool = await self._write(functools.partial(self.backend.cancel, job_id), sync)
        return cancelled

    async def dead_jobs(self) -> list[DeadJob]:
        dead: list[DeadJob] = await self._run(self.backend.dead_jobs)
        return dead

    async def requeue(self, job_id: int, *, sync: bool | None = None) -> None:
        await self._write(functools.partial(self.backend.requeue, job_id), sync)

    async def purge(self, job_ids: Iterable[int] | None = None, *, sync: bool | None = None) -> int:
        ids = None if job_ids is None else list(job_ids)
        purged: int = await self._write(functools.partial(self.backend.purge, ids), sync)
        return purged

    async def job_detail(self, job_id: int) -> dict[str, Any]:
        detail: dict[str, Any] = await self._run(functools.partial(self.backend.job_detail, job_id))
        return detail

    async def find(self, key: str) -> int | None:
        found: int | None = await self._run(functools.partial(self.backend.find, key))
        return found

    async def jobs(
        self,
        state: str | None = None,
        task: str | None = None,
        *,
        limit: int = 100,
        after: int = 0,
    ) -> list[dict[str, Any]]:
        call = functools.partial(self.backend.jobs, state, task, limit=limit, after=after)
        rows: list[dict[str, Any]] = await self._run(call)
        return rows

    async def pause(self, task: str, *, sync: bool | None = None) -> bool:
        changed: bool = await self._write(functools.partial(self.backend.pause, task), sync)
        return changed

    async def resume(self, task: str, *, sync: bool | None = None) -> bool:
        changed: bool = await self._write(functools.partial(self.backend.resume, task), sync)
        return changed

    async def paused(self) -> list[str]:
        tasks: list[str] = await self._run(self.backend.paused)
        return tasks

    async def set_task_defaults(self, task: str, *, max_attempts: int) -> None:
        await self._run(
            functools.partial(self.backend.set_task_defaults, task, max_attempts=max_attempts)
        )

    async def stats(self) -> dict[str, Any]:
        stats: dict[str, Any] = await self._run(self.backend.stats)
        return stats

    async def record_worker_status(self, status: Mapping[str, Any], ttl: float = 30.0) -> None:
        await self._run(functools.partial(self.backend.record_worker_status, status, ttl))

    async def shared_gates(self) -> Any | None:
        gates = await self._run(self.backend.shared_gates)
        return gates

    async def sync(self) -> None:
        """Make every write so far durable (through the group committer where there is one)."""
        self._check_open()
        if self._committer is not None:
            await self._committer.durable()
        else:
            await self._run(self.backend.sync)

    async def close(self) -> None:
        """Commit what waits, stop the threads and close the backend (idempotent)."""
        if self._closed:
            return
        self._closed = True
        if self._ready is not None:
            self._unlisten()
        committer = self._committer
        if committer is not None:
            await self._loop.run_in_executor(None, committer.close)
        await self._loop.run_in_executor(None, self.backend.close)
        self._pool.shutdown(wait=False)

    async def __aenter__(self) -> AsyncQueue:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- the two ways a call runs ---------------------------------------------------------

    async def _run(self, call: Callable[[], T]) -> T:
        """Run a blocking call of the backend in the pool."""
        self._check_open()
        return await self._loop.run_in_executor(self._pool, call)

    async def _write(self, call: Callable[..., T], sync: bool | None, timeout: float = 0.0) -> T:
        """A state change, durable when it returns per `sync` and the queue's mode.

        On a directory: appended now (with sync=False), then committed by the
        group committer. An enqueue that may wait for room (timeout) appends in
        the pool, since it blocks while the queue is full.
        """
        self._check_open()
        committer = self._committer
        extra: dict[str, Any] = {"timeout": timeout} if timeout else {}
        if committer is None:
            return await self._loop.run_in_executor(
                self._pool, functools.partial(call, sync=sync, **extra)
            )
        if timeout:
            result = await self._loop.run_in_executor(
                self._pool, functools.partial(call, sync=False, **extra)
            )
        else:
            result = call(sync=False)  # a buffered append: no I/O, no wait
        if sync or (sync is None and self._sync_mode == "always"):
            await committer.durable()
        return result

    # -- waking waiting claims -------------------------------------------------------------

    def _listen(self) -> None:
        if self._ready is None:
            self._ready = self._loop.create_future()
            self.backend.ready_listeners.append(self._heard)

    def _unlisten(self) -> None:
        with contextlib.suppress(ValueError):
            self.backend.ready_listeners.remove(self._heard)

    def _heard(self) -> None:
        """A ready listener (any thread): wake the claims waiting now."""
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
            self._loop.call_soon_threadsafe(self._wake_claims)

    def _wake_claims(self) -> None:
        ready, self._ready = self._ready, self._loop.create_future()
        if ready is not None and not ready.done():
            ready.set_result(None)

    def _news(self) -> asyncio.Future[None]:
        assert self._ready is not None
        return self._ready

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError(f"{self.backend.path}: the async queue is closed")
