"""The worker processes as the owner sees them: starting one, killing one, why one died."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections import deque
from multiprocessing.connection import Connection
from typing import Any

import attrs

from walq.core.job import Job
from walq.worker.child import GROUP_SIGNALS, child_main
from walq.worker.tasks import Task, Tasks

# The Worker counter each cause of a lost attempt counts in (a cancellation: none).
DEATH_COUNTERS = {"timeout": "timeouts", "memory": "memory", "signal": "crashes", "exit": "crashes"}


@attrs.define
class Slot:
    """One worker process as the owner sees it."""

    proc: Any
    conn: Connection
    jobs: deque[tuple[Job, Task]] = attrs.field(factory=deque)
    head_started: float = 0.0
    completed: int = 0
    kill_reason: str | None = None
    kill_sent: float = 0.0
    retiring: bool = False
    spawned: float = 0.0  # when the process was started (monotonic)
    ready: bool = False  # it imported its tasks: jobs may be handed to it

    @classmethod
    def start(
        cls, ctx: Any, tasks_arg: Tasks | bytes, group_signals: tuple[signal.Signals, ...]
    ) -> Slot:
        """Start a worker process (child_main) with a pipe to it."""
        parent_conn, child_conn = ctx.Pipe()
        proc = ctx.Process(
            target=child_main,
            args=(child_conn, tasks_arg, os.getpid(), group_signals),
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

    def kill(self, reason: str) -> None:
        """SIGKILL: worker processes ignore SIGTERM (the group's signal is the owner's)."""
        self.kill_reason = reason
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


def death_cause(
    slot: Slot, code: int | None, task: Task, max_memory: int | None
) -> tuple[str, str]:
    """Why a worker process ended during `task`'s job: (cause, message)."""
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
