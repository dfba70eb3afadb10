"""The supervised process pool: every job runs in a worker process the owner can kill.

One loop in the owner does everything, one iteration at a time: claim jobs for
idle workers (one durable claim record for the batch), hand them over pipes,
wait for results, worker deaths or deadlines, and record every outcome. A
handler's exception, a worker that dies, a handler past its timeout or its
memory cap: each becomes a recorded failure with its cause, never a dead pool.

Results for an attempt that no longer holds its job (its lease expired, it was
cancelled) are dropped: the job's current state stands (docs/WORKER.md).
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import multiprocessing.connection
import os
import pickle
import random
import select
import signal
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

import attrs

from walq.backend import QueueBackend
from walq.core.job import Job
from walq.core.jobspec import check_seconds
from walq.core.retry import Permanent, RetryAfter, RetryBudget
from walq.core.state import JobInfo
from walq.core.text import excerpt
from walq.errors import (
    ArgumentError,
    BackendError,
    LogFailedError,
    StateError,
    WalqError,
    WorkerStartError,
)
from walq.worker.heartbeat import DEFAULT_LEASE, Heartbeat, Link
from walq.worker.tasks import Task, Tasks, deferred_result

log = logging.getLogger("walq.worker")

SHORT_JOB = 0.01  # seconds: jobs that typically run shorter than this are prefetched
DEFAULT_PREFETCH = 8  # jobs a worker process may hold (Worker, `walq worker --prefetch`)


# -- the worker process ----------------------------------------------------------


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


def _failure_report(exc: BaseException, task: Task | None) -> dict[str, Any]:
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


def _run_one(fields: dict[str, Any], tasks: Tasks) -> tuple[str, int, int, dict[str, Any] | None]:
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
                "the work it stands for never ran (coroutine tasks are not supported yet)"
            )
    except BaseException as exc:  # every failure is reported, none escapes
        return ("error", job.id, job.attempt, _failure_report(exc, task))
    return ("ok", job.id, job.attempt, None)


def child_main(
    conn: Connection,
    tasks_arg: Tasks | bytes,
    parent: int,
    group_signals: tuple[signal.Signals, ...] = GROUP_SIGNALS,
) -> None:
    """A worker process: import the tasks, say "ready", then run jobs one at a time.

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
            result = _run_one(waiting.popleft(), tasks)
            conn.send(result)
            if result[0] == "error":
                paused = True
                if waiting:
                    give_back(list(waiting))
    except (EOFError, BrokenPipeError, OSError):
        return


# -- the owner's side ---------------------------------------------------------------


@attrs.define
class _Slot:
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

    @property
    def pid(self) -> int:
        return int(self.proc.pid)


@attrs.frozen
class Outcome:
    """A finished attempt: ok, or a failure report."""

    job: Job
    task: Task
    ok: bool
    report: dict[str, Any] | None = None
    seconds: float = 0.0  # how long the attempt ran, as the owner saw it


@attrs.define
class _TaskRuntime:
    running: int = 0


