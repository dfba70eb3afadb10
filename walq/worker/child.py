"""What runs in a worker process: import the tasks, then run the jobs the owner hands over.

Every failure of a handler becomes a report (plain data) sent back to the owner,
which records it; nothing a handler does can take the process's loop down
short of the process dying, which the owner sees too (walq/worker/pool.py).
"""

from __future__ import annotations

import contextlib
import os
import pickle
import select
import signal
import sys
import threading
import time
import traceback
from collections import deque
from multiprocessing.connection import Connection
from typing import Any

from walq.core import events as ev
from walq.core.job import Job
from walq.core.jobspec import FAILS_FOR_GOOD, MAX_PAYLOAD_LIMIT, encode_result
from walq.core.retry import Permanent, RetryAfter
from walq.core.text import excerpt
from walq.errors import WalqError
from walq.worker.tasks import Task, Tasks, deferred_result


def _set_parent_death_signal() -> None:
    """Ask Linux to SIGKILL this process if the owner dies (no orphans after kill -9)."""
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        import ctypes  # noqa: PLC0415 - Linux only

        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)


def _watch_parent(parent: int) -> None:
    """Exit if the owner goes away (where PDEATHSIG is not available)."""
    while True:
        time.sleep(1.0)
        if os.getppid() != parent:
            os._exit(3)


def lost_report(cause: str, message: str, *, shared: bool = False) -> dict[str, Any]:
    """The report of an attempt that ended without an exception (a timeout, a dead
    worker process): the same fields a handler's failure report has. `shared`:
    other jobs ran in the process too, so the loss may not be this job's doing
    (charged, but its task's breaker leaves it out)."""
    return {"cause": cause, "type": cause, "message": message, "traceback": "",
            "permanent": False, "retry_after": None, "no_retry": -1,
            "retry_on": -1, "shared": shared}  # fmt: skip


def failure_report(exc: BaseException, task: Task | None) -> dict[str, Any]:
    """What the owner needs to know of an exception, as plain data."""
    report: dict[str, Any] = {
        "cause": "memory" if isinstance(exc, MemoryError) else "exception",
        "type": f"{type(exc).__module__}.{type(exc).__qualname__}",
        "message": str(exc),
        "traceback": "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)),
        "permanent": isinstance(exc, Permanent),
        "retry_after": exc.delay if isinstance(exc, RetryAfter) else None,
        "no_retry": -1,
        "retry_on": -1,
    }
    if task is not None:
        policy = task.policy
        for i, kind in enumerate(policy.no_retry):
            if isinstance(exc, kind):
                report["no_retry"] = i
                break
        for i, kind in enumerate(policy.retry_on):
            if isinstance(exc, kind):
                report["retry_on"] = i
                break
    return report


# Signals a process group gets as a whole (systemd's stop, timeout(1), Ctrl-C):
# only the owner acts on them; its workers finish their jobs (the owner's drain).
GROUP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def _ignore_group_signal(signum: int, frame: object) -> None:
    """A no-op handler, not SIG_IGN: handled signals reset to default on exec,
    so the processes a handler starts still stop on SIGTERM."""


def run_one(fields: dict[str, Any], tasks: Tasks) -> tuple[str, int, int, dict[str, Any] | None]:
    """Run one job's handler; its outcome as the message the owner reads."""
    job = Job(**fields)
    task = tasks.get(job.task)
    try:
        if task is None:
            raise Permanent(f"no handler for task {excerpt(job.task)} in this worker")
        returned = task.fn(job.payload, job)
        kind = deferred_result(returned)
        if kind is not None:
            with contextlib.suppress(Exception):
                returned.close()  # a coroutine: no "never awaited" warning
            raise Permanent(
                f"the handler of task {excerpt(job.task)} returned {kind}, not a result: "
                "the work it stands for never ran (register the async def function itself)"
            )
        report = ok_report(job, returned)
    except BaseException as exc:  # every failure is reported, none escapes
        return ("error", job.id, job.attempt, failure_report(exc, task))
    return ("ok", job.id, job.attempt, report)


