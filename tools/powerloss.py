"""Power-loss exploration: random workloads on SimFileSystem, crashed, reopened, checked.

One *run* opens a queue on a fresh `SimFileSystem` and plays rounds. A round is
a random workload (enqueue, enqueue_many, claim, claim_many, ack, fail,
release, cancel, requeue, purge, compact, checkpoint, sync, clock ticks, close/reopen)
that ends in a crash: the process dies at a chosen file-system call
(`crash_at_call`), or the power is cut between operations, or an injected
EIO/ENOSPC makes the log fail first. The disk the crash leaves (mode "any"
with drawn choices, "prefix", "durable" or "clean") is reopened -- sometimes
with a second crash inside recovery -- and that is one *crash state*.

Each crash state is checked against a model of what the queue confirmed. The
model is the queue's own view of its jobs, taken after every operation, plus
when each change became durable: a change is confirmed once an operation that
fsyncs the log returned after it (under sync="always" every call with
sync=None; a claim that wrote; `sync()`; a compaction; `close()`). The log
keeps a prefix of what was written, so the reopened queue must equal the
confirmed state with some prefix of the unconfirmed changes applied -- one
prefix for all jobs. That covers DESIGN.md's guarantees 1-5:

- lost: a confirmed enqueue missing (not confirmed acked or cancelled);
- redelivered-after-ack: a confirmed ack (or cancel) undone, the job live again;
- phantom: a live job nobody enqueued;
- damaged: a payload or task other than the one enqueued;
- attempts-lost: fewer attempts than a confirmed claim had started;
- duplicated / lost spooled jobs: what a producer spooled (walq.connect with no
  owner to talk to, guarantee 8) is in the queue exactly once after the owner
  settles and ingests the spool on open (the workload spools and ingests too);
- open-failed: a crash left a disk the queue cannot open;
- and for injected faults, writes accepted after the log failed.

`python tools/powerloss.py --states 10000 --seed 1` explores without
hypothesis (seeded random choices) and prints `crash-states: N` and
`violations: K`; tests/test_powerloss.py drives the same runs with hypothesis.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import itertools
import json
import logging
import random
import sys
import time
import traceback
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol, TypeVar

import attrs

import walq
from walq.core.job import Ran
from walq.core.state import Now
from walq.errors import (
    CompactionError,
    LogFailedError,
    StateError,
    UnknownJobError,
    WalqError,
)
from walq.producers import spool, wire
from walq.producers.server import ProducerServer
from walq.testing import plant as planting
from walq.testing.faultfs import CrashMode, SimFileSystem, SimulatedCrash

QDIR = "/q"
SEGMENT_SIZE = 4096
SPOOL_TASK = "spooled"  # jobs producers leave in the spool; the workload never claims them
T = TypeVar("T")

# -- choices ------------------------------------------------------------------------


class Chooser(Protocol):
    """Where a run's decisions come from: seeded random, or hypothesis draws."""

    def integer(self, lo: int, hi: int) -> int: ...

    def pick(self, options: Sequence[T]) -> T: ...

    def crash(self, fs: SimFileSystem, mode: CrashMode) -> SimFileSystem: ...


class RandomChooser:
    """Decisions from a seeded `random.Random` (the command line: no shrinking)."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def integer(self, lo: int, hi: int) -> int:
        return self.rng.randint(lo, hi)

    def pick(self, options: Sequence[T]) -> T:
        return options[self.rng.randrange(len(options))]

    def crash(self, fs: SimFileSystem, mode: CrashMode) -> SimFileSystem:
        return fs.crash(self.rng if mode in ("any", "prefix") else None, mode=mode)


def chance(choose: Chooser, percent: int) -> bool:
    """True `percent` times in a hundred."""
    return choose.integer(0, 99) < percent


# -- the model --------------------------------------------------------------------


@attrs.frozen
class MJob:
    """One job as the queue showed it: state, attempts, and when a scheduled job is due."""

    state: str  # pending scheduled running dead done cancelled purged
    attempts: int = 0
    due: float = 0.0  # monotonic


View = dict[int, MJob]  # absent ids are missing
Change = tuple[int, "MJob | None"]
Record = tuple[Change, ...]  # what one log record changed, all or nothing

TERMINAL = ("done", "cancelled", "purged")


def project(job: MJob | None, mono: float) -> tuple[Any, ...]:
    """What a reopen at monotonic time `mono` must show of a job: running jobs lost their worker."""
    if job is None:
        return ("absent",)
    if job.state in TERMINAL:
        return (job.state,)
    state = job.state
    if state == "running" or (state == "scheduled" and job.due <= mono):
        state = "pending"
    return (state, job.attempts)


def observe(q: walq.Queue, ids: Iterable[int]) -> View:
    """The queue's in-memory view of `ids` and of every live job (no file-system calls)."""
    st = q._state
    tombs = st.tombstones()
    view: View = {}
    for jid in set(ids) | set(st.live_ids()):
        if jid in st:
            info = st.info(jid)
            if info.task == SPOOL_TASK:
                continue  # checked apart: see Run.check_spool
            due = st.due_of(jid) if info.state_name == "scheduled" else None
            view[jid] = MJob(info.state_name, info.attempts, due or 0.0)
        elif tombs.get(jid) == 1:
            view[jid] = MJob("cancelled")
        elif tombs.get(jid) == 2:
            view[jid] = MJob("purged")
        elif 1 <= jid < st.next_id:
            view[jid] = MJob("done")
    return view


