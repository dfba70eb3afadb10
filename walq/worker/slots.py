"""The worker processes as the owner sees them: starting one, how many jobs it may
hold, killing one, why one died."""

from __future__ import annotations

import contextlib
import os
import pickle
import select
import signal
import struct
import time
from multiprocessing.connection import Connection
from typing import Any

import attrs

from walq.core.job import Job
from walq.worker.child import GROUP_SIGNALS, child_main
from walq.worker.tasks import Task, Tasks

READ_SIZE = 1 << 16  # bytes read from a worker's pipe at once
_LENGTH = struct.Struct("!i")  # multiprocessing.Connection's frame header
_LONG_LENGTH = struct.Struct("!Q")  # ... after a length of -1, for messages of 2 GiB or more

SHORT_JOB = 0.01  # seconds: jobs that typically run shorter than this are prefetched

# The Worker counter each cause of a lost attempt counts in (a cancellation: none).
DEATH_COUNTERS = {"timeout": "timeouts", "memory": "memory", "signal": "crashes", "exit": "crashes"}


@attrs.define
class Slot:
    """One worker process as the owner sees it."""

    proc: Any
    conn: Connection
    # The jobs handed to it and not yet ended, in the order handed (it starts them so).
    jobs: dict[int, tuple[Job, Task]] = attrs.field(factory=dict)
    # Those it started, and when (as the owner knows it): a coroutine job's start
    # is reported by the process; a plain job starts once nothing else runs.
    started: dict[int, float] = attrs.field(factory=dict)
    cancel_sent: dict[int, float] = attrs.field(factory=dict)  # coroutines asked to stop
    completed: int = 0
    kill_reason: str | None = None
    kill_job: int | None = None  # the job whose timeout or cancellation the kill is for
    kill_sent: float = 0.0
    retiring: bool = False
    spawned: float = 0.0  # when the process was started (monotonic)
    ready: bool = False  # it imported its tasks: jobs may be handed to it

    # A poll object on the pipe, made once: Connection.poll() builds a selector
    # per call, and the owner asks before every message.
    _arrived: Any = None
    _inbox: bytearray = attrs.field(factory=bytearray)  # the start of a message cut short

    def has_message(self) -> bool:
        """Whether a message (or the pipe's end) is waiting in the pipe from the worker."""
        if self._arrived is None:
            self._arrived = select.poll()
            self._arrived.register(self.conn.fileno(), select.POLLIN)
        return bool(self._arrived.poll(0))

    def messages(self) -> list[Any]:
        """The whole messages waiting in the pipe from the worker, read in one system call.

        The frames are Connection.send's (a 4-byte big-endian length, or -1 and an
        8-byte one, then the pickle); Connection.recv would read each message's
        header and body separately. A message cut short stays buffered for the next
        call. EOFError once the worker's end is closed. Call only when the pipe is
        readable (has_message), or the read blocks.
        """
        data = os.read(self.conn.fileno(), READ_SIZE)
        if not data:
            raise EOFError
        buf = self._inbox
        buf += data
        out: list[Any] = []
        at, end = 0, len(buf)
        while end - at >= 4:
            (size,) = _LENGTH.unpack_from(buf, at)
            head = 4
            if size == -1:
                if end - at < 12:
                    break
                (size,) = _LONG_LENGTH.unpack_from(buf, at + 4)
                head = 12
            if end - at - head < size:
                break
            out.append(pickle.loads(buf[at + head : at + head + size]))
            at += head + size
        del buf[:at]
        return out

    @classmethod
    def start(
        cls,
        ctx: Any,
        tasks_arg: Tasks | bytes,
        group_signals: tuple[signal.Signals, ...],
        async_concurrency: int = 1,
    ) -> Slot:
        """Start a worker process (child_main) with a pipe to it."""
        parent_conn, child_conn = ctx.Pipe()
        proc = ctx.Process(
            target=child_main,
            args=(child_conn, tasks_arg, os.getpid(), group_signals, async_concurrency),
            name="walq-worker",
            daemon=True,
        )
        # The child inherits this mask: a group SIGTERM during its start-up stays
        # pending until child_main has made it harmless.
        old = signal.pthread_sigmask(signal.SIG_BLOCK, GROUP_SIGNALS)
        try:
            proc.start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)
        child_conn.close()
        return cls(proc=proc, conn=parent_conn, spawned=time.monotonic())

    @property
    def pid(self) -> int:
        return int(self.proc.pid)

    def settle(self, now: float) -> None:
        """Nothing runs: the first job waiting, if a plain one, starts now."""
        if not self.started and self.jobs:
            first = next(iter(self.jobs))
            if not self.jobs[first][1].is_async:
                self.started[first] = now

    def take(self, job_id: int) -> tuple[Job, Task, float] | None:
        """Forget an ended job: (job, task, when it started), None if not held."""
        entry = self.jobs.pop(job_id, None)
        if entry is None:
            return None
        self.cancel_sent.pop(job_id, None)
        now = time.monotonic()
        return entry[0], entry[1], self.started.pop(job_id, now)

    def running(self) -> list[tuple[Job, Task, float]]:
        """The jobs started and not ended: (job, task, start)."""
        return [(*self.jobs[jid], at) for jid, at in self.started.items() if jid in self.jobs]

    def kill(self, reason: str, job_id: int | None = None) -> None:
        """SIGKILL: worker processes ignore SIGTERM (the group's signal is the owner's)."""
        self.kill_reason = reason
        self.kill_job = job_id
        self.kill_sent = time.monotonic()
        self.signal(signal.SIGKILL)

    def signal(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, OSError):
            os.kill(self.pid, sig)

    def rss(self) -> int | None:
        """The process's resident memory in bytes (None: unknown)."""
        try:
            with open(f"/proc/{self.pid}/statm") as f:
                return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, IndexError):
            return None