class Worker:
    """Runs jobs from `queue` with the handlers in `tasks`, in `processes` worker processes."""

    # The signals worker processes leave to the owner (a seam: walq.testing.plant
    # plants a pool whose workers die of the group's SIGTERM).
    _group_signals: tuple[signal.Signals, ...] = GROUP_SIGNALS

    def __init__(
        self,
        queue: QueueBackend,
        tasks: Tasks,
        *,
        processes: int | None = None,
        prefetch: int = DEFAULT_PREFETCH,
        max_tasks_per_child: int | None = None,
        max_memory: int | None = None,
        shutdown_grace: float = 30.0,
        kill_grace: float = 5.0,
        retry_budget: RetryBudget | None = None,
        start_method: str = "spawn",
        rng: random.Random | None = None,
        status_interval: float = 2.0,
        lease: float | None = None,
        start_timeout: float = 120.0,
    ) -> None:
        if not isinstance(tasks, Tasks) or not len(tasks):
            raise ArgumentError("Worker needs a walq.Tasks with at least one task")
        processes = processes or os.cpu_count() or 1
        if processes < 1 or prefetch < 1:
            raise ArgumentError("processes and prefetch must be at least 1")
        if max_tasks_per_child is not None and max_tasks_per_child < 1:
            raise ArgumentError("max_tasks_per_child must be at least 1")
        self.queue = queue
        self.tasks = tasks
        self.processes = processes
        self.prefetch = prefetch
        self._typical_run = 0.0  # a moving average of how long attempts run (seconds)
        self._finished = 0  # attempts whose outcome came back
        self.max_tasks_per_child = max_tasks_per_child
        self.max_memory = max_memory
        self.shutdown_grace = check_seconds("shutdown_grace", shutdown_grace)
        self.kill_grace = check_seconds("kill_grace", kill_grace, positive=True)
        # Start-up (the interpreter, the main module, the task modules) has its
        # own limit: a job's timeout only counts from when it is handed to a
        # worker process that is ready.
        self.start_timeout = check_seconds("start_timeout", start_timeout, positive=True)
        self._start_error: WorkerStartError | None = None
        self._started_once = False  # a worker process once reported ready
        self._tasks_arg: Tasks | bytes | None = None
        self.budget = retry_budget if retry_budget is not None else RetryBudget()
        self._ctx: Any = multiprocessing.get_context(start_method)
        self._rng = rng or random.Random()
        self._slots: list[_Slot] = []
        self._runtime = {t.name: _TaskRuntime() for t in tasks}
        self._stop = threading.Event()
        self._stop_now = threading.Event()
        self._cancelled: set[int] = set()
        self._cancel_lock = threading.Lock()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        # A short lease, renewed by the heartbeat while a job is held (waiting or
        # running): a dead host's jobs are back within about one lease, and while
        # the owner lives a lease does not expire under a job, however long it runs.
        self._lease = DEFAULT_LEASE
        if lease is not None:
            self._lease = check_seconds("lease", lease, positive=True)
        self._link = Link(str(getattr(queue, "path", queue)), self._rng)
        self._heartbeat = Heartbeat(queue, self._lease, self._link, self._on_lease_lost)
        self._unknown_warned: set[str] = set()
        self._unsynced = False
        # Called per finished attempt with (task, seconds it ran, ok): metrics.
        self.on_job_done: Callable[[str, float, bool], None] | None = None
        self._status_interval = status_interval
        self._status_written = 0.0
        self._rss_checked = 0.0
        self.counters = dict.fromkeys(
            ("ok", "failed", "retried", "dead", "timeouts", "crashes", "memory", "stale",
             "spawned", "recycled", "deferred", "lease_lost"),
            0,
        )  # fmt: skip
        for task in tasks:
            queue.set_task_defaults(task.name, max_attempts=task.max_attempts)

    # -- control -----------------------------------------------------------------

    def stop(self, *, now: bool = False) -> None:
        """Stop claiming and drain (thread-safe); `now=True` skips the grace period."""
        self._stop.set()
        if now:
            self._stop_now.set()
        self._poke()

    def _poke(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            os.write(self._wake_w, b"x")

    def _on_cancel(self, job_id: int) -> None:
        with self._cancel_lock:
            self._cancelled.add(job_id)
        self._poke()

    def _on_signal(self, signum: int, frame: object) -> None:
        if self._stop.is_set():
            log.warning("second signal %d: stopping without waiting", signum)
            self.stop(now=True)
        else:
            log.warning("signal %d: draining (up to %.0f s)", signum, self.shutdown_grace)
            self.stop()

    # -- the loop -------------------------------------------------------------------

    def run(self) -> int:
        """Run until stop() or SIGTERM/SIGINT; drain; return 0 after a clean drain."""
        handlers: dict[int, Any] = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                handlers[int(sig)] = signal.signal(sig, self._on_signal)
        self.queue.ready_listeners.append(self._poke)
        self.queue.cancel_listeners.append(self._on_cancel)
        clean = True
        try:
            self._heartbeat.start()
            drain_deadline: float | None = None
            while True:
                now = time.monotonic()
                if self._stop.is_set() and drain_deadline is None:
                    drain_deadline = now + self.shutdown_grace
                    self._hold_queued()
                if drain_deadline is None:
                    self._top_up()
                self._link.flush()  # results kept while the server was unreachable
                claimed = self._claim_round() if drain_deadline is None else 0
                if self._unsynced and not claimed:
                    self.queue.sync()  # outcomes recorded last round; no claim fsync to ride on
                self._unsynced = False
                if not self._in_flight():
                    if drain_deadline is not None:
                        break
                elif drain_deadline is not None and (
                    now >= drain_deadline or self._stop_now.is_set()
                ):
                    clean = False
                    self._abandon_all("shutdown: the grace period ended")
                    break
                outcomes = self._wait(self._next_wakeup(drain_deadline))
                outcomes += self._enforce(time.monotonic())
                self._record(outcomes)
                self._maybe_write_status()
        except LogFailedError:
            clean = False
            log.exception("the queue's log failed; the worker stops")
            raise
        finally:
            self.queue.ready_listeners.remove(self._poke)
            self.queue.cancel_listeners.remove(self._on_cancel)
            self._stop_all()
            self._heartbeat.stop()
            self._link.flush()
            if self._link.backlog:
                log.warning(
                    "%s: %d results not reported (the server is unreachable); their jobs "
                    "run again when their leases end", self._link.where, len(self._link.backlog),
                )  # fmt: skip
            for signum, old in handlers.items():
                signal.signal(signum, old)
            with contextlib.suppress(WalqError):
                self.queue.sync()
            self._write_status(final=True)
        if self._start_error is not None:
            raise self._start_error
        return 0 if clean else 1

    def _in_flight(self) -> int:
        # Results kept for a server that is unreachable count too: a drain waits for them.
        return sum(len(s.jobs) for s in self._slots) + len(self._link.backlog)

    # -- starting worker processes ---------------------------------------------------

    def _top_up(self) -> None:
        """Start worker processes up to `processes`: the first alone, the rest once it is
        ready, so a main or task module that fails at import is reported once."""
        want = self.processes if self._started_once else 1
        while len(self._slots) < want:
            self._spawn()

    def _spawn(self) -> None:
        if self._tasks_arg is None:
            # spawn/forkserver: the child unpickles (imports) the tasks itself, inside
            # child_main, so an import error reaches the owner as a report.
            fork = self._ctx.get_start_method() == "fork"
            self._tasks_arg = self.tasks if fork else pickle.dumps(self.tasks)
        parent_conn, child_conn = self._ctx.Pipe()
        proc = self._ctx.Process(
            target=child_main,
            args=(child_conn, self._tasks_arg, os.getpid(), self._group_signals),
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
        self._slots.append(_Slot(proc=proc, conn=parent_conn, spawned=time.monotonic()))
        self.counters["spawned"] += 1

    def _start_failed(self, slot: _Slot, why: str) -> None:
        """A worker process could not start: stop the Worker (after a drain) with `why`."""
        if self._start_error is not None or self._stop.is_set():
            return
        self._start_error = WorkerStartError(why)  # run() raises it after the drain
        self.stop()

    def _start_report(self, slot: _Slot, msg: tuple[Any, ...]) -> None:
        """A worker's first message: ready, or the traceback of its task module's import."""
        if msg[0] == "ready":
            slot.ready = True
            self._started_once = True
            return
        _, summary, text = msg
        log.error("worker process %d failed importing its tasks:\n%s", slot.pid, text.rstrip())
        self._start_failed(
            slot,
            f"worker process {slot.pid} failed importing its tasks: {summary} "
            "(traceback logged above)",
        )

    def _died_starting(self, slot: _Slot, code: int | None) -> None:
        """A worker process ended before it was ready (no job was handed to it)."""
        if slot.kill_reason is not None:
            return  # killed by the owner: start_timeout or shutdown, reported there
        main = getattr(sys.modules.get("__main__"), "__file__", None)
        why = (
            f"worker process {slot.pid} exited with code {code} while starting, before "
            "importing its tasks (its traceback, if any, is on stderr)"
        )
        if main and self._ctx.get_start_method() != "fork":
            why += (
                f": each worker process imports the main module {main} again; a script must "
                'open its queue and run the Worker only under `if __name__ == "__main__":`'
            )
        self._start_failed(slot, why)

    def _start_overdue(self, slot: _Slot) -> None:
        self._start_failed(
            slot,
            f"worker process {slot.pid} did not finish starting (importing its tasks) "
            f"within start_timeout ({self.start_timeout:g} s)",
        )
        self._kill(slot, "start-timeout")

    # -- claiming ---------------------------------------------------------------------

    def _dispatch(self) -> int:
        """Claim jobs for free capacity (one durable write) and hand them to workers.

        The claim's fsync also makes the acks and fails recorded just before it
        durable: one fsync per round, however many jobs finished and started.
        """
        free = [s for s in self._slots if self._takes_jobs(s)]
        space = {id(s): self._space(s) for s in free}
        free = [s for s in free if space[id(s)] > 0]
        room = sum(space.values())
        if room <= 0:
            return 0
        now = time.monotonic()
        idle = [s for s in free if not s.jobs]
        jobs = self.queue.claim_many(room, lease=self._lease, accept=self._admit(now, len(idle)))
        self._link.ok()
        self._heartbeat.hold(jobs)
        batches: dict[int, list[dict[str, Any]]] = {}
        # Gated jobs first, each onto an idle worker (their admission promised one).
        ordered = sorted(jobs, key=lambda j: not _gated(self.tasks[j.task]))
        for job in ordered:
            if idle and _gated(self.tasks[job.task]):
                slot = idle.pop()
            else:
                slot = min((s for s in free if space[id(s)] > 0), key=lambda s: len(s.jobs))
            space[id(slot)] -= 1
            if not slot.jobs:
                slot.head_started = time.monotonic()
            slot.jobs.append((job, self.tasks[job.task]))
            batches.setdefault(id(slot), []).append(attrs.asdict(job))
        for slot in free:
            batch = batches.get(id(slot))
            if batch:
                # If the worker died, its sentinel reports it, and the jobs with it.
                with contextlib.suppress(BrokenPipeError, OSError):
                    slot.conn.send(batch)
        return len(jobs)

    def _takes_jobs(self, slot: _Slot) -> bool:
        """Whether jobs may be handed to this worker process now: it is ready (its
        imports are done: a job's timeout starts when it is handed over), and
        neither retiring nor being killed."""
        return slot.ready and not slot.retiring and slot.kill_reason is None

    def _space(self, slot: _Slot) -> int:
        """How many more jobs a worker may be handed: its prefetch, and what its
        max_tasks_per_child leaves (so it is recycled after exactly that many)."""
        # Prefetch pays for short jobs (it hides the round trip to the owner);
        # for jobs that take a while it only delays others behind a busy worker.
        depth = self.prefetch if self._typical_run < SHORT_JOB else 1
        space = min(depth, self._lease_depth()) - len(slot.jobs)
        if self.max_tasks_per_child is not None:
            space = min(space, self.max_tasks_per_child - slot.completed - len(slot.jobs))
        return max(0, space)

    def _lease_depth(self) -> int:
        """How many jobs one worker may hold: what it will start within half a lease.

        Until an attempt has finished, how long jobs run is unknown: one each
        (a rescued job would otherwise wait behind long ones, held from others).
        """
        if not self._finished:
            return 1
        return max(1, int(self._lease / 2 / max(self._typical_run, 1e-3)))

    def _claim_round(self) -> int:
        """_dispatch, unless the server is unreachable: then nothing is claimed, and
        the loop goes on (handlers run; their results wait for the server)."""
        if self._link.backlog or not self._link.ready():
            return 0
        running = {name: rt.running for name, rt in self._runtime.items()}
        try:
            return self._dispatch()
        except BackendError as exc:
            for name, rt in self._runtime.items():
                rt.running = running[name]  # admitted by the policy, never started
            self._link.failed(exc)
            return 0

    def _due_in(self) -> float | None:
        """Seconds until a scheduled job falls due or a lease ends (None: nothing known)."""
        if self._link.down:
            return None
        try:
            return self.queue.next_due_in()
        except BackendError as exc:
            return self._link.failed(exc)

    def _on_lease_lost(self, job_id: int, attempt: int, exc: WalqError) -> None:
        """The heartbeat found a lease lost: another worker may run the job now."""
        self.counters["lease_lost"] += 1
        log.warning(
            "job %d attempt %d: lease lost (%s); another worker may run it now, and this "
            "attempt's result will be dropped", job_id, attempt, exc,
            extra={"job_id": job_id},
        )  # fmt: skip

    def _admit(self, now: float, idle: int) -> Callable[[JobInfo], bool | float]:
        """The per-job gate of claim_many: the task's policy decides, just before a run.

        True runs the job; False leaves the task's jobs pending for this round
        (its concurrency cap, breaker or rate limit says wait); a time defers
        just this job -- a retry the queue-wide budget cannot pay for yet.
        A task with a rate limit or concurrency cap is only admitted onto an
        idle worker, so admission time is start time (prefetch would bunch it).
        """
        idle_left = [idle]

        def accept(info: JobInfo) -> bool | float:
            task = self.tasks.get(info.task)
            if task is None:
                if info.task not in self._unknown_warned:
                    self._unknown_warned.add(info.task)
                    log.warning(
                    "no handler for task %r: its jobs stay pending", info.task,
                    extra={"task": info.task},
                )  # fmt: skip
                return False
            if info.attempts >= info.max_attempts:
                return True  # out of attempts: the claim dead-letters it, nothing runs
            gated = _gated(task)
            if gated and idle_left[0] <= 0:
                return False
            runtime = self._runtime[info.task]
            adm = task.policy.admit(
                now, attempt=info.attempts + 1, running=runtime.running,
                budget=self.budget, rng=self._rng,
            )  # fmt: skip
            if adm.ok:
                runtime.running += 1
                if gated:
                    idle_left[0] -= 1
                return True
            if adm.pauses_task:
                return False
            self.counters["deferred"] += 1
            return adm.not_before

        return accept

    # -- waiting ----------------------------------------------------------------------

    def _next_wakeup(self, drain_deadline: float | None) -> float:
        now = time.monotonic()
        wake = now + 1.0
        for slot in self._slots:
            if slot.jobs:
                wake = min(wake, slot.head_started + slot.jobs[0][1].timeout)
            if not slot.ready:
                wake = min(wake, slot.spawned + self.start_timeout)
            if slot.kill_reason is not None:
                wake = min(wake, slot.kill_sent + self.kill_grace)
        if drain_deadline is not None:
            wake = min(wake, drain_deadline)
        else:
            due = self._due_in()
            if due is not None:
                wake = min(wake, now + due)
            for task in self.tasks:
                for gate in (task.policy.breaker, task.policy.rate):
                    at = _gate_time(gate, now)
                    if at is not None and at > now:
                        wake = min(wake, at)
        retry = self._link.retry_in()
        if retry is not None:
            wake = min(wake, now + retry)
        return max(0.0, wake - now)

    def _wait(self, timeout: float) -> list[Outcome]:
        """Wait for results, worker deaths or a wakeup; return finished attempts."""
        waitables: list[Any] = [self._wake_r]
        for slot in self._slots:
            waitables += [slot.conn, slot.proc.sentinel]
        ready = multiprocessing.connection.wait(waitables, timeout)
        if self._wake_r in ready:
            with contextlib.suppress(BlockingIOError, OSError):
                os.read(self._wake_r, 4096)
        outcomes: list[Outcome] = []
        for slot in list(self._slots):
            if slot.conn in ready or slot.proc.sentinel in ready:
                outcomes += self._drain(slot)
            if slot.proc.sentinel in ready:
                outcomes += self._reap(slot)
        return outcomes

    def _drain(self, slot: _Slot) -> list[Outcome]:
        """Every result waiting in a worker's pipe."""
        outcomes = []
        try:
            while slot.conn.poll():
                msg = slot.conn.recv()
                if msg[0] in ("ready", "start-failed"):
                    self._start_report(slot, msg)
                    continue
                if msg[0] == "held":
                    self._take_back(slot, msg[1])
                    continue
                kind, jid, _attempt, report = msg
                if kind == "error":
                    # Any jobs handed over from now on are dispatched after this
                    # failure is recorded: the worker may start them.
                    with contextlib.suppress(BrokenPipeError, OSError):
                        slot.conn.send(("resume",))
                if not slot.jobs or slot.jobs[0][0].id != jid:
                    log.error(
                        "worker %d reported job %d out of order; ignored", slot.pid, jid,
                        extra={"job_id": jid},
                    )  # fmt: skip
                    continue
                job, task = slot.jobs.popleft()
                now = time.monotonic()
                ran = now - slot.head_started
                slot.head_started = now
                slot.completed += 1
                outcomes.append(Outcome(job, task, kind == "ok", report, ran))
        except (EOFError, OSError):
            pass  # the worker died: _reap handles it
        if (
            self.max_tasks_per_child is not None
            and slot.completed >= self.max_tasks_per_child
            and not slot.retiring
        ):
            slot.retiring = True
            self.counters["recycled"] += 1
            with contextlib.suppress(BrokenPipeError, OSError):
                slot.conn.send(None)  # exits after the jobs it holds
        return outcomes

    # -- prefetched jobs the policy no longer admits --------------------------------------

    def _take_back(self, slot: _Slot, job_ids: list[int]) -> None:
        """A worker gave these queued jobs back unstarted: release them, uncharged."""
        head = slot.jobs[0][0].id if slot.jobs else None
        wanted = set(job_ids)
        kept: deque[tuple[Job, Task]] = deque()
        for job, task in slot.jobs:
            if job.id in wanted:
                self._release(job, task, "given back unstarted: its task's policy decides again")
            else:
                kept.append((job, task))
        slot.jobs = kept
        if slot.jobs and slot.jobs[0][0].id != head:
            slot.head_started = time.monotonic()  # the new head starts no sooner than now

    def _hold_queued(self) -> None:
        """A drain starts: workers give back the jobs queued behind their running one.

        They are released uncharged (`_take_back`); only jobs already running
        get the grace period, so a drain is not lengthened by prefetch.
        """
        self._hold({t.name for t in self.tasks})

    def _hold_if_paused(self, task: Task, now: float) -> None:
        """A failure just paused the task (its breaker opened): no queued job of a task
        sharing that breaker may start; workers holding some give them back."""
        breaker = task.policy.breaker
        if breaker is None or breaker.retry_at(now) <= now:
            return
        self._hold({t.name for t in self.tasks if t.policy.breaker is breaker})

    def _hold(self, names: set[str]) -> None:
        """Ask every worker holding a job of these tasks to give back those not started."""
        for slot in self._slots:
            if any(job.task in names for job, _ in slot.jobs):
                with contextlib.suppress(BrokenPipeError, OSError):
                    slot.conn.send(("hold", names))

    def _reap(self, slot: _Slot) -> list[Outcome]:
        """A worker process ended: fail its running job with the cause, release the rest."""
        slot.proc.join(timeout=1.0)
        code = slot.proc.exitcode
        self._slots.remove(slot)
        slot.conn.close()
        outcomes: list[Outcome] = []
        if not slot.ready:
            self._died_starting(slot, code)
        if slot.jobs:
            job, task = slot.jobs.popleft()
            cause, message = self._death_cause(slot, code, task)
            if cause == "cancelled":
                self._heartbeat.drop(job.id)
                self._runtime[task.name].running -= 1
            else:
                report = {"cause": cause, "type": cause, "message": message, "traceback": "",
                          "permanent": False, "retry_after": None, "no_retry": -1,
                          "retry_on": -1}  # fmt: skip
                ran = time.monotonic() - slot.head_started
                outcomes.append(Outcome(job, task, False, report, ran))
            for rest, rest_task in slot.jobs:
                self._release(rest, rest_task, "its worker process ended before it started")
        elif slot.ready and not slot.retiring:
            log.warning("worker %d exited unexpectedly (code %s)", slot.pid, code)
        return outcomes  # the loop starts a replacement (_top_up)

    def _death_cause(self, slot: _Slot, code: int | None, task: Task) -> tuple[str, str]:
        if slot.kill_reason == "timeout":
            self.counters["timeouts"] += 1
            return "timeout", f"handler exceeded its timeout of {task.timeout:g} s; worker killed"
        if slot.kill_reason == "memory":
            self.counters["memory"] += 1
            return "memory", f"worker exceeded max_memory ({self.max_memory} bytes); killed"
        if slot.kill_reason == "cancelled":
            return "cancelled", "job cancelled; worker killed"
        self.counters["crashes"] += 1
        if code is not None and code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = f"signal {-code}"
            return "signal", f"worker process killed by {name} (signal {-code})"
        return "exit", f"worker process exited with code {code} during the job"

    # -- deadlines, memory, cancellation ----------------------------------------------------

    def _enforce(self, now: float) -> list[Outcome]:
        with self._cancel_lock:
            cancelled, self._cancelled = self._cancelled, set()
        for slot in self._slots:
            if slot.kill_reason is not None:
                if now - slot.kill_sent >= self.kill_grace:
                    self._signal(slot, signal.SIGKILL)
                continue
            if not slot.ready and now - slot.spawned > self.start_timeout:
                self._start_overdue(slot)
                continue
            if not slot.jobs:
                continue
            job, task = slot.jobs[0]
            if job.id in cancelled:
                self._kill(slot, "cancelled")
            elif now - slot.head_started > task.timeout:
                log.warning(
                    "job %d (%s): timeout after %g s", job.id, job.task, task.timeout,
                    extra={"job_id": job.id, "task": job.task},
                )  # fmt: skip
                self._kill(slot, "timeout")
        if self.max_memory is not None and now - self._rss_checked >= 0.5:
            self._rss_checked = now
            for slot in self._slots:
                if slot.kill_reason is None and (_rss(slot.pid) or 0) > self.max_memory:
                    log.warning("worker %d over max_memory: killed", slot.pid)
                    self._kill(slot, "memory")
        return []

    def _kill(self, slot: _Slot, reason: str) -> None:
        """SIGKILL: worker processes ignore SIGTERM (the group's signal is the owner's)."""
        slot.kill_reason = reason
        slot.kill_sent = time.monotonic()
        self._signal(slot, signal.SIGKILL)

    def _signal(self, slot: _Slot, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, OSError):
            os.kill(slot.pid, sig)

    # -- recording outcomes -----------------------------------------------------------

    def _record(self, outcomes: list[Outcome]) -> None:
        """Ack and fail finished attempts; results for lost leases are dropped."""
        if not outcomes:
            return
        now = time.monotonic()
        oks = []
        for out in outcomes:
            self._heartbeat.drop(out.job.id)
            self._runtime[out.task.name].running -= 1
            if self.on_job_done is not None:
                self.on_job_done(out.task.name, out.seconds, out.ok)
            self._finished += 1
            self._typical_run += (out.seconds - self._typical_run) * 0.05
            if out.ok:
                oks.append(out)
                out.task.policy.on_success(now, attempt=out.job.attempt, budget=self.budget)
            else:
                self._fail(out, now)
        if oks:
            self._link.call(lambda: self._ack(oks))
        self._unsynced = True

    def _ack(self, oks: list[Outcome]) -> None:
        refused = self.queue.ack_many(
            [o.job.id for o in oks], attempts=[o.job.attempt for o in oks],
            sync=False, strict=False,
        )  # fmt: skip
        self.counters["ok"] += len(oks) - len(refused)
        self.counters["stale"] += len(refused)
        for jid, exc in refused:
            log.info("job %d: result dropped: %s", jid, exc, extra={"job_id": jid})

    def _fail(self, out: Outcome, now: float) -> None:
        report = out.report or {}
        job, policy = out.job, out.task.policy
        error_type: type[BaseException] | BaseException
        if report.get("permanent"):
            error_type = Permanent
        elif report.get("no_retry", -1) >= 0:
            error_type = policy.no_retry[report["no_retry"]]
        elif report.get("retry_after") is not None:
            error_type = RetryAfter(float(report["retry_after"]), report.get("message", ""))
        elif report.get("retry_on", -1) >= 0:
            error_type = policy.retry_on[report["retry_on"]]
        elif report.get("cause") != "exception":
            error_type = _WorkerLost  # a timeout, a dead worker, the memory cap
        elif policy.retry_on:
            error_type = _Unlisted
        else:
            error_type = Exception
        decision = policy.on_failure(
            error_type, now, attempt=job.attempt, rng=self._rng,
            max_attempts=job.max_attempts or None,
        )  # fmt: skip
        self._hold_if_paused(out.task, now)
        delay = decision.delay
        text = _error_text(report, job)
        self._link.call(lambda: self._write_fail(out, decision.dead, delay, text))

    def _write_fail(self, out: Outcome, dead: bool, delay: float | None, text: str) -> None:
        job, report = out.job, out.report or {}
        try:
            status = self.queue.fail(
                job.id, text, permanent=dead, attempt=job.attempt, delay=delay, sync=False
            )
        except StateError as exc:
            self.counters["stale"] += 1
            log.info(
                "job %d: failure of attempt %d dropped: %s", job.id, job.attempt, exc,
                extra={"job_id": job.id, "task": job.task},
            )  # fmt: skip
            return
        self.counters["failed"] += 1
        self.counters["dead" if status == "dead" else "retried"] += 1
        log.warning(
            "job %d (%s) attempt %d failed (%s): %s -> %s",
            job.id, job.task, job.attempt, report.get("cause"), report.get("message"),
            "dead" if status == "dead" else f"retry in {delay:.1f} s",
            extra={"job_id": job.id, "task": job.task},
        )  # fmt: skip

    def _release(self, job: Job, task: Task, why: str) -> None:
        self._heartbeat.drop(job.id)
        self._runtime[task.name].running -= 1
        task.policy.on_abandon(time.monotonic())
        self._link.call(lambda: self._write_release(job, why))

    def _write_release(self, job: Job, why: str) -> None:
        try:
            self.queue.release(job.id, attempt=job.attempt, sync=False)
        except StateError:
            return
        log.info("job %d released: %s", job.id, why, extra={"job_id": job.id, "task": job.task})

    def _abandon_all(self, why: str) -> None:
        for slot in self._slots:
            self._kill(slot, "shutdown")
            self._signal(slot, signal.SIGKILL)
            while slot.jobs:
                job, task = slot.jobs.popleft()
                self._release(job, task, why)

    def _stop_all(self) -> None:
        """Stop every worker: ask, then terminate, then kill; reap them all (no zombies)."""
        for slot in self._slots:
            with contextlib.suppress(BrokenPipeError, OSError):
                slot.conn.send(None)
        deadline = time.monotonic() + self.kill_grace
        for slot in self._slots:
            slot.proc.join(timeout=max(0.0, deadline - time.monotonic()))
            if slot.proc.exitcode is None:
                slot.proc.kill()  # SIGTERM would be ignored: see GROUP_SIGNALS
                slot.proc.join()
            slot.conn.close()
            while slot.jobs:
                job, task = slot.jobs.popleft()
                self._release(job, task, "the worker stopped")
        self._slots.clear()

    # -- status for `walq stats` -------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """Breaker states, running counts and counters: what `walq stats` shows."""
        now = time.monotonic()
        tasks = {}
        for task in self.tasks:
            breaker = task.policy.breaker
            tasks[task.name] = {
                "running": self._runtime[task.name].running,
                "breaker": breaker.state(now) if breaker is not None else "off",
            }
        health = getattr(self.queue, "compactor_health", None)  # a file queue's, not Redis's
        return {
            "pid": os.getpid(),
            "processes": len(self._slots),
            "updated": time.time(),
            "tasks": tasks,
            "counters": dict(self.counters),
            "compactor": health() if health is not None else None,
        }

    def _maybe_write_status(self) -> None:
        if time.monotonic() - self._status_written >= self._status_interval:
            self._write_status()

    def _write_status(self, final: bool = False) -> None:
        self._status_written = time.monotonic()
        status = self.status()
        status["stopped"] = final
        if self._link.down:
            return  # the server is unreachable: the next status after it is back
        with contextlib.suppress(WalqError):
            self.queue.record_worker_status(status)


def _gated(task: Task) -> bool:
    """Whether the task's policy limits when its jobs start (rate or concurrency)."""
    return task.policy.rate is not None or task.policy.concurrency is not None


class _WorkerLost(RetryAfter):
    """Stands for an attempt that ended without an exception: a timeout, a dead worker.

    Passed as a type (never raised), so the policy retries it with backoff like
    any failure -- whatever the task's retry_on lists, since the handler never
    got to raise -- and counts it against the task's breaker.
    """


class _Unlisted(Exception):
    """Stands for an exception type missing from a task's retry_on list."""


def _gate_time(gate: Any, now: float) -> float | None:
    if gate is None:
        return None
    if hasattr(gate, "retry_at"):
        return float(gate.retry_at(now))
    return float(gate.next_available(now))


def _error_text(report: dict[str, Any], job: Job) -> str:
    head = f"[{report.get('cause', 'exception')}] attempt {job.attempt}: "
    if report.get("cause") == "exception":
        head += f"{report.get('type')}: {report.get('message')}"
    else:
        head += str(report.get("message"))
    tb = report.get("traceback") or ""
    return head + ("\n" + tb if tb else "")


def _rss(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None