def _is_dead(record: Record) -> bool:
    return len(record) == 1 and record[0][1] is not None and record[0][1].state == "dead"


def apply(view: View, records: Iterable[Record]) -> View:
    out = dict(view)
    for record in records:
        for jid, job in record:
            if job is None:
                out.pop(jid, None)
            else:
                out[jid] = job
    return out


@attrs.define
class Group:
    """The records one operation wrote, in log order.

    The first `loose` were written in an order the model does not know (the
    dead-letterings a claim writes in take order before its claim record);
    `most`: at most this many of them were written at all (a failed append).
    """

    records: list[Record]
    loose: int = 0
    most: int | None = None


@attrs.define
class Model:
    """What the queue confirmed, what it wrote but did not confirm, and what was enqueued."""

    durable: View = attrs.Factory(dict)
    pending: list[Group] = attrs.Factory(list)  # written, unconfirmed, in log order
    final: Group | None = None  # the operation a crash or a failed write interrupted
    live: View = attrs.Factory(dict)
    payloads: dict[int, tuple[str, Any]] = attrs.Factory(dict)  # id -> (task, payload)

    def record(self, records: list[Record], *, committed: bool, loose: int = 0) -> None:
        """An operation returned having written `records`; `committed`: it fsynced the log."""
        self.live = apply(self.live, records)
        if committed:
            self.durable = dict(self.live)
            self.pending = []
        elif records:
            self.pending.append(Group(records, loose=loose))

    def interrupted(self, records: list[Record], loose: int = 0, most: int | None = None) -> None:
        """The last operation did not return: its records may or may not be on disk."""
        self.live = apply(self.live, records)
        self.final = Group(records, loose=loose, most=most)

    def candidates(self) -> list[View]:
        """Every state a crash may leave: the durable state plus a prefix of what followed."""
        state = dict(self.durable)
        out = [state]
        for group in [*self.pending, *([self.final] if self.final else [])]:
            loose, rest = group.records[: group.loose], group.records[group.loose :]
            most = len(loose) if group.most is None else min(group.most, len(loose))
            for n in range(1, most + 1):
                for subset in itertools.combinations(loose, n):
                    out.append(apply(state, subset))
            if most < len(loose):
                break  # the group was never written whole: nothing after it was
            state = apply(state, loose)
            for record in rest:
                state = apply(state, [record])
                out.append(state)
        return out

    def settle(self, observed: View) -> None:
        """After a successful reopen the observed state is the durable one."""
        self.durable = dict(observed)
        self.live = dict(observed)
        self.pending = []
        self.final = None
        for jid in [j for j in self.payloads if j not in observed]:
            del self.payloads[jid]


def classify(seen: tuple[Any, ...], allowed: set[tuple[Any, ...]]) -> str:
    """Name the broken guarantee when a reopened job matches no crash point."""
    live = ("pending", "scheduled", "dead")
    if seen[0] in live:
        if all(a[0] in TERMINAL for a in allowed):
            return "redelivered-after-ack" if ("done",) in allowed else "revived"
        if all(a[0] == "absent" for a in allowed):
            return "phantom"
        same = [a for a in allowed if a[0] in live]
        if same and all(seen[1] < a[1] for a in same):
            return "attempts-lost"
        return "state-mismatch"
    if all(a[0] in live for a in allowed):
        return "lost"
    return "state-mismatch"


# -- a run ---------------------------------------------------------------------------


class FakeClock:
    """Time that moves only when the run says so (wall and monotonic together)."""

    def __init__(self) -> None:
        self.wall = 1_700_000_000.0
        self.mono = 10_000.0

    def __call__(self) -> Now:
        return Now(self.wall, self.mono)

    def advance(self, seconds: float) -> None:
        self.wall += seconds
        self.mono += seconds


@attrs.frozen
class Violation:
    """A broken guarantee, with what is needed to replay it."""

    kind: str
    detail: str
    run: int
    history: tuple[str, ...]


class Stop(Exception):
    """A violation was recorded: this run ends."""


class ReopenFailed(Exception):
    """Opening the queue again failed with an I/O error (an injected fault): not a violation."""


OUTCOME_OK, OUTCOME_CRASHED, OUTCOME_FAILED = "ok", "crashed", "failed"