@attrs.define
class Depth:
    """How many jobs to hand each worker process, learnt from how long attempts run."""

    prefetch: int
    lease: float
    max_tasks_per_child: int | None
    runs: int = 1  # jobs a worker process runs at once (async_concurrency with coroutine tasks)
    typical_run: float = 0.0  # a moving average of how long attempts run (seconds)
    finished: int = 0  # attempts whose outcome came back

    def learn(self, seconds: float) -> None:
        """An attempt finished after running `seconds`."""
        self.finished += 1
        self.typical_run += (seconds - self.typical_run) * 0.05

    def space(self, slot: Slot) -> int:
        """How many more jobs a worker may be handed: its prefetch for each job it
        runs at once, and what its max_tasks_per_child leaves (so it is recycled
        after exactly that many)."""
        # Prefetch pays for short jobs (it hides the round trip to the owner);
        # for jobs that take a while it only delays others behind a busy worker.
        depth = self.prefetch if self.typical_run < SHORT_JOB else 1
        held = min(depth, self._lease_depth()) * self.runs
        if self.runs > 1 and self.finished:
            # An event loop starts a waiting job the moment one ends: half as many
            # again hide the round trip to the owner (a sync worker's prefetch).
            held += self.runs // 2
        space = held - len(slot.jobs)
        if self.max_tasks_per_child is not None:
            space = min(space, self.max_tasks_per_child - slot.completed - len(slot.jobs))
        return max(0, space)

    def _lease_depth(self) -> int:
        """How many jobs one worker may hold: what it will start within half a lease.

        Until an attempt has finished, how long jobs run is unknown: one each
        (a rescued job would otherwise wait behind long ones, held from others).
        """
        if not self.finished:
            return 1
        return max(1, int(self.lease / 2 / max(self.typical_run, 1e-3)))


class Waiter:
    """Waits on the owner's wakeup pipe and every worker's pipe and exit sentinel.

    The poll object is made again only when the set of workers changes
    (multiprocessing.connection.wait builds a selector on every call, and the
    owner waits once per round).
    """

    def __init__(self) -> None:
        self._poll: Any = None
        self._fds: tuple[int, ...] = ()

    def wait(self, wake_fd: int, slots: list[Slot], timeout: float | None) -> set[int]:
        """The file descriptors ready within `timeout` seconds (None: no limit)."""
        fds = (wake_fd, *[fd for s in slots for fd in (s.conn.fileno(), s.proc.sentinel)])
        if fds != self._fds:
            self._poll = select.poll()
            for fd in fds:
                self._poll.register(fd, select.POLLIN)
            self._fds = fds
        ms = None if timeout is None else max(0, int(timeout * 1000 + 0.999))
        while True:
            try:
                return {fd for fd, _ in self._poll.poll(ms)}
            except InterruptedError:  # pragma: no cover -- PEP 475 retries poll
                continue


def death_cause(
    slot: Slot, code: int | None, job: Job, task: Task, max_memory: int | None
) -> tuple[str, str]:
    """Why a worker process ended during `task`'s job: (cause, message)."""
    if slot.kill_job is not None and slot.kill_job != job.id:
        return "killed", (
            f"worker process killed ({slot.kill_reason} of job {slot.kill_job}, which "
            "ran beside this one on its event loop)"
        )
    if slot.kill_reason == "timeout" and task.is_async:
        return "timeout", (
            f"handler exceeded its timeout of {task.timeout:g} s and did not end within "
            "kill_grace of its cancellation (blocking the event loop?); worker killed"
        )
    if slot.kill_reason == "timeout":
        return "timeout", f"handler exceeded its timeout of {task.timeout:g} s; worker killed"
    if slot.kill_reason == "memory":
        return "memory", f"worker exceeded max_memory ({max_memory} bytes); killed"
    if slot.kill_reason == "cancelled":
        return "cancelled", "job cancelled; worker killed"
    if code is not None and code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return "signal", f"worker process killed by {name} (signal {-code})"
    return "exit", f"worker process exited with code {code} during the job"
