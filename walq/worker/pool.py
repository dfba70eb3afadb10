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
import heapq
import logging
import multiprocessing
import multiprocessing.connection
import os
import pickle
import random
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from walq.backend import QueueBackend
from walq.core.job import Job
from walq.core.jobspec import check_seconds
from walq.core.retry import RetryBudget
from walq.core.state import JobInfo
from walq.errors import ArgumentError, BackendError, LogFailedError, WalqError, WorkerStartError
from walq.worker.admission import Admission, starts_at_once
from walq.worker.child import GROUP_SIGNALS, lost_report
from walq.worker.heartbeat import DEFAULT_LEASE, Heartbeat, Link
from walq.worker.outcomes import Outcome, Recorder, TaskRuntime
from walq.worker.scheduler import Scheduler
from walq.worker.slots import DEATH_COUNTERS, Depth, Slot, Waiter, death_cause
from walq.worker.status import StatusWriter, worker_status
from walq.worker.tasks import Task, Tasks

log = logging.getLogger("walq.worker")

DEFAULT_PREFETCH = 32  # jobs a worker process may hold (Worker, `walq worker --prefetch`)
DEFAULT_ASYNC_CONCURRENCY = 100  # coroutine jobs a worker process runs at once


class Worker:
    """Runs jobs from `queue` with the handlers in `tasks`, in `processes` worker processes."""

    # The signals worker processes leave to the owner (a seam: walq.testing.plant
    # plants a pool whose workers die of the group's SIGTERM).
    _group_signals: tuple[signal.Signals, ...] = GROUP_SIGNALS
    # What renews the leases of held jobs (a seam: walq.testing.plant plants one that does not).
    heartbeat_class: type[Heartbeat] = Heartbeat

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
        job_log_level: int = logging.INFO,
        async_concurrency: int = DEFAULT_ASYNC_CONCURRENCY,
        schedules: bool = True,
    ) -> None:
        if not isinstance(tasks, Tasks) or not len(tasks):
            raise ArgumentError("Worker needs a walq.Tasks with at least one task")
        processes = processes or os.cpu_count() or 1
        if processes < 1 or prefetch < 1:
            raise ArgumentError("processes and prefetch must be at least 1")
        if max_tasks_per_child is not None and max_tasks_per_child < 1:
            raise ArgumentError("max_tasks_per_child must be at least 1")
        if isinstance(async_concurrency, bool) or not isinstance(async_concurrency, int):
            raise ArgumentError(f"async_concurrency must be an integer, not {async_concurrency!r}")
        if async_concurrency < 1:
            raise ArgumentError(f"async_concurrency must be at least 1, not {async_concurrency}")
        self.queue = queue
        self._child_tasks = tasks  # what the worker processes import (policies stay here)
        self.budget = retry_budget if retry_budget is not None else RetryBudget()
        gates = queue.shared_gates()
        if gates is not None:  # every host shares them (a server's queue)
            tasks = tasks.with_policies(lambda t: gates.share(t.name, t.policy, t.timeout))
            self.budget = gates.budget(self.budget)
        self.tasks = tasks
        # The level of the one line per finished attempt (logging.DEBUG turns it down).
        self.job_log_level = job_log_level
        self.processes = processes
        self.prefetch = prefetch
        self.max_tasks_per_child = max_tasks_per_child
        self.max_memory = max_memory
        # Jobs a worker process runs at once: coroutine jobs share its event loop.
        self.async_concurrency = async_concurrency
        self._runs = async_concurrency if tasks.has_coroutines else 1
        self.shutdown_grace = check_seconds("shutdown_grace", shutdown_grace)
        self.kill_grace = check_seconds("kill_grace", kill_grace, positive=True)
        # Start-up (the interpreter, the main module, the task modules) has its
        # own limit: a job's timeout only counts from when it is handed to a
        # worker process that is ready.
        self.start_timeout = check_seconds("start_timeout", start_timeout, positive=True)
        self._start_error: WorkerStartError | None = None
        self._started_once = False  # a worker process once reported ready
        self._tasks_arg: Tasks | bytes | None = None
        self._ctx: Any = multiprocessing.get_context(start_method)
        self._rng = rng or random.Random()
        self._slots: list[Slot] = []
        self._waiter = Waiter()
        self._runtime = {t.name: TaskRuntime() for t in tasks}
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
        self._heartbeat = self.heartbeat_class(queue, self._lease, self._link, self._on_lease_lost)
        self._depth = Depth(prefetch, self._lease, max_tasks_per_child, self._runs)
        self._unsynced = False
        # Called per finished attempt with (task, seconds it ran, ok): metrics.
        self.on_job_done: Callable[[str, float, bool], None] | None = None
        self._rss_checked = 0.0
        self.counters = dict.fromkeys(
            ("ok", "failed", "retried", "dead", "timeouts", "crashes", "memory", "stale",
             "spawned", "recycled", "deferred", "lease_lost"),
            0,
        )  # fmt: skip
        self._recorder = Recorder(
            queue, self._link, self._heartbeat, self._runtime, self.counters, self.budget,
            self._rng, on_decided=self._hold_if_paused,
        )  # fmt: skip
        self._admission = Admission(tasks, self._runtime, self.counters, self.budget, self._rng)
        self._status = StatusWriter(queue, self._link, self.status, status_interval)
        for task in tasks:
            queue.set_task_defaults(task.name, max_attempts=task.max_attempts)
        for sched in tasks.schedules():
            if sched.task not in tasks:
                raise ArgumentError(
                    f"schedule {sched.name!r} runs task {sched.task!r}, which is not registered"
                )
        # Enqueues the schedules' due ticks while the worker runs (schedules=False: not here).
        self._scheduler = Scheduler(queue, tasks.schedules() if schedules else [])

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
        self._log_banner()
        try:
            self._heartbeat.start()
            self._scheduler.start()
            drain_deadline: float | None = None
            while True:
                now = time.monotonic()
                if self._stop.is_set() and drain_deadline is None:
                    drain_deadline = now + self.shutdown_grace
                    log.info(
                        "draining: %d jobs in flight, up to %.0f s",
                        self._in_flight(), self.shutdown_grace,
                    )  # fmt: skip
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
                self._status.maybe_write()
        except LogFailedError:
            clean = False
            log.exception("the queue's log failed; the worker stops")
            raise
        finally:
            self.queue.ready_listeners.remove(self._poke)
            self.queue.cancel_listeners.remove(self._on_cancel)
            self._scheduler.stop()
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
            done = ", ".join(f"{k} {v}" for k, v in self.counters.items() if v) or "no jobs"
            log.info(
                "worker pid %d stopped%s: %s",
                os.getpid(), "" if clean else " (in-flight jobs abandoned)", done,
            )  # fmt: skip
        if self._start_error is not None:
            raise self._start_error
        return 0 if clean else 1

    def _log_banner(self) -> None:
        """The start banner: who, where, what, and how long opening the queue took."""
        replayed = getattr(self.queue, "replayed", None) or {}  # a directory's, not Redis's
        opened = ""
        if replayed:
            opened = (
                f"; replayed {replayed['jobs']} live jobs in {replayed['seconds']:.2f} s"
                f" ({replayed['segments']} segments)"
            )
        log.info(
            "worker pid %d on %s: tasks %s; %d processes%s",
            os.getpid(), self.queue.path, ", ".join(t.name for t in self.tasks),
            self.processes, opened,
        )  # fmt: skip

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
            self._tasks_arg = self._child_tasks if fork else pickle.dumps(self._child_tasks)
        self._slots.append(Slot.start(self._ctx, self._tasks_arg, self._group_signals, self._runs))
        self.counters["spawned"] += 1

    def _start_failed(self, slot: Slot, why: str) -> None:
        """A worker process could not start: stop the Worker (after a drain) with `why`."""
        if self._start_error is not None or self._stop.is_set():
            return
        self._start_error = WorkerStartError(why)  # run() raises it after the drain
        self.stop()

    def _start_report(self, slot: Slot, msg: tuple[Any, ...]) -> None:
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

    def _died_starting(self, slot: Slot, code: int | None) -> None:
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

    def _start_overdue(self, slot: Slot) -> None:
        self._start_failed(
            slot,
            f"worker process {slot.pid} did not finish starting (importing its tasks) "
            f"within start_timeout ({self.start_timeout:g} s)",
        )
        slot.kill("start-timeout")

    # -- claiming ---------------------------------------------------------------------

    def _dispatch(self) -> int:
        """Claim jobs for free capacity (one durable write) and hand them to workers.

        The claim's fsync also makes the acks and fails recorded just before it
        durable: one fsync per round, however many jobs finished and started.
        """
        free = [s for s in self._slots if self._takes_jobs(s)]
        space = {id(s): self._depth.space(s) for s in free}
        free = [s for s in free if space[id(s)] > 0]
        room = sum(space.values())
        if room <= 0:
            return 0
        now = time.monotonic()
        # A place on a worker process that starts its job at once, for each
        # such place (a process running coroutines has many).
        idle = [s for s in free for _ in range(self._runs - len(s.jobs))]
        jobs = self.queue.claim_many(room, lease=self._lease, accept=self._admit(now, len(idle)))
        self._link.ok()
        if jobs and log.isEnabledFor(logging.DEBUG):
            log.debug(
                "claimed %d jobs: %s", len(jobs),
                ", ".join(f"{j.id} ({j.task}, attempt {j.attempt})" for j in jobs),
            )  # fmt: skip
        self._heartbeat.hold(jobs)
        tasks = self.tasks
        batches: dict[int, list[dict[str, Any]]] = {}
        plain: list[tuple[Job, Task]] = []
        # Gated jobs and last attempts first, each onto an idle worker (their
        # admission promised one).
        for job in jobs:
            task = tasks[job.task]
            if not starts_at_once(task, job.attempt, job.max_attempts):
                plain.append((job, task))
                continue
            slot = idle.pop() if idle else self._least_loaded(free, space)
            self._hand(slot, job, task, space, batches)
        # The rest to the least loaded: a heap of (jobs held, order, slot), small
        # (one entry per worker process), so a claim of many costs little per job.
        heap = [(len(s.jobs), i, s) for i, s in enumerate(free) if space[id(s)] > 0]
        heapq.heapify(heap)
        for job, task in plain:
            held, i, slot = heap[0]
            self._hand(slot, job, task, space, batches)
            if space[id(slot)] > 0:
                heapq.heapreplace(heap, (held + 1, i, slot))
            else:
                heapq.heappop(heap)
        now = time.monotonic()
        for slot in free:
            batch = batches.get(id(slot))
            if batch:
                slot.settle(now)
                # If the worker died, its sentinel reports it, and the jobs with it.
                with contextlib.suppress(BrokenPipeError, OSError):
                    slot.conn.send(batch)
        return len(jobs)

    @staticmethod
    def _least_loaded(free: list[Slot], space: dict[int, int]) -> Slot:
        """The worker with room that holds the fewest jobs."""
        return min((s for s in free if space[id(s)] > 0), key=lambda s: len(s.jobs))

    @staticmethod
    def _hand(
        slot: Slot, job: Job, task: Task, space: dict[int, int],
        batches: dict[int, list[dict[str, Any]]],
    ) -> None:  # fmt: skip
        """Give `job` to `slot`: it holds it now; it goes in the slot's batch."""
        space[id(slot)] -= 1
        slot.jobs[job.id] = (job, task)
        batches.setdefault(id(slot), []).append(job.fields())

    def _takes_jobs(self, slot: Slot) -> bool:
        """Whether jobs may be handed to this worker process now: it is ready (its
        imports are done: a job's timeout starts when it is handed over), and
        neither retiring nor being killed."""
        return slot.ready and not slot.retiring and slot.kill_reason is None

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
        """The per-job gate of claim_many: the tasks' policies (walq/worker/admission.py)."""
        return self._admission.accept(now, idle)

    # -- waiting ----------------------------------------------------------------------

    def _next_wakeup(self, drain_deadline: float | None) -> float:
        now = time.monotonic()
        wake = now + 1.0
        for slot in self._slots:
            for _job, task, started in slot.running():
                wake = min(wake, started + self._time_allowed(task))
            for sent in slot.cancel_sent.values():
                wake = min(wake, sent + self.kill_grace)
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
            opens = self._admission.next_open(now)
            if opens is not None:
                wake = min(wake, opens)
        retry = self._link.retry_in()
        if retry is not None:
            wake = min(wake, now + retry)
        return max(0.0, wake - now)

    def _wait(self, timeout: float) -> list[Outcome]:
        """Wait for results, worker deaths or a wakeup; return finished attempts."""
        ready = self._waiter.wait(self._wake_r, self._slots, timeout)
        if self._wake_r in ready:
            with contextlib.suppress(BlockingIOError, OSError):
                os.read(self._wake_r, 4096)
        outcomes: list[Outcome] = []
        for slot in list(self._slots):
            died = slot.proc.sentinel in ready
            if slot.conn.fileno() in ready or died:
                outcomes += self._drain(slot)
            if died:
                outcomes += self._reap(slot)
        return outcomes

    def _drain(self, slot: Slot) -> list[Outcome]:
        """Every result waiting in a worker's pipe."""
        outcomes: list[Outcome] = []
        try:
            while slot.has_message():
                for msg in slot.messages():
                    self._message(slot, msg, outcomes)
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

    def _message(self, slot: Slot, msg: Any, outcomes: list[Outcome]) -> None:
        """Apply one message from a worker; the attempts it ended go to `outcomes`."""
        if msg[0] in ("ready", "start-failed"):
            self._start_report(slot, msg)
            return
        if msg[0] == "held":
            self._take_back(slot, msg[1])
            return
        if msg[0] == "batch":  # an event loop's jobs: started, ended
            now = time.monotonic()
            for jid in msg[1]:
                if jid in slot.jobs:
                    slot.started[jid] = now
            results = msg[2]
        else:
            results = [msg]
        self._results(slot, results, outcomes)

    def _results(self, slot: Slot, results: list[Any], outcomes: list[Outcome]) -> None:
        """The outcomes of a worker's ended jobs (a cancelled one has none to record)."""
        errors = sum(1 for r in results if r[0] == "error")
        if errors:
            # Any jobs handed over from now on are dispatched after these failures
            # are recorded: the worker may start them.
            with contextlib.suppress(BrokenPipeError, OSError):
                slot.conn.send(("resume", errors))
        for kind, jid, _attempt, report in results:
            ended = slot.take(jid)
            if ended is None:
                log.error(
                    "worker %d reported job %d, which it does not hold; ignored", slot.pid, jid,
                    extra={"job_id": jid},
                )  # fmt: skip
                continue
            job, task, started = ended
            slot.completed += 1
            if kind == "cancelled":
                self._heartbeat.drop(job.id)
                self._runtime[task.name].running -= 1
                continue
            if report is not None and report.get("cause") == "timeout":
                self.counters["timeouts"] += 1  # a coroutine cancelled at its timeout
            ran = time.monotonic() - started
            outcomes.append(Outcome(job, task, kind == "ok", report, ran, slot.pid, time.time()))
        slot.settle(time.monotonic())

    # -- prefetched jobs the policy no longer admits --------------------------------------

    def _take_back(self, slot: Slot, job_ids: list[int]) -> None:
        """A worker gave these queued jobs back unstarted: release them, uncharged."""
        for jid in job_ids:
            ended = slot.take(jid)
            if ended is not None:
                job, task, _ = ended
                self._release(job, task, "given back unstarted: its task's policy decides again")
        slot.settle(time.monotonic())  # the new first job starts no sooner than now

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
            if any(job.task in names for job, _ in slot.jobs.values()):
                with contextlib.suppress(BrokenPipeError, OSError):
                    slot.conn.send(("hold", names))

    def _reap(self, slot: Slot) -> list[Outcome]:
        """A worker process ended: fail its running job with the cause, release the rest."""
        slot.proc.join(timeout=1.0)
        code = slot.proc.exitcode
        self._slots.remove(slot)
        slot.conn.close()
        outcomes: list[Outcome] = []
        if not slot.ready:
            self._died_starting(slot, code)
        running = slot.running()
        if running:
            # The kill's own job counts once; the jobs beside it on an event loop
            # (each of which began, so each is charged) fail with it.
            counted = False
            for job, task, started in running:
                slot.take(job.id)
                cause, message = death_cause(slot, code, job, task, self.max_memory)
                if cause in DEATH_COUNTERS and not counted:
                    self.counters[DEATH_COUNTERS[cause]] += 1
                    counted = True
                if cause == "cancelled":
                    self._heartbeat.drop(job.id)
                    self._runtime[task.name].running -= 1
                    continue
                # Not the kill's own job, or one of several a crash took down.
                shared = len(running) > 1 and slot.kill_job != job.id
                if shared and slot.kill_job is None:
                    message += f" ({len(running)} jobs were running in it)"
                report = lost_report(cause, message, shared=shared)
                ran = time.monotonic() - started
                outcomes.append(Outcome(job, task, False, report, ran, slot.pid, time.time()))
        if slot.jobs:
            for rest, rest_task in slot.jobs.values():
                self._release(rest, rest_task, "its worker process ended before it started")
            slot.jobs.clear()
        elif not running and slot.ready and not slot.retiring:
            log.warning("worker %d exited unexpectedly (code %s)", slot.pid, code)
        return outcomes  # the loop starts a replacement (_top_up)

    # -- deadlines, memory, cancellation ----------------------------------------------------

    def _enforce(self, now: float) -> list[Outcome]:
        with self._cancel_lock:
            cancelled, self._cancelled = self._cancelled, set()
        for slot in self._slots:
            if slot.kill_reason is not None:
                if now - slot.kill_sent >= self.kill_grace:
                    slot.signal(signal.SIGKILL)
                continue
            if not slot.ready and now - slot.spawned > self.start_timeout:
                self._start_overdue(slot)
                continue
            for job, task, started in slot.running():
                if job.id in cancelled and task.is_async:
                    if job.id not in slot.cancel_sent:  # the event loop cancels the coroutine
                        slot.cancel_sent[job.id] = now
                        with contextlib.suppress(BrokenPipeError, OSError):
                            slot.conn.send(("cancel", job.id))
                elif job.id in cancelled or (
                    job.id in slot.cancel_sent and now - slot.cancel_sent[job.id] >= self.kill_grace
                ):
                    slot.kill("cancelled", job.id)
                    break
                elif now - started > self._time_allowed(task):
                    log.warning(
                        "job %d (%s): timeout after %g s", job.id, job.task, task.timeout,
                        extra={"job_id": job.id, "task": job.task},
                    )  # fmt: skip
                    slot.kill("timeout", job.id)
                    break
        if self.max_memory is not None and now - self._rss_checked >= 0.5:
            self._rss_checked = now
            for slot in self._slots:
                if slot.kill_reason is None and (slot.rss() or 0) > self.max_memory:
                    log.warning("worker %d over max_memory: killed", slot.pid)
                    slot.kill("memory")
        return []

    def _time_allowed(self, task: Task) -> float:
        """Seconds from a job's start to its process's kill: a coroutine is cancelled at
        its timeout (by its event loop) and has kill_grace more to end."""
        return task.timeout + (self.kill_grace if task.is_async else 0.0)

    # -- recording outcomes -----------------------------------------------------------

    def _record(self, outcomes: list[Outcome]) -> None:
        """Ack and fail finished attempts (the Recorder); learn how long attempts run."""
        if not outcomes:
            return
        job_log = log.isEnabledFor(self.job_log_level)
        for out in outcomes:
            if self.on_job_done is not None:
                self.on_job_done(out.task.name, out.seconds, out.ok)
            self._depth.learn(out.seconds)
            if job_log:
                how = "ok" if out.ok else f"failed ({(out.report or {}).get('cause', 'error')})"
                log.log(
                    self.job_log_level, "job %d (%s) attempt %d: %s in %.3f s",
                    out.job.id, out.task.name, out.job.attempt, how, out.seconds,
                    extra={"job_id": out.job.id, "task": out.task.name, "outcome": how},
                )  # fmt: skip
        self._recorder.record(outcomes)
        self._unsynced = True

    def _release(self, job: Job, task: Task, why: str) -> None:
        self._recorder.release(job, task, why)

    def _abandon_all(self, why: str) -> None:
        for slot in self._slots:
            slot.kill("shutdown")
            slot.signal(signal.SIGKILL)
            for job, task in slot.jobs.values():
                self._release(job, task, why)
            slot.jobs.clear()
            slot.started.clear()

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
            for job, task in slot.jobs.values():
                self._release(job, task, "the worker stopped")
            slot.jobs.clear()
        self._slots.clear()

    # -- status for `walq stats` -------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """Breaker states, running counts and counters: what `walq stats` shows."""
        return worker_status(
            self.queue, self.tasks, self._runtime, len(self._slots), self.counters, self.budget,
            self._slots, self._recorder.recent,
        )  # fmt: skip

    def _write_status(self, final: bool = False) -> None:
        """Record the status now (the StatusWriter), not waiting for its interval."""
        self._status.write(final)