class Run:
    """One queue on one simulated disk through several crash rounds."""

    def __init__(
        self,
        choose: Chooser,
        *,
        run: int = 0,
        sync: str = "always",
        faults: bool = True,
        max_states: int | None = None,
    ) -> None:
        self.choose = choose
        self.run = run
        self.sync = sync
        self.faults = faults
        self.max_states = max_states
        self.fs = SimFileSystem()
        self.clock = FakeClock()
        self.model = Model()
        self.q: walq.Queue | None = None
        self.crash_states = 0
        self.history: list[str] = []
        self.violations: list[Violation] = []
        self.payload_seq = itertools.count()
        self.claiming = False
        # Spooled payloads (producers, guarantee 8): confirmed once put() returned, or
        # maybe (a put that did not return). Each must end up in the queue exactly once.
        self.spooled: dict[bytes, bool] = {}
        self.intended: list[Record] = []  # what the running operation means to write
        self.claim_n = 1
        self.last_disk: SimFileSystem | None = None

    # -- driving

    def play(self, rounds: int) -> None:
        """Open the queue and play `rounds` crash rounds (stops at the first violation)."""
        try:
            self.q = self.open(self.fs)
            for _ in range(rounds):
                if self.max_states is not None and self.crash_states >= self.max_states:
                    break
                self.round()
        except Stop:
            pass
        finally:
            self.abandon()

    def abandon(self) -> None:
        if self.q is not None:
            with contextlib.suppress(BaseException):
                self.fs.crash_at_call(None)
                self.fs.clear_faults()
                if not self.fs.dead:
                    self.q.close()
            self.q = None

    def open(self, fs: SimFileSystem) -> walq.Queue:
        return planting.queue_class(walq.Queue).open(
            QDIR,
            fs=fs,
            sync=self.sync,
            segment_size=SEGMENT_SIZE,
            compaction=False,
            clock=self.clock,
            rng=random.Random(0),
            min_free_bytes=0,
            serve=False,  # this run ingests the spool itself, at moments it chooses
        )

    def violate(self, kind: str, detail: str) -> None:
        self.violations.append(Violation(kind, detail, self.run, tuple(self.history[-40:])))

    def round(self) -> None:
        choose = self.choose
        arm = choose.pick(["call", "call", "call", "power", "power", "fault"])
        if arm == "fault" and not self.faults:
            arm = "power"
        if arm == "call":
            at = self.fs.calls + choose.integer(0, 300)
            self.fs.crash_at_call(at)
            self.history.append(f"# crash armed at call {at}")
        elif arm == "fault":
            kind = choose.pick(
                ["pwrite", "sync", "pwrite", "sync", "sync_dir", "rename", "truncate"]
            )
            code = choose.pick([errno.EIO, errno.ENOSPC])
            nth = choose.integer(1, 12)
            self.fs.inject(kind, code, path=QDIR + "/", nth=nth)
            self.history.append(f"# fault armed: {kind} {errno.errorcode[code]} nth={nth}")
        outcome = OUTCOME_OK
        for _ in range(choose.integer(1, 25)):
            outcome = self.step()
            if outcome != OUTCOME_OK:
                break
        if outcome == OUTCOME_FAILED:
            if self.q is not None:
                self.refuses_writes()
            modes: list[CrashMode] = ["clean", "clean", "any", "durable"]
        elif outcome == OUTCOME_CRASHED:
            modes = ["any", "any", "any", "prefix", "durable", "clean"]
        else:
            modes = ["any", "any", "prefix", "durable", "clean"]
        if outcome == OUTCOME_FAILED or (outcome == OUTCOME_OK and chance(choose, 10)):
            # the owner exits cleanly (close) before the crash
            self.fs.crash_at_call(None)
            self.fs.clear_faults()
            try:
                if self.q is not None:
                    self.q.close()
            except WalqError:
                pass
            except BaseException as exc:  # reported, not hidden
                self.violate("unexpected-exception", f"close: {exc!r}")
                raise Stop from None
            if outcome == OUTCOME_OK:
                self.model.record([], committed=True)
        self.fs.crash_at_call(None)
        self.fs.clear_faults()
        mode = choose.pick(modes)
        self.history.append(f"# crash: mode {mode}")
        disk = choose.crash(self.fs, mode)
        self.q = None
        self.recover(disk)

    def refuses_writes(self) -> None:
        """After a failed write or fsync the queue must take no more writes."""
        assert self.q is not None
        self.fs.clear_faults()
        calls: tuple[tuple[str, Callable[[walq.Queue], object]], ...] = (
            ("enqueue", lambda q: q.enqueue("t", {"after": "failure"})),
            ("claim", lambda q: q.claim()),
        )
        for name, call in calls:
            try:
                call(self.q)
            except LogFailedError:
                continue
            except BaseException as exc:
                self.violate("writes-after-failure", f"{name} after a failed write: {exc!r}")
                raise Stop from None
            self.violate("writes-after-failure", f"{name} succeeded after a failed write")
            raise Stop

    def recover(self, disk: SimFileSystem) -> None:
        """Reopen the crashed disk (maybe crashing again inside recovery) and check it."""
        choose = self.choose
        self.last_disk = disk.snapshot(mode="clean")  # for a post-mortem
        for _ in range(3):
            if chance(choose, 15):
                disk.crash_at_call(disk.calls + choose.integer(0, 60))
            try:
                q = self.open(disk)
            except SimulatedCrash:
                modes: list[CrashMode] = ["any", "clean", "durable"]
                mode = choose.pick(modes)
                self.history.append(f"# crashed again while reopening; crash: mode {mode}")
                disk = choose.crash(disk, mode)
                continue
            except BaseException as exc:
                self.crash_states += 1
                self.violate("open-failed", f"reopen after a crash: {exc!r}")
                raise Stop from None
            break
        else:
            disk.crash_at_call(None)
            try:
                q = self.open(disk)
            except BaseException as exc:
                self.crash_states += 1
                self.violate("open-failed", f"reopen after a crash: {exc!r}")
                raise Stop from None
        disk.crash_at_call(None)
        self.fs, self.q = disk, q
        self.crash_states += 1
        self.history.append("# reopened")
        self.check_reopened()
        if self.spooled:
            self.ingest(settle=True)
            self.check_spool()

    def ingest(self, *, settle: bool) -> int:
        """What an owner's ProducerServer does: settle (on open) and ingest the spool."""
        assert self.q is not None
        server = ProducerServer(self.q, listen=False, poll_interval=None)
        if settle:
            server.reconcile()
        return server.ingest()

    def check_spool(self) -> None:
        """Every confirmed spooled job is in the queue exactly once; no other spooled job is."""
        assert self.q is not None
        q = self.q
        seen: dict[bytes, list[int]] = {}
        for info in q._state.jobs():
            if info.task == SPOOL_TASK:
                payload = q._job(info.id, info.attempts).payload
                seen.setdefault(payload, []).append(info.id)
        for payload, ids in seen.items():
            if payload not in self.spooled:
                self.violate("phantom", f"spooled job(s) {ids}: {payload!r:.60} was never spooled")
                raise Stop
            if len(ids) > 1:
                self.violate("duplicated", f"spooled {payload!r:.40} is in the queue as {ids}")
                raise Stop
        names = self.fs.listdir(QDIR + "/spool") if self.fs.is_dir(QDIR + "/spool") else []
        waiting = [n for n in names if not n.startswith(".") and not n.endswith(".tmp")]
        for payload, confirmed in self.spooled.items():
            if confirmed and payload not in seen:
                self.violate(
                    "lost", f"spooled {payload!r:.40} is not in the queue (spool: {waiting})"
                )
                raise Stop
            if payload in seen:
                self.spooled[payload] = True  # in the log: from now on it must stay there

    def check_reopened(self) -> None:
        """The reopened queue equals one crash point of the model, and holds what was enqueued."""
        assert self.q is not None
        q, model = self.q, self.model
        candidates = model.candidates()
        known = set(model.live) | {j for c in candidates for j in c}
        observed = observe(q, known)
        mono = self.clock.mono
        seen = {j: project(observed.get(j), mono) for j in known | set(observed)}
        if not any(all(project(c.get(j), mono) == s for j, s in seen.items()) for c in candidates):
            problems = []
            for jid, s in sorted(seen.items()):
                allowed = {project(c.get(jid), mono) for c in candidates}
                if s not in allowed:
                    problems.append(
                        (classify(s, allowed), f"job {jid}: {s}, allowed {sorted(allowed)}")
                    )
            if not problems:
                problems.append(
                    ("inconsistent", "every job matches some crash point, but no single one")
                )
            for kind, detail in problems:
                self.violate(kind, detail)
            raise Stop
        model.settle(observed)
        for jid, job in observed.items():
            if job.state in TERMINAL:
                continue
            self.check_payload(q, jid, job.attempts)

    def check_payload(self, q: walq.Queue, jid: int, attempt: int) -> None:
        want = self.model.payloads.get(jid)
        if want is None:
            self.violate("phantom", f"job {jid} is live but was never enqueued")
            raise Stop
        try:
            job = q._job(jid, attempt)
        except Exception as exc:  # any failure to read a job back is damage
            self.violate("damaged", f"job {jid}: reading it back failed: {exc!r}")
            raise Stop from None
        if (job.task, job.payload) != want:
            self.violate("damaged", f"job {jid}: {job.task!r} {job.payload!r}, enqueued {want!r}")
            raise Stop

    # -- one operation

    def step(self) -> str:
        """Run one random operation; return ok, crashed or failed (the log refused)."""
        op = self.choose.pick(OPS)
        assert self.q is not None
        before = dict(self.model.live)
        self.claiming = False
        self.intended = []
        try:
            committed = op(self)
        except SimulatedCrash:
            self.interrupted(before)
            return OUTCOME_CRASHED
        except (LogFailedError, ReopenFailed):
            self.interrupted(before)
            return OUTCOME_FAILED
        except Stop:
            raise
        except BaseException as exc:
            self.violate(
                "unexpected-exception",
                f"{self.history[-1] if self.history else op.__name__}: "
                f"{traceback.format_exception_only(type(exc), exc)[-1].strip()}",
            )
            raise Stop from None
        records = self.records(before)
        loose = sum(1 for r in records if _is_dead(r)) if self.claiming else 0
        self.model.record(records, committed=committed, loose=loose)
        return OUTCOME_OK

    def interrupted(self, before: View) -> None:
        """Model an operation that did not return: what it meant to write may be on disk.

        A failed append can leave some of an operation's records written (the
        segment roll in the middle of a batch writes what came before it)
        while the in-memory state took none of them, so an interrupted
        enqueue, claim, ack, fail or release counts with every record it
        intended (an outcome's record comes before its attempt record).
        """
        records = self.records(before)
        if self.claiming:
            # Dead-letterings come first, in an order the model does not know,
            # then the claim record. If the state took nothing, the append
            # failed: up to n of the jobs out of attempts may have been written.
            dead = [r for r in records if _is_dead(r)]
            rest = [r for r in records if not _is_dead(r)]
            started = any(
                j is not None and j.state == "running" for r in rest for j in (v for _, v in r)
            )
            if dead or started:
                self.model.interrupted(dead + rest, loose=len(dead))
            else:
                self.model.interrupted(self.intended, loose=len(self.intended), most=self.claim_n)
                self.model.live = apply(self.model.live, rest)
            return
        if self.intended:
            ids = {j for r in self.intended for j, _ in r}
            records = self.intended + [r for r in records if not {j for j, _ in r} <= ids]
        self.model.interrupted(records)

    def exhausted(self) -> list[Record]:
        """Dead-letterings a claim may write: pending jobs with no attempts left."""
        assert self.q is not None
        st = self.q._state
        out: list[Record] = []
        for info in st.jobs():
            if info.task == SPOOL_TASK:
                continue
            if info.state_name in ("pending", "scheduled") and info.attempts >= info.max_attempts:
                out.append(((info.id, MJob("dead", info.attempts)),))
        return out

    def records(self, before: View) -> list[Record]:
        """What the last operation changed, cut into log records."""
        if self.q is None:  # it closed the queue and could not open it again
            return []
        claim = self.claiming
        after = observe(self.q, before)
        changes = {j: after.get(j) for j in before.keys() | after.keys()}
        changes = {j: v for j, v in changes.items() if before.get(j) != v}
        new = sorted(j for j in changes if j not in before)
        records: list[Record] = [((j, changes.pop(j)),) for j in new]
        if claim:
            dead = sorted(j for j, v in changes.items() if v is not None and v.state == "dead")
            records = [((j, changes.pop(j)),) for j in dead] + records
        if changes:
            records.append(tuple(sorted(changes.items())))
        return records

    # -- helpers for operations

    def sync_arg(self) -> bool | None:
        return self.choose.pick([None, None, None, False, False, True])

    def commits(self, sync: bool | None) -> bool:
        return bool(sync) or (sync is None and self.sync == "always")

    def running(self) -> list[tuple[int, int]]:
        return sorted((j, v.attempts) for j, v in self.model.live.items() if v.state == "running")

    def payload(self) -> Any:
        n = next(self.payload_seq)
        size = self.choose.pick([0, 10, 100, 600, 1500, 3000, 5000])
        if self.choose.pick([True, False]):
            return bytes((n + i * 7) & 0xFF for i in range(size))
        return {"n": n, "pad": "p" * size}

    def outcome_as_meant(self, jid: int, meant: MJob) -> None:
        """The job is as the operation meant it: what `intended` says an interrupted one
        may have written (an append failing at a segment roll keeps the records before it)."""
        assert self.q is not None
        seen = project(observe(self.q, [jid]).get(jid), self.clock.mono)
        self.expect(seen == project(meant, self.clock.mono), f"job {jid}: {seen}, meant {meant}")

    def expect(self, ok: bool, what: str) -> None:
        if not ok:
            self.violate("state-mismatch", what)
            raise Stop