def ok_report(job: Job, returned: Any) -> dict[str, Any] | None:
    """What a finished attempt's ack commits besides itself: the encoded result and the
    follow-up jobs (walq.worker.outcomes); None if nothing. Permanent if the value is
    neither JSON nor bytes: retrying would return the same."""
    try:
        rkind, data = encode_result(returned, MAX_PAYLOAD_LIMIT, job.id, job.task)
    except WalqError as exc:
        raise Permanent(f"{exc}: {FAILS_FOR_GOOD}") from None
    if rkind == ev.RESULT_NONE and not job.outbox:
        return None
    return {"result": (rkind, data), "enqueue": job.outbox}


def child_main(
    conn: Connection,
    tasks_arg: Tasks | bytes,
    parent: int,
    group_signals: tuple[signal.Signals, ...] = GROUP_SIGNALS,
    async_concurrency: int = 1,
) -> None:
    """A worker process: import the tasks, say "ready", then run jobs one at a time
    (or, with coroutine tasks, on an event loop: walq/worker/coro.py).

    Messages from the owner: a list of jobs (queued here, run in order), None
    (exit now, without starting the jobs still queued), ("hold", task names)
    (send back the queued jobs of those tasks, unstarted), or ("resume",) (the
    owner recorded our last failure). To the owner: one result per job run,
    ("held", job ids) for jobs given back unstarted, and first ("ready", pid)
    or ("start-failed", summary, traceback).

    After a failure, which may trip its task's breaker, nothing starts until
    the owner has read it: queued jobs, and jobs the owner handed over before
    it read the failure, go back unstarted (the policy decides again).
    """
    # The owner blocked these while starting us, so a group SIGTERM during our
    # start-up is held back; from here on, it is the owner's to act on.
    for sig in group_signals:
        signal.signal(sig, _ignore_group_signal)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, GROUP_SIGNALS)
    _set_parent_death_signal()
    if os.getppid() != parent:
        os._exit(3)
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()
    try:  # spawn: unpickling imports the task modules
        tasks = tasks_arg if isinstance(tasks_arg, Tasks) else pickle.loads(tasks_arg)
    except BaseException as exc:  # the user's import error, reported as such
        summary = "".join(traceback.format_exception_only(type(exc), exc)).strip()
        with contextlib.suppress(BrokenPipeError, OSError):
            conn.send(("start-failed", summary, traceback.format_exc()))
        return
    try:
        conn.send(("ready", os.getpid()))
    except (BrokenPipeError, OSError):
        return
    if tasks.has_coroutines:
        from walq.worker.coro import serve  # noqa: PLC0415 - asyncio only where it is used

        serve(conn, tasks, async_concurrency)
        return
    waiting: deque[dict[str, Any]] = deque()
    paused = False

    def take(msg: Any) -> bool:
        """Apply one message from the owner; False means exit."""
        nonlocal paused
        if msg is None:
            return False
        if isinstance(msg, list):
            waiting.extend(msg)
            if paused:
                give_back(msg)
        elif msg[0] == "resume":
            paused = False
        elif msg[0] == "hold":
            held = [f for f in waiting if f["task"] in msg[1]]
            if held:
                give_back(held)
        return True

    def give_back(held: list[dict[str, Any]]) -> None:
        for fields in held:
            waiting.remove(fields)
        conn.send(("held", [f["id"] for f in held]))

    # Connection.poll() builds a selector per call: a poll object made once is
    # ~10x cheaper, and this check runs before every job.
    arrived = select.poll()
    arrived.register(conn.fileno(), select.POLLIN)
    try:
        while True:
            # Every message that arrived is applied before the next job starts:
            # a hold sent while the previous job ran stops the queued ones.
            if not waiting and not take(conn.recv()):
                return
            while arrived.poll(0):
                if not take(conn.recv()):
                    return
            if not waiting:
                continue
            result = run_one(waiting.popleft(), tasks)
            conn.send(result)
            if result[0] == "error":
                paused = True
                if waiting:
                    give_back(list(waiting))
    except (EOFError, BrokenPipeError, OSError):
        return
