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
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import NamedTuple, Protocol, TypeAlias

import attrs

from walq.core import events as ev
from walq.core import format as fmt
from walq.core import framing
from walq.core.jobspec import MAX_ATTEMPTS, MIN_PRIORITY
from walq.core.transitions import TRANSITIONS, check, next_states
from walq.errors import ArgumentError, LeaseLost, StateError, UnknownJobError

# A record handed on by replay: (segment seq, type, offset, size, body).
Sink: TypeAlias = Callable[[int, int, int, int, memoryview], None]

PENDING, SCHEDULED, RUNNING, DEAD = ev.PENDING, ev.SCHEDULED, ev.RUNNING, ev.DEAD
STATE_NAMES = {PENDING: "pending", SCHEDULED: "scheduled", RUNNING: "running", DEAD: "dead"}
# What a job that leaves the table became, by its tombstone (None: acked).
_GONE: dict[int | None, str] = {None: "done", ev.CANCELLED: "cancelled", ev.PURGED: "purged"}


# A live job is one packed int (about 130 bytes of RAM with its dict slot,
# against 210 for a slotted object): the fields below, then its record's
# location (segment, offset, size) so the payload can be read back from disk.
# The task is an index into the names seen (the log stores names, not indexes):
# 32 bits, so the number of distinct task names has no limit that matters --
# 2**32 names would need hundreds of GiB of RAM first. (It was 16 bits, and
# the 65,537th name was refused after its record was written: see task_index.)
_STATE, _ATTEMPTS, _MAXA, _PRIO, _TASK, _SIZE, _OFFSET, _SEG = 0, 3, 19, 35, 51, 83, 115, 147
_M3, _M16, _M32 = 0x7, 0xFFFF, 0xFFFFFFFF
_MT = _M32  # the task index's mask


def _pack(state: int, attempts: int, maxa: int, prio: int, task: int, loc: Loc) -> int:
    return (
        state
        | attempts << _ATTEMPTS
        | maxa << _MAXA
        | (prio - MIN_PRIORITY) << _PRIO
        | task << _TASK
        | loc.size << _SIZE
        | loc.offset << _OFFSET
        | loc.seg << _SEG
    )


def _with(packed: int, shift: int, mask: int, value: int) -> int:
    return (packed & ~(mask << shift)) | (value << shift)


@attrs.frozen
class Now:
    """The current time in both clocks: wall (survives restarts) and monotonic."""

    wall: float
    mono: float

    def mono_at(self, wall: float) -> float:
        """The monotonic time that corresponds to wall-clock time `wall`."""
        return self.mono + (wall - self.wall)


SEQ_BITS = 48
_SEQ_MASK = (1 << SEQ_BITS) - 1


def seq_of(seg: int) -> int:
    """The segment sequence number in a Loc.seg (see Loc)."""
    return seg & _SEQ_MASK


class Loc(NamedTuple):
    """Where a job's defining record lives: segment, offset, record size in bytes.

    (A NamedTuple rather than an attrs class: one is made per job on the hot
    paths, and this is four times cheaper to build.)

    `seg` is the segment's sequence number -- plus, for a segment a compaction
    installed while this process runs, a generation in the bits above
    SEQ_BITS: the compacted file replaces the old one under the same number,
    and until every job has moved, both files' records are live.
    """

    seg: int
    offset: int
    size: int


class NewJob(Protocol):
    """What `QueueState.add_new` reads of a job being enqueued."""

    @property
    def task(self) -> str: ...
    @property
    def key(self) -> str | None: ...
    @property
    def priority(self) -> int: ...
    @property
    def max_attempts(self) -> int: ...


class JobInfo(NamedTuple):
    """A snapshot of one live job's fields, as the state holds them (a NamedTuple: hot path)."""

    id: int
    task: str
    state: int
    attempts: int
    max_attempts: int
    priority: int
    loc: Loc

    @property
    def state_name(self) -> str:
        return STATE_NAMES[self.state]