Op = Callable[[Run], bool]


def op_enqueue(run: Run) -> bool:
    return _enqueue(run, 1)


def op_enqueue_many(run: Run) -> bool:
    return _enqueue(run, run.choose.integer(2, 5))


def _enqueue(run: Run, n: int) -> bool:
    assert run.q is not None
    choose = run.choose
    items = []
    for _ in range(n):
        opts: dict[str, Any] = {}
        if chance(choose, 20):
            opts["key"] = choose.pick(["k0", "k1", "k2"])
        if chance(choose, 20):
            opts["max_attempts"] = choose.integer(1, 3)
        if chance(choose, 15):
            opts["delay"] = choose.pick([5.5, 1000.5])
        opts["priority"] = choose.pick([0, 0, 1, -1])
        items.append((choose.pick(["a", "b"]), run.payload(), opts))
    sync = run.sync_arg()
    # Ids the queue will assign to fresh items, for the payload oracle (set before the call,
    # so a crash inside it still knows what a surviving record must hold).
    next_id = run.q._state.next_id
    keys: dict[str, int] = {}
    expected = []
    for task, payload, opts in items:
        key = opts.get("key")
        if key is not None:
            holder = keys.get(key) or run.q._state.key_holder(key)
            if holder is not None:
                expected.append(holder)
                continue
            keys[key] = next_id
        run.model.payloads[next_id] = (task, payload)
        delay = opts.get("delay", 0.0)
        job = MJob("scheduled", 0, run.clock.mono + delay) if delay else MJob("pending")
        run.intended.append(((next_id, job),))
        expected.append(next_id)
        next_id += 1
    run.history.append(f"enqueue_many({[(t, o) for t, _, o in items]}, sync={sync})")
    if n == 1:
        task, payload, opts = items[0]
        ids = [run.q.enqueue(task, payload, sync=sync, **opts)]
    else:
        ids = run.q.enqueue_many(items, sync=sync)
    run.history[-1] += f" -> {ids}"
    run.expect(ids == expected, f"enqueue returned {ids}, expected {expected}")
    return run.commits(sync)


