"""The queue state machine: what every job is doing, rebuilt by replaying events.

The rules are the table in walq.core.transitions, which a live queue's state
reads for every event it applies: an event the table does not allow from a
job's state raises StateError. Replay applies recorded events as the facts
they are (a compacted snapshot may already reflect the events that follow it:
see walq.directory.compactor), skipping only those that cannot apply.

Pure: no IO and no clock. Time comes in as `Now` (wall time for what must
survive a restart, monotonic time for everything within this process), and
every job's payload stays on disk -- the state holds its location only.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import attrs

from walq.core import enqueue, framing, replay
from walq.core import events as ev
from walq.core.jobspec import MAX_ATTEMPTS, MIN_PRIORITY
from walq.core.packed import ATTEMPTS as _ATTEMPTS
from walq.core.packed import (
    DEAD,
    N_STATES,
    PENDING,
    RUNNING,
    SCHEDULED,
    SEQ_BITS,
    STATE_NAMES,
    WAITING,
    JobInfo,
    Loc,
    NewJob,
    Now,
    TaskCounts,
    seq_of,
)
from walq.core.packed import M3 as _M3
from walq.core.packed import M16 as _M16
from walq.core.packed import M32 as _M32
from walq.core.packed import MAXA as _MAXA
from walq.core.packed import MT as _MT
from walq.core.packed import OFFSET as _OFFSET
from walq.core.packed import PRIO as _PRIO
from walq.core.packed import SEG as _SEG
from walq.core.packed import SIZE as _SIZE
from walq.core.packed import TASK as _TASK
from walq.core.packed import pack as _pack
from walq.core.packed import with_field as _with
from walq.core.ready import ReadyIndex
from walq.core.replay import Sink
from walq.core.schedule import TimeState, parse_tick_key
from walq.core.transitions import check, next_states
from walq.errors import ArgumentError, LeaseLost, StateError, UnknownJobError

# The values callers use with the state (defined beside the packed layout).
__all__ = [
    "DEAD",
    "PENDING",
    "RUNNING",
    "SCHEDULED",
    "SEQ_BITS",
    "STATE_NAMES",
    "WAITING",
    "JobInfo",
    "Loc",
    "NewJob",
    "Now",
    "QueueState",
    "Sink",
    "TaskCounts",
    "seq_of",
]  # fmt: skip

# What a job that leaves the table became, by its tombstone (None: acked).
_GONE: dict[int | None, str] = {None: "done", ev.CANCELLED: "cancelled", ev.PURGED: "purged"}


class QueueState:
    """Every live job's state, with the indexes that make claim and status fast."""

    def __init__(self, *, default_max_attempts: int = 20) -> None:
        if not 1 <= default_max_attempts <= MAX_ATTEMPTS:
            raise ArgumentError(f"max_attempts must be 1..{MAX_ATTEMPTS}")
        self.default_max_attempts = default_max_attempts
        self.next_id = 1
        self._jobs: dict[int, int] = {}
        self._tasks: list[str] = []
        self._task_ids: dict[str, int] = {}
        self._task_max: dict[int, int] = {}
        self._keys: dict[str, int] = {}
        self._key_of: dict[int, str] = {}
        self._errors: dict[int, Loc] = {}
        self._tombstones: dict[int, int] = {}
        self._ready = ReadyIndex()
        self._scheduled: list[tuple[float, int]] = []
        self._due: dict[int, float] = {}
        self._leases: dict[int, tuple[float, int]] = {}
        self._lease_heap: list[tuple[float, int]] = []
        self._n = [0] * N_STATES  # live jobs by state code, over all tasks
        self._by_task: dict[int, list[int]] = {}  # the same, per task
        self.live_bytes = 0
        self._seg_bytes: dict[int, int] = {}  # live record bytes per segment
        self.paused: set[str] = set()  # tasks whose pending jobs are not claimed
        self._paused_ids: set[int] = set()  # their task indexes
        self.loading = True  # replaying: events are facts, nothing indexed until finish_replay
        # Dependencies: a live job's parents and policy (ev.AFTER_*), a waiting job's
        # parents not yet done, the waiting jobs each parent holds up, the wall
        # time a waiting job's delay ends, and why a dependent was cancelled.
        self._after: dict[int, tuple[tuple[int, ...], int]] = {}
        self._outstanding: dict[int, set[int]] = {}
        self._held_by: dict[int, list[int]] = {}
        self._wait_due: dict[int, float] = {}
        self.causes: dict[int, str] = {}
        # Results kept: job id -> (wall time they expire, the finish record holding them).
        self._results: dict[int, tuple[float, Loc]] = {}
        self.readied = 0  # waiting jobs made ready so far (the queue wakes claims on a change)
        self.timed = TimeState()  # schedules' last ticks, remembered keys (walq.core.schedule)

    # -- queries -------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._jobs)

    def __contains__(self, jid: object) -> bool:
        return jid in self._jobs

    @property
    def counts(self) -> TaskCounts:
        """Live jobs by state, over all tasks."""
        return TaskCounts.of(self._n)

    def task_counts(self) -> dict[str, TaskCounts]:
        """Live jobs by state, per task."""
        return {self._tasks[t]: TaskCounts.of(n) for t, n in self._by_task.items()}

    @property
    def unfinished(self) -> int:
        """Pending, scheduled and running jobs."""
        n = self._n
        return n[PENDING] + n[SCHEDULED] + n[RUNNING] + n[WAITING]

    def info(self, jid: int) -> JobInfo:
        """The live job `jid`; UnknownJobError if it is not live."""
        packed = self._jobs.get(jid)
        if packed is None:
            raise UnknownJobError(f"job {jid} is not live ({self.status(jid)})")
        return self._info(jid, packed)

    def _info(self, jid: int, p: int) -> JobInfo:
        return JobInfo(
            id=jid,
            task=self._tasks[(p >> _TASK) & _MT],
            state=p & _M3,
            attempts=(p >> _ATTEMPTS) & _M16,
            max_attempts=self._max_attempts(p),
            priority=((p >> _PRIO) & _M16) + MIN_PRIORITY,
            loc=Loc((p >> _SEG), (p >> _OFFSET) & _M32, (p >> _SIZE) & _M32),
        )

    def _max_attempts(self, p: int) -> int:
        own = (p >> _MAXA) & _M16
        if own:
            return own
        return self._task_max.get((p >> _TASK) & _MT, self.default_max_attempts)

    def status(self, jid: int) -> str:
        """pending | scheduled | running | dead | done | cancelled; UnknownJobError otherwise."""
        packed = self._jobs.get(jid)
        if packed is not None:
            return STATE_NAMES[packed & _M3]
        tomb = self._tombstones.get(jid)
        if tomb == ev.CANCELLED:
            return "cancelled"
        if tomb == ev.PURGED:
            raise UnknownJobError(f"job {jid} was purged")
        if 1 <= jid < self.next_id:
            return "done"
        raise UnknownJobError(f"job {jid} does not exist")

    def key_holder(self, key: str, wall: float | None = None) -> int | None:
        """The unfinished job holding idempotency key `key`, if any; given the wall
        time, also a done job whose key is still remembered (unique_for)."""
        jid = self._keys.get(key)
        if jid is None and wall is not None and self.timed.kept:
            jid = self.timed.holder(key, wall)
        return jid

    def tick_keys_seen(self) -> None:
        """Schedules' last ticks, raised to the ticks of unfinished jobs their keys name.

        A tick's enqueue and its schedule record are written together, the
        enqueue first: if a crash tore the schedule record away, its job
        still says the tick was enqueued (end of replay).
        """
        for key in self._keys:
            parsed = parse_tick_key(key)
            if parsed is not None:
                self.timed.tick(*parsed)
        unique = self.timed.unique
        for jid in [j for j in unique if j not in self._jobs]:
            del unique[jid]

    def key_of(self, jid: int) -> str | None:
        """The idempotency key of live job `jid`, if it has one."""
        return self._key_of.get(jid)

    def after_of(self, jid: int) -> tuple[tuple[int, ...], int] | None:
        """(parents, policy) of live job `jid` if it was enqueued after others."""
        return self._after.get(jid)

    def result_loc(self, jid: int, wall: float) -> Loc | None:
        """Where done job `jid`'s result is recorded, unless none was kept or it expired."""
        kept = self._results.get(jid)
        return kept[1] if kept is not None and kept[0] > wall else None

    def results(self) -> dict[int, tuple[float, Loc]]:
        """Every result kept: id -> (wall time it expires, its record)."""
        return dict(self._results)

    def locations(self) -> tuple[list[int], list[tuple[float, Loc]], list[Loc]]:
        """Copies (made at C speed) of where the state points: the Loc.seg values jobs'
        records are in, kept results' (expiry, record) and errors' records."""
        return list(self._seg_bytes), list(self._results.values()), list(self._errors.values())

    def error_loc(self, jid: int) -> Loc | None:
        """Where the last error of dead job `jid` is recorded."""
        return self._errors.get(jid)

    def jobs(self, state: int | None = None) -> Iterator[JobInfo]:
        """Live jobs in id order, optionally only those in `state`."""
        for jid, p in list(self._jobs.items()):
            if state is None or p & _M3 == state:
                yield self._info(jid, p)

    def jobs_after(
        self, after: int, state: int | None = None, task: str | None = None
    ) -> Iterator[JobInfo]:
        """Live jobs with ids above `after`, in id order, optionally of one state and task.

        Not a copy: the caller holds the state still while it iterates (a page of
        a big queue then costs the jobs read up to it, not a copy of every job).
        With a state, the walk ends once every job in it (by the counts) was
        seen: a state no job is in costs nothing, whatever the queue's size.
        """
        want_task = None if task is None else self._task_ids.get(task, -1)
        left = None
        if state is not None:
            counts = self._n if want_task is None else self._by_task.get(want_task)
            if counts is None or want_task == -1:
                return  # no job of that task
            left = counts[state] if state < len(counts) else None
            if left is not None and left <= 0:
                return
        for jid, p in self._jobs.items():
            if state is not None and p & _M3 != state:
                continue
            if want_task is not None and (p >> _TASK) & _MT != want_task:
                continue
            if jid > after:
                yield self._info(jid, p)
            if left is not None:
                left -= 1
                if left <= 0:
                    return

    def ids_in(self, state: int) -> list[int]:
        """The ids of live jobs in `state` (cheaper than jobs(): no JobInfo built)."""
        return [jid for jid, p in self._jobs.items() if p & _M3 == state]

    def tombstones(self) -> dict[int, int]:
        """Ids of jobs that ended cancelled or purged (status needs to tell them from done)."""
        return dict(self._tombstones)

    def next_due(self) -> float | None:
        """The monotonic time of the next scheduled job or lease expiry, if any."""
        times = []
        if self._scheduled:
            times.append(self._scheduled[0][0])
        if self._lease_heap:
            times.append(self._lease_heap[0][0])
        return min(times) if times else None

    def has_ready(self) -> bool:
        """Whether a pending job is waiting (cheap, may be stale-positive)."""
        return self._n[PENDING] > 0

    def lease(self, jid: int) -> tuple[float, int] | None:
        """(monotonic deadline, attempt) of running job `jid`."""
        return self._leases.get(jid)

    # -- configuration ---------------------------------------------------------

    def task_index(self, task: str) -> int:
        """The small integer standing for task name `task` (never refuses: see _TASK).

        Replay calls this for every name a record carries, so it must accept
        whatever the writer accepted: nothing here may raise.
        """
        idx = self._task_ids.get(task)
        if idx is None:
            idx = len(self._tasks)
            self._tasks.append(task)
            self._task_ids[task] = idx
        return idx

    def set_task_max_attempts(self, task: str, max_attempts: int) -> None:
        """Attempts allowed for jobs of `task` that did not set their own."""
        if not 1 <= max_attempts <= MAX_ATTEMPTS:
            raise ArgumentError(f"max_attempts must be 1..{MAX_ATTEMPTS}, not {max_attempts}")
        self._task_max[self.task_index(task)] = max_attempts

    # -- replay ------------------------------------------------------------------

    def apply(self, event: ev.Event, loc: Loc, now: Now) -> None:
        """Apply one event recorded at `loc`.

        Live, each job's move is checked against TRANSITIONS (StateError if the
        table does not allow it); in replay, events already reflected are
        idempotent and those that cannot apply are skipped.
        """
        if isinstance(event, ev.Enqueue | ev.Job):
            self._create(event, loc, now)
        elif isinstance(event, ev.After):
            self._create_after(event, loc, now)
        elif isinstance(event, ev.Finish):
            self._finished(event, loc, now)
        elif isinstance(event, ev.Flow):
            self._restore_flow(event, now)
        elif isinstance(event, ev.Claim):
            for jid, attempt in event.items:
                self._claimed(jid, attempt)
        elif isinstance(event, ev.Ack):
            for jid in event.ids:
                self._remove(jid, "ack", None)
                self._settled(jid, True, now)
        elif isinstance(event, ev.Fail):
            self._failed(event, loc, now)
        elif isinstance(event, ev.Release):
            for jid, attempts in event.items:
                self._released(jid, attempts)
        elif isinstance(event, ev.Cancel):
            for jid in event.ids:
                if not self.loading or self._is(jid, PENDING, SCHEDULED, RUNNING, WAITING):
                    self._remove(jid, "cancel", ev.CANCELLED)
                    self._settled(jid, False, now)
        elif isinstance(event, ev.Requeue):
            for jid in event.ids:
                self._requeued(jid)
        elif isinstance(event, ev.Purge):
            for jid in event.ids:
                if not self.loading or self._is(jid, DEAD):
                    self._remove(jid, "purge", ev.PURGED)
                    self._after.pop(jid, None)
        elif isinstance(event, ev.Schedule | ev.Unique | ev.Keep):
            self.timed.apply(event, now.wall)
        elif isinstance(event, ev.Pause):
            self.paused.add(event.task)
            self._paused_ids.add(self.task_index(event.task))
        elif isinstance(event, ev.Resume):
            self.paused.discard(event.task)
            self._paused_ids.discard(self.task_index(event.task))
        elif isinstance(event, ev.Attempt):
            pass  # how attempts ran: history for the tools, nothing a job's state depends on
        else:
            self.next_id = max(self.next_id, event.next_id)
            self._tombstones.update(event.tombstones)

    def _is(self, jid: int, *states: int) -> bool:
        p = self._jobs.get(jid)
        return p is not None and p & _M3 in states

    def _step(self, jid: int, p: int, event: str, to: int) -> int:
        """`p` moved to state `to` by `event`: checked against TRANSITIONS unless replaying."""
        if not self.loading:
            check(jid, STATE_NAMES[p & _M3], event, STATE_NAMES[to])
        return self._move(p, to)

    def _absent(self, jid: int, event: str) -> None:
        """An event for a job that is not live: skipped in replay, StateError live."""
        if not self.loading:
            next_states(jid, self.status(jid), event)  # no pair from done/cancelled: raises

    def load(
        self,
        buf: bytes,
        seq: int,
        offset: int,
        now: Now,
        other: Sink,
        *,
        check: framing.RecordCheck = framing.crc_matches,
    ) -> tuple[int, int]:
        """Replay segment `seq`'s records from `offset` until the first non-record.

        framing.scan_fast checks the records and feeds them to `replay_sink`.
        Returns where it stopped (framing.classify judges the rest) and the
        sync watermark of the last record replayed (0: none).
        """
        return framing.scan_fast(buf, offset, seq, self.replay_sink(now, other), check=check)

    # Replay's fast path (walq.core.replay): a sink for framing.scan_fast, and its end.
    replay_sink = replay.replay_sink
    finish_replay = replay.finish_replay

    def _create(self, e: ev.Enqueue | ev.Job, loc: Loc, now: Now) -> None:
        if isinstance(e, ev.Job) and e.state == WAITING:  # not inside an after record: no wait
            e = ev.Job(**{**attrs.asdict(e), "state": PENDING})
        if isinstance(e, ev.Job):
            self.add(e.id, e.task, e.key, e.priority, e.max_attempts, e.due, loc, now,
                     state=e.state, attempts=e.attempts)  # fmt: skip
        else:
            self.add(e.id, e.task, e.key, e.priority, e.max_attempts, e.due, loc, now)

    def _create_after(self, e: ev.After, loc: Loc, now: Now) -> None:
        """A job enqueued after others: waiting until they are done, unless its wait is over."""
        job = e.job
        jid = job.id
        if jid not in self._jobs and jid in self._tombstones:
            return  # cancelled since (replay)
        waits = isinstance(job, ev.Enqueue) or job.state == WAITING
        if not waits:
            self._create(job, loc, now)
            if jid in self._jobs:
                self._after[jid] = (e.parents, e.policy)
            return
        if jid not in self._jobs:
            attempts = job.attempts if isinstance(job, ev.Job) else 0
            self.add(jid, job.task, job.key, job.priority, job.max_attempts, 0.0, loc, now,
                     state=WAITING, attempts=attempts)  # fmt: skip
        if jid not in self._jobs or self._jobs[jid] & _M3 != WAITING:
            return
        self._after[jid] = (e.parents, e.policy)
        if job.due:
            self._wait_due[jid] = job.due
        outstanding: set[int] = set()
        cause = None
        for parent in e.parents:
            p = self._jobs.get(parent)
            if p is not None and p & _M3 != DEAD:
                outstanding.add(parent)
            elif p is not None or parent in self._tombstones or parent >= self.next_id:
                cause = cause or f"job {parent} it was enqueued after is {self._gone(parent)}"
        if cause is not None and e.policy == ev.AFTER_CANCEL:
            self._cancel_dependent(jid, cause, now)
            return
        if not outstanding:
            self._make_ready(jid, now)
            return
        self._outstanding[jid] = outstanding
        for parent in outstanding:
            self._held_by.setdefault(parent, []).append(jid)

    def _gone(self, jid: int) -> str:
        """What became of parent `jid` that did not finish done (for a dependent's cause)."""
        if jid in self._jobs:
            return "dead"
        tomb = self._tombstones.get(jid)
        if tomb is not None:
            return _GONE[tomb]
        return "unknown" if jid >= self.next_id else "done"

    def _settled(self, jid: int, ok: bool, now: Now) -> None:
        """Job `jid` is done (ok) or dead, cancelled or purged: its dependents move on."""
        self._after.pop(jid, None)
        self._wait_due.pop(jid, None)
        self._outstanding.pop(jid, None)
        work = [(jid, ok)]
        while work:
            parent, done = work.pop()
            for child in self._held_by.pop(parent, ()):
                left = self._outstanding.get(child)
                if left is None or parent not in left:
                    continue
                left.discard(parent)
                policy = self._after.get(child, ((), ev.AFTER_CANCEL))[1]
                if not done and policy == ev.AFTER_CANCEL:
                    self._cancel_dependent(child, f"job {parent} it was enqueued after is "
                                           f"{self._gone(parent)}", now)  # fmt: skip
                    work.append((child, False))
                elif not left:
                    self._make_ready(child, now)

    def _cancel_dependent(self, jid: int, cause: str, now: Now) -> None:
        """Waiting job `jid` is cancelled because a parent did not finish done."""
        self._outstanding.pop(jid, None)
        self.causes[jid] = cause
        self._remove(jid, "cancel", ev.CANCELLED)
        self._after.pop(jid, None)
        self._wait_due.pop(jid, None)

    def _make_ready(self, jid: int, now: Now) -> None:
        """Waiting job `jid`'s parents are all settled: pending (or scheduled, if delayed)."""
        self._outstanding.pop(jid, None)
        p = self._jobs[jid]
        due = self._wait_due.pop(jid, 0.0)
        to = SCHEDULED if due > now.wall else PENDING
        self._jobs[jid] = p = self._step(jid, p, "ready", to)
        self.readied += 1
        if to == SCHEDULED:
            self._schedule(jid, now.mono_at(due))
        elif not self.loading:
            self._push_ready(jid, p)

    def _finished(self, e: ev.Finish, loc: Loc, now: Now) -> None:
        """An ack with its result and follow-up jobs (one record)."""
        if e.result_kind != ev.RESULT_NONE and e.keep_until > now.wall:
            self._results[e.id] = (e.keep_until, loc)
        if e.id in self._jobs or not self.loading:
            self._remove(e.id, "ack", None)
            self._settled(e.id, True, now)
        for child in e.children:
            if isinstance(child, ev.After):
                self._create_after(child, loc, now)
            else:
                self._create(child, loc, now)

    def flow_event(self) -> ev.Flow:
        """The flow state a checkpoint carries (a replay rebuilds it from the records)."""
        return ev.Flow(
            results=tuple((j, u, loc.seg, loc.offset, loc.size)
                          for j, (u, loc) in self._results.items()),
            waits=tuple((j, policy, self._wait_due.get(j, 0.0), parents)
                        for j, (parents, policy) in self._after.items()),
            causes=tuple(self.causes.items()),
        )  # fmt: skip

    def _restore_flow(self, e: ev.Flow, now: Now) -> None:
        """A checkpoint's flow state, onto the jobs it restored."""
        for jid, until, seg, offset, size in e.results:
            if until > now.wall:
                self._results[jid] = (until, Loc(seg, offset, size))
        self.causes.update(e.causes)
        for jid, policy, due, parents in e.waits:
            p = self._jobs.get(jid)
            if p is None:
                continue
            self._after[jid] = (parents, policy)
            if p & _M3 != WAITING:
                continue
            if due:
                self._wait_due[jid] = due
            outstanding = {q for q in parents if self._is(q, PENDING, SCHEDULED, RUNNING, WAITING)}
            if not outstanding:
                self._make_ready(jid, now)
                continue
            self._outstanding[jid] = outstanding
            for parent in outstanding:
                self._held_by.setdefault(parent, []).append(jid)

    def wait_due(self, jid: int) -> float:
        """The wall time waiting job `jid`'s delay ends (0: none)."""
        return self._wait_due.get(jid, 0.0)

    def relocate_results(self, moves: dict[int, Loc], upto: int) -> None:
        """Point kept results at their copies in the compacted segment `upto`."""
        for jid, loc in moves.items():
            kept = self._results.get(jid)
            if kept is not None and seq_of(kept[1].seg) <= upto:
                self._results[jid] = (kept[0], loc)

    def drop_expired_results(self, wall: float) -> int:
        """Forget results kept past their time; how many."""
        old = [jid for jid, (until, _) in self._results.items() if until <= wall]
        for jid in old:
            del self._results[jid]
        return len(old)

    # The enqueue hot path: what `add` does for one job, for a batch of new ids.
    add_new = enqueue.add_new

    def add(
        self,
        jid: int,
        task: str,
        key: str | None,
        priority: int,
        max_attempts: int,
        due: float,
        loc: Loc,
        now: Now,
        *,
        state: int = PENDING,
        attempts: int = 0,
    ) -> None:
        """A job created by an enqueue or job record (ignored if already known)."""
        if jid >= self.next_id:
            self.next_id = jid + 1
        elif jid in self._jobs or jid in self._tombstones:
            return
        if state == DEAD:
            self._errors[jid] = loc
        elif due > now.wall and state != WAITING:
            state = SCHEDULED
        if not self.loading:
            check(jid, "new", "enqueue", STATE_NAMES[state])
        p = _pack(state, attempts, max_attempts, priority, self.task_index(task), loc)
        self._jobs[jid] = p
        if not self.loading:
            self._count(p, +1)
            self.live_bytes += loc.size
            self._seg_bytes[loc.seg] = self._seg_bytes.get(loc.seg, 0) + loc.size
        if key is not None:
            self._key_of[jid] = key
            if state != DEAD:
                self._keys[key] = jid
        if state == SCHEDULED:
            self._schedule(jid, now.mono_at(due))
        elif state == PENDING and not self.loading:
            self._push_ready(jid, p)

    def _claimed(self, jid: int, attempt: int) -> None:
        p = self._jobs.get(jid)
        if p is None:
            self._absent(jid, "claim")
            return
        p = _with(self._step(jid, p, "claim", RUNNING), _ATTEMPTS, _M16, min(attempt, _M16))
        self._jobs[jid] = p
        self._due.pop(jid, None)

    def _failed(self, e: ev.Fail, loc: Loc, now: Now) -> None:
        p = self._jobs.get(e.id)
        if p is None:
            self._absent(e.id, "fail")
            return
        # A Fail of a pending job is a claim that settled it without running it
        # (out of attempts, a damaged record, deferred by the claimer).
        event = "claim" if p & _M3 == PENDING else "fail"
        to = DEAD if e.dead else SCHEDULED if e.due > now.wall else PENDING
        p = self._step(e.id, _with(p, _ATTEMPTS, _M16, min(e.attempt, _M16)), event, to)
        self._leases.pop(e.id, None)
        self._jobs[e.id] = p
        if to == DEAD:
            self._errors[e.id] = loc
            self._release_key(e.id)
            self._settled(e.id, False, now)
        elif to == SCHEDULED:
            self._schedule(e.id, now.mono_at(e.due))
        elif not self.loading:
            self._push_ready(e.id, p)

    def _released(self, jid: int, attempts: int) -> None:
        p = self._jobs.get(jid)
        if p is None or (self.loading and p & _M3 == DEAD):
            if p is None:
                self._absent(jid, "release")
            return
        p = _with(self._step(jid, p, "release", PENDING), _ATTEMPTS, _M16, min(attempts, _M16))
        self._leases.pop(jid, None)
        self._jobs[jid] = p
        if not self.loading:
            self._push_ready(jid, p)

    def _requeued(self, jid: int) -> None:
        p = self._jobs.get(jid)
        if p is None or (self.loading and p & _M3 != DEAD):
            if p is None:
                self._absent(jid, "requeue")
            return
        p = _with(self._step(jid, p, "requeue", PENDING), _ATTEMPTS, _M16, 0)
        self._errors.pop(jid, None)
        self._jobs[jid] = p
        key = self._key_of.get(jid)
        if key is not None and key not in self._keys:
            self._keys[key] = jid
        if not self.loading:
            self._push_ready(jid, p)

    def _remove(self, jid: int, event: str, tombstone: int | None) -> None:
        p = self._jobs.get(jid)
        if p is None:
            self._absent(jid, event)
            return
        if not self.loading:
            check(jid, STATE_NAMES[p & _M3], event, _GONE[tombstone])
            self._count(p, -1)
            size = (p >> _SIZE) & _M32
            self.live_bytes -= size
            self._seg_bytes[p >> _SEG] -= size
        del self._jobs[jid]
        if self.timed.unique:
            self.timed.unique.pop(jid, None)
        self._release_key(jid)
        self._key_of.pop(jid, None)
        self._errors.pop(jid, None)
        self._leases.pop(jid, None)
        self._due.pop(jid, None)
        if tombstone is not None:
            self._tombstones[jid] = tombstone

    def _release_key(self, jid: int) -> None:
        key = self._key_of.get(jid)
        if key is not None and self._keys.get(key) == jid:
            del self._keys[key]

    def _move(self, p: int, state: int) -> int:
        if self.loading:
            return (p & ~_M3) | state
        self._count(p, -1)
        p = (p & ~_M3) | state
        self._count(p, +1)
        return p

    def _count(self, p: int, delta: int) -> None:
        """Keep the per-state counts (not while loading: finish_replay counts once)."""
        state = p & _M3
        self._n[state] += delta
        task = (p >> _TASK) & _MT
        counts = self._by_task.get(task)
        if counts is None:
            counts = self._by_task[task] = [0] * N_STATES
        counts[state] += delta

    def _schedule(self, jid: int, due: float) -> None:
        self._due[jid] = due
        if self.loading:
            self._scheduled.append((due, jid))
        else:
            heapq.heappush(self._scheduled, (due, jid))

    def _push_ready(self, jid: int, p: int) -> None:
        self._ready.queue((p >> _PRIO) & _M16, (p >> _TASK) & _MT).append(jid)

    # -- the owner's operations ------------------------------------------------------

    def tick(self, now: Now) -> list[int]:
        """Move due scheduled jobs to pending and expired leases back; return the expired."""
        sched = self._scheduled
        while sched and sched[0][0] <= now.mono:
            due, jid = heapq.heappop(sched)
            p = self._jobs.get(jid)
            if p is None or p & _M3 != SCHEDULED or self._due.get(jid) != due:
                continue
            del self._due[jid]
            self._jobs[jid] = p = self._step(jid, p, "due", PENDING)
            self._push_ready(jid, p)
        expired = []
        leases = self._lease_heap
        while leases and leases[0][0] <= now.mono:
            deadline, jid = heapq.heappop(leases)
            held = self._leases.get(jid)
            if held is None or held[0] != deadline:
                continue
            del self._leases[jid]
            p = self._jobs[jid]
            self._jobs[jid] = p = self._step(jid, p, "expire", PENDING)
            self._push_ready(jid, p)
            expired.append(jid)
        return expired

    def take_ready(
        self,
        limit: int,
        accept: Callable[[JobInfo], bool | float] | None = None,
        deferred: list[tuple[JobInfo, float]] | None = None,
    ) -> list[JobInfo]:
        """Pop up to `limit` pending jobs, highest priority first, then oldest first.

        `accept` is asked about each job just before it is taken: True takes
        it; False leaves that task's jobs pending for the rest of this call
        (its concurrency cap is full, its breaker is open); a number pops the
        job into `deferred` with that monotonic time. The caller must record a
        Claim for the jobs it takes (a Fail for those out of attempts) and a
        deferral for the deferred.
        """
        return self._ready.take(limit, self._jobs, self._info, accept, deferred, self._paused_ids)

    def start(self, jid: int, attempt: int, deadline: float) -> None:
        """Mark a taken job running with a lease until monotonic `deadline`.

        The job's Claim record may already have been applied (then it is
        running that attempt, and only the lease is new).
        """
        p = self._jobs.get(jid)
        if p is None or p & _M3 != RUNNING or (p >> _ATTEMPTS) & _M16 != min(attempt, _M16):
            self._claimed(jid, attempt)
        self._leases[jid] = (deadline, attempt)
        heapq.heappush(self._lease_heap, (deadline, jid))

    def start_taken(self, items: Sequence[tuple[int, int]], deadline: float) -> None:
        """Mark jobs just taken by `take_ready` running, leased until monotonic `deadline`.

        `items`: (job id, attempt) pairs, as their Claim record says (which the
        caller writes and does not apply: this is that record's effect and
        `start`'s, in one pass). The pending -> running move is checked against
        TRANSITIONS once; a job that is no longer pending takes the general path.
        """
        if not items:
            return
        check(items[0][0], "pending", "claim", "running")
        jobs, leases, heap, due = self._jobs, self._leases, self._lease_heap, self._due
        moved: dict[int, int] = {}  # task index -> jobs moved
        for jid, attempt in items:
            p = jobs.get(jid)
            if p is None or p & _M3 != PENDING:
                self._claimed(jid, attempt)  # checked one by one (StateError if it may not)
            else:
                task = (p >> _TASK) & _MT
                moved[task] = moved.get(task, 0) + 1
                p = (p & ~(_M3 | _M16 << _ATTEMPTS)) | RUNNING | min(attempt, _M16) << _ATTEMPTS
                jobs[jid] = p
                if due:
                    due.pop(jid, None)
            leases[jid] = (deadline, attempt)
            heapq.heappush(heap, (deadline, jid))
        for task, k in moved.items():
            self._shift(task, PENDING, RUNNING, k)

    def _shift(self, task: int, old: int, new: int | None, k: int) -> None:
        """Count `k` jobs of task index `task` moved from state `old` to `new` (None: gone)."""
        counts = self._by_task.get(task)
        if counts is None:
            counts = self._by_task[task] = [0] * 5
        self._n[old] -= k
        counts[old] -= k
        if new is not None:
            self._n[new] += k
            counts[new] += k

    def held(
        self, items: Iterable[tuple[int, int | None]]
    ) -> tuple[list[int], list[tuple[int, StateError]]]:
        """Which of (job id, attempt or None) are running that attempt: (held ids, refused).

        `check_holder` for many jobs, without building a JobInfo for each.
        """
        ok: list[int] = []
        refused: list[tuple[int, StateError]] = []
        jobs = self._jobs
        for jid, attempt in items:
            p = jobs.get(jid)
            if (
                p is not None
                and p & _M3 == RUNNING
                and (attempt is None or (p >> _ATTEMPTS) & _M16 == attempt)
            ):
                ok.append(jid)
                continue
            try:
                self.check_holder(jid, attempt)  # raises, saying why
            except StateError as exc:
                refused.append((jid, exc))
            else:  # pragma: no cover -- the fast test above accepts every holder
                ok.append(jid)
        return ok, refused

    def finish(self, ids: Sequence[int], now: Now | None = None) -> None:
        """Remove running jobs `ids` (held: see `held`) as their Ack record says.

        The batch form of applying the Ack: the running -> done move is checked
        once; a job that is not running takes the general path. Jobs waiting
        for them move on, as the Ack's replay would make them (`now`: when).
        """
        if not ids:
            return
        check(ids[0], "running", "ack", "done")
        jobs, seg_bytes = self._jobs, self._seg_bytes
        key_of, errors, leases, due = self._key_of, self._errors, self._leases, self._due
        unique = self.timed.unique
        gone: dict[int, int] = {}  # task index -> jobs finished
        freed = 0
        for jid in ids:
            p = jobs.get(jid)
            if p is None or p & _M3 != RUNNING:
                self._remove(jid, "ack", None)  # checked one by one
                continue
            task = (p >> _TASK) & _MT
            gone[task] = gone.get(task, 0) + 1
            size = (p >> _SIZE) & _M32
            freed += size
            seg_bytes[p >> _SEG] -= size
            del jobs[jid]
            if key_of:
                self._release_key(jid)
                key_of.pop(jid, None)
            if errors:
                errors.pop(jid, None)
            leases.pop(jid, None)
            if due:
                due.pop(jid, None)
            if unique:
                unique.pop(jid, None)
        self.live_bytes -= freed
        for task, k in gone.items():
            self._shift(task, RUNNING, None, k)
        if self._held_by or self._after:
            for jid in ids:
                self._settled(jid, True, now or Now(0.0, 0.0))

    def untake(self, jobs: Iterable[JobInfo]) -> None:
        """Put jobs taken by `take_ready` back at the head of their queues (nothing recorded)."""
        for info in reversed(list(jobs)):
            p = self._jobs.get(info.id)
            if p is None or p & _M3 != PENDING:
                continue
            prio = (p >> _PRIO) & _M16
            task = (p >> _TASK) & _MT
            self._ready.queue(prio, task).appendleft(info.id)

    def extend(self, jid: int, attempt: int | None, deadline: float) -> None:
        """Move the lease of running job `jid` to monotonic `deadline` (a heartbeat)."""
        self.check_holder(jid, attempt)
        held = self._leases[jid]
        self._leases[jid] = (deadline, held[1])
        heapq.heappush(self._lease_heap, (deadline, jid))

    def check_holder(self, jid: int, attempt: int | None) -> JobInfo:
        """The running job `jid` if attempt `attempt` (None: any) still holds it."""
        p = self._jobs.get(jid)
        if p is None:
            status = self.status(jid)
            if attempt is not None:
                raise LeaseLost(f"job {jid} is {status}: attempt {attempt} no longer holds it")
            raise StateError(f"job {jid} is {status}, not running")
        info = self._info(jid, p)
        if info.state != RUNNING:
            if attempt is not None:
                raise LeaseLost(
                    f"job {jid} is {info.state_name}: attempt {attempt}'s lease has expired"
                )
            raise StateError(f"job {jid} is {info.state_name}, not running")
        if attempt is not None and info.attempts != attempt:
            raise LeaseLost(f"job {jid} is running attempt {info.attempts}, not {attempt}")
        return info

    def live_ids(self) -> list[int]:
        """Every live job id, in insertion order."""
        return list(self._jobs)

    def live_bytes_upto(self, seq: int) -> int:
        """Bytes of live jobs' records in segments up to `seq`."""
        return sum(n for s, n in self._seg_bytes.items() if seq_of(s) <= seq)

    def segments_in_use(self) -> list[int]:
        """Every Loc.seg some live job's record is in."""
        return [s for s, n in self._seg_bytes.items() if n]

    def due_of(self, jid: int) -> float | None:
        """The monotonic time scheduled job `jid` falls due."""
        return self._due.get(jid)

    def relocate(self, moves: dict[int, tuple[Loc, bool]], upto: int) -> None:
        """Point jobs at their records' new homes after a compaction of segments <= `upto`.

        Only jobs whose record still lies in a compacted segment move; an error
        recorded there moves too (the new `job` record carries it).
        """
        for jid, (loc, _) in moves.items():
            p = self._jobs.get(jid)
            if p is None:
                continue
            old_seg = p >> _SEG
            if seq_of(old_seg) <= upto and old_seg != loc.seg:
                old = (p >> _SIZE) & _M32
                self._seg_bytes[old_seg] -= old
                self._seg_bytes[loc.seg] = self._seg_bytes.get(loc.seg, 0) + loc.size
                p = _with(p, _SIZE, _M32, loc.size)
                p = _with(p, _OFFSET, _M32, loc.offset)
                p = (p & ((1 << _SEG) - 1)) | (loc.seg << _SEG)
                self._jobs[jid] = p
                self.live_bytes += loc.size - old
            err = self._errors.get(jid)
            if err is not None and seq_of(err.seg) <= upto and err.seg != loc.seg:
                self._errors[jid] = loc
        for seg in [s for s, n in self._seg_bytes.items() if not n]:
            del self._seg_bytes[seg]


def with_cause(detail: dict[str, Any], state: QueueState) -> dict[str, Any]:
    """A finished job's detail (job_detail's keys) with its cause, if a parent's failure
    cancelled it: every reader of a directory's state shows it the same way."""
    cause = state.causes.get(detail["id"])
    if cause is not None and detail["status"] == "cancelled":
        detail["cause"] = cause
    return detail
