"""A worker process with coroutine tasks: the owner's jobs run on one event loop.

Up to `capacity` coroutine jobs run at once; a plain (def) job runs alone, on
the loop's thread, once the coroutines before it have ended. Jobs start in the
order the owner handed them over. The owner learns which jobs started from a
("batch", started ids, results) message, sent before any of their bodies runs,
so it times every running job (walq/worker/pool.py) and kills the process if a
coroutine outlives its timeout by `kill_grace` (one that blocks the loop, or
ignores its cancellation).

Messages from the owner are those of child_main, plus ("cancel", job id): cancel
that running coroutine (reported as ("cancelled", id, attempt, None)).
"""

from __future__ import annotations

import asyncio
import contextlib
import select
from collections import deque
from multiprocessing.connection import Connection
from typing import Any

from walq.core.job import Job
from walq.core.retry import Permanent
from walq.core.text import excerpt
from walq.worker.child import failure_report, lost_report, run_one
from walq.worker.tasks import Task, Tasks, deferred_result

Result = tuple[str, int, int, "dict[str, Any] | None"]


def serve(conn: Connection, tasks: Tasks, capacity: int) -> None:
    """Run the owner's jobs on an event loop until told to exit or the owner is gone."""
    loop = asyncio.new_event_loop()
    try:
        runner = _Runner(conn, tasks, max(1, capacity), loop)
        loop.add_reader(conn.fileno(), runner.on_readable)
        loop.run_until_complete(runner.exited)
    finally:
        with contextlib.suppress(Exception):
            loop.remove_reader(conn.fileno())
        # Whatever still runs is abandoned (the owner releases or fails it), and
        # quietly: no "task was destroyed but it is pending" on the way out.
        loop.set_exception_handler(lambda loop, context: None)
        loop.close()


class _Runner:
    """The jobs of one worker process: waiting, running, and results not yet sent."""

    def __init__(
        self, conn: Connection, tasks: Tasks, capacity: int, loop: asyncio.AbstractEventLoop
    ) -> None:
        self.conn = conn
        self.tasks = tasks
        self.capacity = capacity
        self.loop = loop
        self.exited: asyncio.Future[None] = loop.create_future()
        self.waiting: deque[dict[str, Any]] = deque()
        self.running: dict[int, asyncio.Task[None]] = {}
        self.cancelling: set[int] = set()  # jobs the owner cancelled
        self.expired: set[int] = set()  # jobs cancelled at their timeout
        # Failures the owner has not read yet: nothing starts until it has (a
        # failure may open its task's breaker; see child_main).
        self.unresumed = 0
        self.started: list[int] = []
        self.results: list[Result] = []
        self.tick_due = False
        self.arrived = select.poll()
        self.arrived.register(conn.fileno(), select.POLLIN)

    # -- messages from the owner ---------------------------------------------------------

    def on_readable(self) -> None:
        """Apply every message that arrived, then start what may start."""
        try:
            while self.arrived.poll(0):
                if not self.take(self.conn.recv()):
                    self.exit()
                    return
        except (EOFError, OSError):
            self.exit()
            return
        self.pump()

    def take(self, msg: Any) -> bool:
        """Apply one message from the owner; False means exit."""
        if msg is None:
            return False
        if isinstance(msg, list):
            self.waiting.extend(msg)
            if self.unresumed:
                self.give_back(msg)
        elif msg[0] == "resume":
            self.unresumed = max(0, self.unresumed - (msg[1] if len(msg) > 1 else 1))
        elif msg[0] == "hold":
            held = [f for f in self.waiting if f["task"] in msg[1]]
            if held:
                self.give_back(held)
        elif msg[0] == "cancel":
            running = self.running.get(msg[1])
            if running is not None:
                self.cancelling.add(msg[1])
                running.cancel()
        return True

    def give_back(self, held: list[dict[str, Any]]) -> None:
        """Send jobs that have not started back to the owner (it releases them)."""
        ids = {f["id"] for f in held}
        self.waiting = deque(f for f in self.waiting if f["id"] not in ids)
        self.send(("held", sorted(ids)))

    def exit(self) -> None:
        if not self.exited.done():
            self.exited.set_result(None)

    # -- starting jobs ------------------------------------------------------------------

    def pump(self) -> None:
        """Start waiting jobs, in order, while there is room; then tell the owner."""
        while self.waiting and not self.unresumed and not self.exited.done():
            fields = self.waiting[0]
            task = self.tasks.get(fields["task"])
            if task is not None and task.is_async:
                if len(self.running) >= self.capacity:
                    break
                self.waiting.popleft()
                job = Job(**fields)
                self.running[job.id] = self.loop.create_task(self.run(job, task))
                self.started.append(job.id)
            else:
                # A plain handler blocks the loop: it runs alone, its start inferred
                # by the owner once no job of ours is running.
                if self.running:
                    break
                self.waiting.popleft()
                self.flush()
                self.finished(run_one(fields, self.tasks))
        self.flush()

    async def run(self, job: Job, task: Task) -> None:
        """One coroutine job, cancelled at its timeout; its result queued for the owner."""
        result: Result
        timer = self.loop.call_later(task.timeout, self.expire, job.id)
        try:
            returned = await task.fn(job.payload, job)
            kind = None if returned is None else deferred_result(returned)
            if kind is not None:
                with contextlib.suppress(Exception):
                    returned.close()
                raise Permanent(
                    f"the handler of task {excerpt(job.task)} returned {kind}, not a result: "
                    "the work it stands for never ran (await it in the handler)"
                )
            result = ("ok", job.id, job.attempt, None)
        except asyncio.CancelledError as exc:
            if job.id in self.expired:
                message = f"handler exceeded its timeout of {task.timeout:g} s; cancelled"
                result = ("error", job.id, job.attempt, lost_report("timeout", message))
            elif job.id in self.cancelling:
                result = ("cancelled", job.id, job.attempt, None)
            else:
                result = ("error", job.id, job.attempt, failure_report(exc, task))
        except BaseException as exc:  # every failure is reported, none escapes
            result = ("error", job.id, job.attempt, failure_report(exc, task))
        finally:
            timer.cancel()
            self.running.pop(job.id, None)
            self.cancelling.discard(job.id)
            self.expired.discard(job.id)
        self.finished(result)

    def expire(self, job_id: int) -> None:
        """A coroutine job's timeout: cancel it (the owner kills the process if it goes on)."""
        running = self.running.get(job_id)
        if running is not None:
            self.expired.add(job_id)
            running.cancel()

    def finished(self, result: Result) -> None:
        """Queue a job's result; after a failure, give back the jobs not started."""
        self.results.append(result)
        if result[0] == "error":
            self.unresumed += 1
            if self.waiting:
                self.give_back(list(self.waiting))
        if not self.tick_due:
            self.tick_due = True
            self.loop.call_soon(self.tick)

    def tick(self) -> None:
        """Once per loop iteration after jobs ended: start more, send the results."""
        self.tick_due = False
        self.pump()

    # -- to the owner -------------------------------------------------------------------

    def flush(self) -> None:
        """One message for the jobs started and ended since the last one."""
        if self.started or self.results:
            self.send(("batch", self.started, self.results))
            self.started, self.results = [], []

    def send(self, msg: Any) -> None:
        try:
            self.conn.send(msg)
        except (BrokenPipeError, OSError):
            self.exit()