def op_claim(run: Run) -> bool:
    assert run.q is not None
    lease = run.choose.pick([5.0, 50.0])
    run.claiming, run.claim_n = True, 1
    run.intended = run.exhausted()
    run.history.append(f"claim(lease={lease})")
    job = run.q.claim(lease=lease, tasks=["a", "b"])
    run.history[-1] += f" -> {None if job is None else (job.id, job.attempt)}"
    return _claimed(run, [] if job is None else [job])


def op_claim_many(run: Run) -> bool:
    assert run.q is not None
    n = run.choose.integer(2, 3)
    run.claiming, run.claim_n = True, n
    run.intended = run.exhausted()
    run.history.append(f"claim_many({n})")
    jobs = run.q.claim_many(n, lease=50.0, accept=lambda info: info.task != SPOOL_TASK)
    run.history[-1] += f" -> {[(j.id, j.attempt) for j in jobs]}"
    return _claimed(run, jobs)


def _claimed(run: Run, jobs: list[walq.Job]) -> bool:
    """Check what a claim delivered; return whether it fsynced the log."""
    model = run.model
    for job in jobs:
        was = model.live.get(job.id)
        if was is None or was.state in TERMINAL:
            kind = "phantom" if was is None else "redelivered-after-ack"
            run.violate(kind, f"claim delivered job {job.id}, which is {was}")
            raise Stop
        run.expect(job.attempt == was.attempts + 1, f"claim: attempt {job.attempt} after {was}")
        if (job.task, job.payload) != model.payloads.get(job.id):
            run.violate("damaged", f"claim delivered job {job.id} with {job.payload!r}")
            raise Stop
    # A claim fsyncs per the sync mode, and only when it returns jobs: one that only
    # dead-letters jobs out of attempts leaves those records to the next commit.
    return bool(jobs) and run.sync == "always"