@attrs.frozen
class TaskCounts:
    """Live jobs (of one task, or all) by state."""

    pending: int = 0
    scheduled: int = 0
    running: int = 0
    dead: int = 0

    @classmethod
    def of(cls, n: list[int]) -> TaskCounts:
        """From a list indexed by state code."""
        return cls(n[PENDING], n[SCHEDULED], n[RUNNING], n[DEAD])


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
        self._ready: dict[int, dict[int, deque[int]]] = {}
        self._scheduled: list[tuple[float, int]] = []
        self._due: dict[int, float] = {}
        self._leases: dict[int, tuple[float, int]] = {}
        self._lease_heap: list[tuple[float, int]] = []
        self._n = [0] * 5  # live jobs by state code, over all tasks
        self._by_task: dict[int, list[int]] = {}  # the same, per task
        self.live_bytes = 0
        self._seg_bytes: dict[int, int] = {}  # live record bytes per segment
        self._loading = True

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
        return n[PENDING] + n[SCHEDULED] + n[RUNNING]

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

    def key_holder(self, key: str) -> int | None:
        """The unfinished job holding idempotency key `key`, if any."""
        return self._keys.get(key)

    def key_of(self, jid: int) -> str | None:
        """The idempotency key of live job `jid`, if it has one."""
        return self._key_of.get(jid)

    def error_loc(self, jid: int) -> Loc | None:
        """Where the last error of dead job `jid` is recorded."""
        return self._errors.get(jid)

    def jobs(self, state: int | None = None) -> Iterator[JobInfo]:
        """Live jobs in id order, optionally only those in `state`."""
        for jid, p in list(self._jobs.items()):
            if state is None or p & _M3 == state:
                yield self._info(jid, p)

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
        elif isinstance(event, ev.Claim):
            for jid, attempt in event.items:
                self._claimed(jid, attempt)
        elif isinstance(event, ev.Ack):
            for jid in event.ids:
                self._remove(jid, "ack", None)
        elif isinstance(event, ev.Fail):
            self._failed(event, loc, now)
        elif isinstance(event, ev.Release):
            for jid, attempts in event.items:
                self._released(jid, attempts)
        elif isinstance(event, ev.Cancel):
            for jid in event.ids:
                if not self._loading or self._is(jid, PENDING, SCHEDULED, RUNNING):
                    self._remove(jid, "cancel", ev.CANCELLED)
        elif isinstance(event, ev.Requeue):
            for jid in event.ids:
                self._requeued(jid)
        elif isinstance(event, ev.Purge):
            for jid in event.ids:
                if not self._loading or self._is(jid, DEAD):
                    self._remove(jid, "purge", ev.PURGED)
        else:
            self.next_id = max(self.next_id, event.next_id)
            self._tombstones.update(event.tombstones)

    def _is(self, jid: int, *states: int) -> bool:
        p = self._jobs.get(jid)
        return p is not None and p & _M3 in states

    def _step(self, jid: int, p: int, event: str, to: int) -> int:
        """`p` moved to state `to` by `event`: checked against TRANSITIONS unless replaying."""
        if not self._loading:
            check(jid, STATE_NAMES[p & _M3], event, STATE_NAMES[to])
        return self._move(p, to)

    def _absent(self, jid: int, event: str) -> None:
        """An event for a job that is not live: skipped in replay, StateError live."""
        if not self._loading:
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

    def replay_sink(self, now: Now, other: Sink) -> Sink:
        """A sink for valid records (framing.scan_fast) that replays the common ones fast.

        The open path: a plain enqueue record becomes a packed entry straight
        from its bytes (its payload is not even sliced); every other record
        is handed to `other(seq, type, offset, size, body)`.
        """
        assert self._loading
        unpack_enq = ev.ENQUEUE_HEAD.unpack_from
        enq_size = ev.ENQUEUE_HEAD.size
        enqueue = fmt.ENQUEUE
        jobs, tombs = self._jobs, self._tombstones
        task_ids: dict[bytes | memoryview, int] = {}
        wall = now.wall

        def sink(seq: int, rtype: int, offset: int, size: int, body: memoryview) -> None:
            if rtype != enqueue or len(body) < enq_size:
                other(seq, rtype, offset, size, body)
                return
            jid, prio, maxa, kind, due, _created, tlen, klen, olen = unpack_enq(body)
            raw_task = body[enq_size : enq_size + tlen]  # hashes and compares as bytes
            task = task_ids.get(raw_task)
            if task is None and tlen > 0 and enq_size + tlen <= len(body):
                try:
                    task = task_ids[bytes(raw_task)] = self.task_index(str(raw_task, "utf-8"))
                except UnicodeDecodeError:
                    task = None
            if task is None or klen != 0xFFFF or olen or due > wall or kind > 1:
                # Keys, origins, schedules, anything odd: the general path (which
                # also raises BadEvent for a malformed body).
                other(seq, rtype, offset, size, body)
                return
            if jid >= self.next_id:
                self.next_id = jid + 1
            elif jid in jobs or jid in tombs:
                return
            jobs[jid] = (
                PENDING
                | maxa << _MAXA
                | (prio - MIN_PRIORITY) << _PRIO
                | task << _TASK
                | size << _SIZE
                | offset << _OFFSET
                | seq << _SEG
            )

        return sink

    def finish_replay(self, now: Now) -> None:
        """End of replay: jobs that were running have lost their worker; index the rest.

        A running job goes back to pending with its attempt counted: its start
        was durable, so a job that kills the owner is charged every time.
        """
        # While loading, counts and byte totals were not kept: count them now, once.
        jobs = self._jobs
        seg_bytes: dict[int, int] = {}
        by_task: dict[int, list[int]] = {}
        total = [0] * 5
        live = 0
        for jid, packed in jobs.items():
            state = packed & _M3
            if state == RUNNING:
                packed = (packed & ~_M3) | PENDING  # noqa: PLW2901
                jobs[jid] = packed
                state = PENDING
            if state == PENDING:
                self._push_ready(jid, packed)
            size = (packed >> _SIZE) & _M32
            live += size
            seg = packed >> _SEG
            seg_bytes[seg] = seg_bytes.get(seg, 0) + size
            task = (packed >> _TASK) & _MT
            counts = by_task.get(task)
            if counts is None:
                counts = by_task[task] = [0] * 5
            counts[state] += 1
            total[state] += 1
        self._n, self._by_task, self._seg_bytes, self.live_bytes = total, by_task, seg_bytes, live
        heapq.heapify(self._scheduled)
        self._loading = False

    def _create(self, e: ev.Enqueue | ev.Job, loc: Loc, now: Now) -> None:
        if isinstance(e, ev.Job):
            self.add(e.id, e.task, e.key, e.priority, e.max_attempts, e.due, loc, now,
                     state=e.state, attempts=e.attempts)  # fmt: skip
        else:
            self.add(e.id, e.task, e.key, e.priority, e.max_attempts, e.due, loc, now)

    def add_new(
        self,
        first: int,
        jobs: Sequence[NewJob],
        dues: Sequence[float],
        locs: Sequence[Loc],
        now: Now,
    ) -> None:
        """Jobs just enqueued, with ids first, first + 1, ...: their due times and records.

        The enqueue hot path: what `add` does for a job, for a batch of jobs
        whose ids are all new (from next_id on), with the bookkeeping done once.
        """
        assert not self._loading and first >= self.next_id
        enqueue = TRANSITIONS[("new", "enqueue")]
        may_pend, may_schedule = "pending" in enqueue, "scheduled" in enqueue
        wall = now.wall
        table = self._jobs
        seg_bytes = self._seg_bytes
        # One-entry caches: a batch is usually one task at one priority.
        task, t, pt, q = None, 0, (-1, -1), None
        counted_t, counted = -1, 0
        seg, seg_added, added = -1, 0, 0
        jid = first
        for job, due, loc in zip(jobs, dues, locs, strict=True):
            if job.task != task:
                task = job.task
                t = self.task_index(task)
            prio = job.priority - MIN_PRIORITY
            size = loc.size
            if loc.seg != seg:
                if seg_added:
                    seg_bytes[seg] = seg_bytes.get(seg, 0) + seg_added
                seg, seg_added = loc.seg, 0
            seg_added += size
            added += size
            p = (
                job.max_attempts << _MAXA
                | prio << _PRIO
                | t << _TASK
                | size << _SIZE
                | loc.offset << _OFFSET
                | seg << _SEG
            )
            if job.key is not None:
                self._key_of[jid] = job.key
                self._keys[job.key] = jid
            if due > wall:
                if not may_schedule:
                    check(jid, "new", "enqueue", "scheduled")
                table[jid] = p | SCHEDULED
                self._count_new(t, SCHEDULED)
                self._schedule(jid, now.mono_at(due))
            else:
                if not may_pend:
                    check(jid, "new", "enqueue", "pending")
                table[jid] = p | PENDING
                if t != counted_t:
                    if counted:
                        self._count_new(counted_t, PENDING, counted)
                    counted_t, counted = t, 0
                counted += 1
                if (prio, t) != pt:
                    pt = (prio, t)
                    q = self._ready.setdefault(prio, {}).setdefault(t, deque())
                assert q is not None
                q.append(jid)
            jid += 1
        if seg_added:
            seg_bytes[seg] = seg_bytes.get(seg, 0) + seg_added
        if counted:
            self._count_new(counted_t, PENDING, counted)
        self.next_id = max(self.next_id, jid)
        self.live_bytes += added

    def _count_new(self, t: int, state: int, k: int = 1) -> None:
        """Count `k` new jobs of task index `t` in `state`."""
        self._n[state] += k
        counts = self._by_task.get(t)
        if counts is None:
            counts = self._by_task[t] = [0] * 5
        counts[state] += k

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
        elif due > now.wall:
            state = SCHEDULED
        if not self._loading:
            check(jid, "new", "enqueue", STATE_NAMES[state])
        p = _pack(state, attempts, max_attempts, priority, self.task_index(task), loc)
        self._jobs[jid] = p
        if not self._loading:
            self._count(p, +1)
            self.live_bytes += loc.size
            self._seg_bytes[loc.seg] = self._seg_bytes.get(loc.seg, 0) + loc.size
        if key is not None:
            self._key_of[jid] = key
            if state != DEAD:
                self._keys[key] = jid
        if state == SCHEDULED:
            self._schedule(jid, now.mono_at(due))
        elif state == PENDING and not self._loading:
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
        p = _with(p, _ATTEMPTS, _M16, min(e.attempt, _M16))
        self._leases.pop(e.id, None)
        if e.dead:
            self._jobs[e.id] = self._step(e.id, p, event, DEAD)
            self._errors[e.id] = loc
            self._release_key(e.id)
        elif e.due > now.wall:
            self._jobs[e.id] = self._step(e.id, p, event, SCHEDULED)
            self._schedule(e.id, now.mono_at(e.due))
        else:
            self._jobs[e.id] = p = self._step(e.id, p, event, PENDING)
            if not self._loading:
                self._push_ready(e.id, p)

    def _released(self, jid: int, attempts: int) -> None:
        p = self._jobs.get(jid)
        if p is None or (self._loading and p & _M3 == DEAD):
            if p is None:
                self._absent(jid, "release")
            return
        self._leases.pop(jid, None)
        p = _with(self._step(jid, p, "release", PENDING), _ATTEMPTS, _M16, min(attempts, _M16))
        self._jobs[jid] = p
        if not self._loading:
            self._push_ready(jid, p)

    def _requeued(self, jid: int) -> None:
        p = self._jobs.get(jid)
        if p is None or (self._loading and p & _M3 != DEAD):
            if p is None:
                self._absent(jid, "requeue")
            return
        self._errors.pop(jid, None)
        p = _with(self._step(jid, p, "requeue", PENDING), _ATTEMPTS, _M16, 0)
        self._jobs[jid] = p
        key = self._key_of.get(jid)
        if key is not None and key not in self._keys:
            self._keys[key] = jid
        if not self._loading:
            self._push_ready(jid, p)

    def _remove(self, jid: int, event: str, tombstone: int | None) -> None:
        p = self._jobs.get(jid)
        if p is None:
            self._absent(jid, event)
            return
        if not self._loading:
            check(jid, STATE_NAMES[p & _M3], event, _GONE[tombstone])
            self._count(p, -1)
            size = (p >> _SIZE) & _M32
            self.live_bytes -= size
            self._seg_bytes[p >> _SEG] -= size
        del self._jobs[jid]
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
        if self._loading:
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
            counts = self._by_task[task] = [0] * 5
        counts[state] += delta

    def _schedule(self, jid: int, due: float) -> None:
        self._due[jid] = due
        if self._loading:
            self._scheduled.append((due, jid))
        else:
            heapq.heappush(self._scheduled, (due, jid))

    def _push_ready(self, jid: int, p: int) -> None:
        prio = (p >> _PRIO) & _M16
        by_task = self._ready.get(prio)
        if by_task is None:
            by_task = self._ready[prio] = {}
        task = (p >> _TASK) & _MT
        q = by_task.get(task)
        if q is None:
            q = by_task[task] = deque()
        q.append(jid)

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
        taken: list[JobInfo] = []
        refused: set[int] = set()
        for prio in sorted(self._ready, reverse=True):
            by_task = self._ready[prio]
            # The oldest pending job of each task, oldest first: a heap, so that
            # many tasks refused one after another cost T log T, not T squared.
            heads: list[tuple[int, int]] = []
            for task, q in list(by_task.items()):
                jid = self._head(q)
                if jid is None:
                    del by_task[task]
                elif task not in refused:
                    heads.append((jid, task))
            heapq.heapify(heads)
            while len(taken) < limit and heads:
                best_id, best_task = heapq.heappop(heads)
                info = self._info(best_id, self._jobs[best_id])
                verdict = True if accept is None else accept(info)
                if verdict is False:
                    refused.add(best_task)
                    continue
                q = by_task[best_task]
                q.popleft()
                if verdict is True:
                    taken.append(info)
                elif deferred is not None:
                    deferred.append((info, float(verdict)))
                jid = self._head(q)
                if jid is None:
                    del by_task[best_task]
                else:
                    heapq.heappush(heads, (jid, best_task))
            if not by_task:
                del self._ready[prio]
            if len(taken) >= limit:
                break
        return taken

    def _head(self, q: deque[int]) -> int | None:
        """The first id in `q` that is still pending (drops stale entries)."""
        jobs = self._jobs
        while q:
            jid = q[0]
            p = jobs.get(jid)
            if p is not None and p & _M3 == PENDING:
                return jid
            q.popleft()
        return None

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

    def untake(self, jobs: Iterable[JobInfo]) -> None:
        """Put jobs taken by `take_ready` back at the head of their queues (nothing recorded)."""
        for info in reversed(list(jobs)):
            p = self._jobs.get(info.id)
            if p is None or p & _M3 != PENDING:
                continue
            prio = (p >> _PRIO) & _M16
            task = (p >> _TASK) & _MT
            self._ready.setdefault(prio, {}).setdefault(task, deque()).appendleft(info.id)

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