def how_it_ran(run: Run) -> Ran | None:
    """Half the outcomes say how their attempt ran, as a worker's do (an attempt record in
    the same append, which a crash may tear with them)."""
    return Ran(1.7e9, 0.25, 4242) if chance(run.choose, 50) else None


def op_ack(run: Run) -> bool:
    assert run.q is not None
    running = run.running()
    if not running:
        return op_claim(run)
    jid, attempt = run.choose.pick(running)
    sync = run.sync_arg()
    ran = how_it_ran(run)
    run.intended = [((jid, MJob("done")),)]
    run.history.append(f"ack({jid}, attempt={attempt}, sync={sync}, ran={ran})")
    try:
        run.q.ack(jid, attempt=attempt, sync=sync, ran=ran)
    except StateError:
        return False  # the lease expired
    run.expect(observe(run.q, [jid]).get(jid) == MJob("done"), f"ack({jid}) did not finish it")
    return run.commits(sync)


def op_fail(run: Run) -> bool:
    assert run.q is not None
    running = run.running()
    if not running:
        return op_enqueue(run)
    jid, attempt = run.choose.pick(running)
    permanent = chance(run.choose, 30)
    delay = run.choose.pick([0.0, 5.5, 1000.5])
    sync = run.sync_arg()
    ran = how_it_ran(run)
    run.history.append(
        f"fail({jid}, attempt={attempt}, permanent={permanent}, delay={delay}, ran={ran})"
    )
    if permanent or attempt >= run.q._state.info(jid).max_attempts:
        meant = MJob("dead", attempt)
    else:
        meant = MJob("scheduled", attempt, run.clock.mono + delay)
    run.intended = [((jid, meant),)]
    try:
        status = run.q.fail(
            jid, "boom", permanent, attempt=attempt, delay=delay, sync=sync, ran=ran
        )
    except StateError:
        return False
    run.history[-1] += f" -> {status}"
    run.outcome_as_meant(jid, meant)
    return run.commits(sync)


def op_release(run: Run) -> bool:
    assert run.q is not None
    running = run.running()
    if not running:
        return op_claim(run)
    jid, attempt = run.choose.pick(running)
    sync = run.sync_arg()
    ran = how_it_ran(run)
    meant = MJob("pending", attempt - 1)  # a release gives the attempt back
    run.intended = [((jid, meant),)]
    run.history.append(f"release({jid}, attempt={attempt}, sync={sync}, ran={ran})")
    try:
        run.q.release(jid, attempt=attempt, sync=sync, ran=ran)
    except StateError:
        return False
    run.outcome_as_meant(jid, meant)
    return run.commits(sync)


def op_cancel(run: Run) -> bool:
    assert run.q is not None
    known = sorted(run.model.live)
    if not known:
        return op_enqueue(run)
    jid = run.choose.pick(known)
    sync = run.sync_arg()
    run.history.append(f"cancel({jid}, sync={sync})")
    try:
        done = run.q.cancel(jid, sync=sync)
    except (StateError, UnknownJobError):
        return False
    run.history[-1] += f" -> {done}"
    return done and run.commits(sync)


def op_requeue(run: Run) -> bool:
    assert run.q is not None
    dead = sorted(j for j, v in run.model.live.items() if v.state == "dead")
    if not dead:
        return op_claim(run)
    jid = run.choose.pick(dead)
    sync = run.sync_arg()
    run.history.append(f"requeue({jid}, sync={sync})")
    run.q.requeue(jid, sync=sync)
    return run.commits(sync)


def op_purge(run: Run) -> bool:
    assert run.q is not None
    dead = sorted(j for j, v in run.model.live.items() if v.state == "dead")
    if not dead:
        return op_enqueue(run)
    sync = run.sync_arg()
    run.history.append(f"purge([{dead[0]}], sync={sync})")
    run.q.purge([dead[0]], sync=sync)
    return run.commits(sync)


def op_compact(run: Run) -> bool:
    assert run.q is not None
    run.history.append("compact()")
    try:
        result = run.q.compact()
    except LogFailedError:
        raise
    except (OSError, CompactionError) as exc:
        # A failed compaction output is not a failed log: the queue goes on.
        run.history[-1] += f" -> {exc!r}"
        return False
    run.history[-1] += f" -> {result.segments_in} segments"
    return result.segments_in > 0


def op_checkpoint(run: Run) -> bool:
    """Write the queue's checkpoint, as the compactor's thread does (a crash may hit any step)."""
    assert run.q is not None
    run.history.append("write_checkpoint()")
    try:
        written = run.q.write_checkpoint()
    except LogFailedError:
        raise
    except (OSError, WalqError) as exc:  # an injected fault: the next open replays it all
        run.history[-1] += f" -> {exc!r}"
        return False
    run.history[-1] += f" -> {None if written is None else (written.seq, written.offset)}"
    return written is not None  # it fsyncs the log first: a commit


def op_spare(run: Run) -> bool:
    """Make the next segment ahead of the roll, as the compactor's thread does."""
    assert run.q is not None
    run.history.append("prepare_spare()")
    made = run.q._log.prepare_spare()
    run.history[-1] += f" -> {made}"
    return False  # a spare is made durable only when a roll names it


def op_sync(run: Run) -> bool:
    assert run.q is not None
    run.history.append("sync()")
    run.q.sync()
    return True


def op_spool(run: Run) -> bool:
    """A producer spools jobs (as walq.connect does when it cannot reach the owner)."""
    n = run.choose.integer(1, 3)
    payloads = [
        f"spooled-{next(run.payload_seq)}-".encode() + b"s" * run.choose.pick([0, 100, 1500])
        for _ in range(n)
    ]
    items = [wire.Item(task=SPOOL_TASK, kind=1, data=p) for p in payloads]
    run.history.append(f"spool {len(items)} items")
    for payload in payloads:
        run.spooled[payload] = False
    writer = spool.SpoolWriter(run.fs, QDIR, max_files=10_000, max_bytes=1 << 40, lock_timeout=0.1)
    try:
        writer.put(items)
    except OSError as exc:  # an injected fault: the producer got an error, nothing promised
        run.history[-1] += f" -> {exc!r}"
        return False
    for payload in payloads:
        run.spooled[payload] = True
    return False


def op_ingest(run: Run) -> bool:
    """The owner ingests the spool (its poll): durable enqueues, then the files go."""
    run.history.append("ingest spool")
    try:
        added = run.ingest(settle=False)
    except OSError as exc:  # an injected fault; the owner's poll logs it and tries again
        run.history[-1] += f" -> {exc!r}"
        return False
    run.history[-1] += f" -> {added}"
    return added > 0  # enqueued with sync=True: a commit


def op_tick(run: Run) -> bool:
    seconds = run.choose.pick([1.0, 10.0, 100.0])
    run.history.append(f"tick({seconds})")
    run.clock.advance(seconds)
    return False


def op_reopen(run: Run) -> bool:
    """Close cleanly and open again: everything must come back exactly."""
    assert run.q is not None
    run.history.append("close(); open()")
    q, run.q = run.q, None
    try:
        q.close()
    except LogFailedError as exc:  # the final flush failed: the queue is closed anyway
        run.history[-1] += f" -> close: {exc!r}"
        raise ReopenFailed from None
    run.model.record([], committed=True)
    try:
        run.q = run.open(run.fs)
    except OSError as exc:
        run.history[-1] += f" -> {exc!r}"
        raise ReopenFailed from None
    run.check_reopened()
    return True


# How often each operation is drawn: OPS holds each one that many times.
OP_WEIGHTS: tuple[tuple[Op, int], ...] = (
    (op_enqueue, 18),
    (op_enqueue_many, 6),
    (op_claim, 16),
    (op_claim_many, 4),
    (op_ack, 14),
    (op_fail, 6),
    (op_release, 4),
    (op_cancel, 4),
    (op_requeue, 2),
    (op_purge, 1),
    (op_compact, 5),
    (op_checkpoint, 4),
    (op_spare, 3),
    (op_sync, 2),
    (op_tick, 3),
    (op_reopen, 2),
    (op_spool, 4),
    (op_ingest, 3),
)
OPS: list[Op] = [op for op, weight in OP_WEIGHTS for _ in range(weight)]


# -- exploring from the command line ----------------------------------------------------


@attrs.define
class Report:
    """The outcome of an exploration."""

    crash_states: int = 0
    runs: int = 0
    violations: list[Violation] = attrs.Factory(list)
    seconds: float = 0.0

    @property
    def failing(self) -> int:
        """Crash states that broke a guarantee (a run stops at its first)."""
        return len({v.run for v in self.violations})

    def summary(self) -> dict[str, Any]:
        kinds: dict[str, int] = {}
        for kind, _ in {(v.kind, v.run) for v in self.violations}:
            kinds[kind] = kinds.get(kind, 0) + 1
        return {
            "crash-states": self.crash_states,
            "runs": self.runs,
            "violations": self.failing,
            "by-kind": kinds,
            "failing-runs": sorted({v.run for v in self.violations})[:20],
            "seconds": round(self.seconds, 1),
        }


def run_once(
    seed: int,
    index: int,
    *,
    sync: str = "mix",
    faults: bool = True,
    max_states: int | None = None,
) -> Run:
    """Run number `index` of the exploration seeded with `seed` (replayable alone)."""
    rng = random.Random(f"walq-powerloss:{seed}:{index}")
    mode = sync if sync != "mix" else rng.choice(["always", "always", "never"])
    run = Run(
        RandomChooser(rng),
        run=index,
        sync=mode,
        faults=faults,
        max_states=max_states,
    )
    run.play(rng.randint(1, 6))
    return run


def explore(
    states: int,
    seed: int,
    *,
    plant: str | None = None,
    sync: str = "mix",
    faults: bool = True,
    time_limit: float | None = None,
    stop_after: int | None = None,
) -> Report:
    """Explore at least `states` crash states (or until `time_limit` seconds)."""
    report = Report()
    started = time.monotonic()
    if plant:
        planting.plant(plant)
    try:
        for index in itertools.count():
            if report.crash_states >= states:
                break
            if time_limit is not None and time.monotonic() - started > time_limit:
                break
            if stop_after is not None and report.failing >= stop_after:
                break
            run = run_once(
                seed,
                index,
                sync=sync,
                faults=faults,
                max_states=states - report.crash_states,
            )
            report.runs += 1
            report.crash_states += run.crash_states
            report.violations += run.violations
    finally:
        if plant:
            planting.plant(plant, on=False)
        report.seconds = time.monotonic() - started
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--states", type=int, default=1000, help="crash states to explore")
    parser.add_argument("--seed", type=int, default=None, help="default: random")
    parser.add_argument("--sync", choices=["mix", "always", "never"], default="mix")
    parser.add_argument("--no-faults", action="store_true", help="no injected EIO/ENOSPC")
    parser.add_argument("--plant", choices=sorted(planting.BUGS), help="plant a known bug")
    parser.add_argument("--time-limit", type=float, default=None, help="seconds at most")
    parser.add_argument("--run", type=int, default=None, help="replay one run and show its ops")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    args = parser.parse_args(argv)
    walq_log = logging.getLogger("walq")
    level = walq_log.level
    walq_log.setLevel(logging.CRITICAL)  # the crashes are on purpose
    try:
        return _main(args)
    finally:
        walq_log.setLevel(level)  # a caller in the same process (a test) logs as before


def _main(args: argparse.Namespace) -> int:
    """main's work, its arguments parsed."""
    seed = args.seed if args.seed is not None else random.randrange(1 << 32)
    if args.run is not None:
        if args.plant:
            planting.plant(args.plant)
        run = run_once(
            seed,
            args.run,
            sync=args.sync,
            faults=not args.no_faults,
        )
        print(f"run {args.run} (seed {seed}, sync {run.sync}): {run.crash_states} crash states")
        print("\n".join(run.history))
        for v in run.violations:
            print(f"VIOLATION {v.kind}: {v.detail}")
        return 1 if run.violations else 0
    report = explore(
        args.states,
        seed,
        plant=args.plant,
        sync=args.sync,
        faults=not args.no_faults,
        time_limit=args.time_limit,
    )
    summary = report.summary()
    summary["seed"] = seed
    if args.json:
        print(json.dumps(summary, sort_keys=True))
    else:
        print(f"crash-states: {report.crash_states}")
        print(f"violations: {report.failing}")
        print(f"runs: {report.runs} (seed {seed}, {summary['seconds']} s)")
        shown: set[str] = set()
        for v in report.violations:
            if v.kind in shown:
                continue
            shown.add(v.kind)
            print(f"  {v.kind}: {v.detail}")
            print(f"    replay: python tools/powerloss.py --seed {seed} --run {v.run}")
    return 1 if report.violations else 0


if __name__ == "__main__":
    sys.exit(main())
