"""QueueState on its own: transitions, indexes, claim order, caps, counts, time.

No files and no clock: events go in with `apply`, time as `Now`. A hypothesis
state machine drives a QueueState and a plain model side by side and checks
they agree after every step, with every move checked against TRANSITIONS.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from walq.core import events as ev
from walq.core.jobspec import MAX_ATTEMPTS, JobSpec, state_code
from walq.core.state import PENDING, JobInfo, Loc, Now, QueueState
from walq.core.transitions import TRANSITIONS
from walq.errors import ArgumentError, LeaseLost, StateError, UnknownJobError

T0 = Now(wall=1_000_000.0, mono=500.0)
SIZE = 64


def at(now: Now, seconds: float) -> Now:
    return Now(now.wall + seconds, now.mono + seconds)


def fresh(default_max_attempts: int = 3) -> QueueState:
    s = QueueState(default_max_attempts=default_max_attempts)
    s.finish_replay(T0)
    return s


def spec(task: str = "t", *, priority: int = 0, key: str | None = None, maxa: int = 0) -> JobSpec:
    return JobSpec(task, ev.PAYLOAD_JSON, b"1", key, 0.0, priority, maxa, "")


def enqueue(s: QueueState, *specs: JobSpec, delay: float = 0.0, now: Now = T0) -> list[int]:
    """Add jobs as Queue does (add_new); return their ids."""
    first = s.next_id
    locs = [Loc(1, 100 + SIZE * (first + i), SIZE) for i in range(len(specs))]
    dues = [now.wall + delay if delay else 0.0] * len(specs)
    s.add_new(first, list(specs), dues, locs, now)
    return list(range(first, first + len(specs)))


def take(s: QueueState, jid: int) -> None:
    """Take pending job `jid` off the ready index, as claim does before it records anything."""
    taken = s.take_ready(len(s))
    s.untake([i for i in taken if i.id != jid])
    assert jid in [i.id for i in taken], f"job {jid} is not ready"


def claim(s: QueueState, jid: int, *, lease: float = 30.0, now: Now = T0) -> int:
    """Claim pending job `jid` as Queue does: take it, record a Claim, then the lease."""
    take(s, jid)
    attempt = s.info(jid).attempts + 1
    s.apply(ev.Claim(items=((jid, attempt),)), Loc(1, 0, 16), now)
    s.start(jid, attempt, now.mono + lease)
    return attempt


def apply(s: QueueState, event: ev.Event, now: Now = T0) -> None:
    s.apply(event, Loc(1, 0, 16), now)


# -- transitions ------------------------------------------------------------------------------


def test_a_job_goes_through_its_life() -> None:
    s = fresh()
    (jid,) = enqueue(s, spec())
    assert s.status(jid) == "pending"
    assert claim(s, jid) == 1
    assert s.status(jid) == "running"
    assert s.check_holder(jid, 1).attempts == 1
    apply(s, ev.Fail(id=jid, attempt=1, dead=False, due=T0.wall + 5))
    assert s.status(jid) == "scheduled"
    s.tick(at(T0, 5))
    assert s.status(jid) == "pending"
    claim(s, jid)
    apply(s, ev.Release(items=((jid, 1),)))
    assert (s.status(jid), s.info(jid).attempts) == ("pending", 1)
    claim(s, jid)
    apply(s, ev.Fail(id=jid, attempt=2, dead=True, error="boom"))
    assert s.status(jid) == "dead"
    apply(s, ev.Requeue(ids=(jid,)))
    assert (s.status(jid), s.info(jid).attempts) == ("pending", 0)
    claim(s, jid)
    apply(s, ev.Ack(ids=(jid,)))
    assert s.status(jid) == "done"
    assert jid not in s


def test_cancel_and_purge_leave_tombstones() -> None:
    s = fresh()
    a, b = enqueue(s, spec(), spec())
    apply(s, ev.Cancel(ids=(a,)))
    assert s.status(a) == "cancelled"
    claim(s, b)
    apply(s, ev.Fail(id=b, attempt=1, dead=True))
    apply(s, ev.Purge(ids=(b,)))
    with pytest.raises(UnknownJobError, match=f"job {b} was purged"):
        s.status(b)
    assert s.tombstones() == {a: ev.CANCELLED, b: ev.PURGED}


@pytest.mark.parametrize(
    ("setup", "event", "message"),
    [
        ("pending", ev.Requeue(ids=(1,)), "job 1 is pending: requeue"),
        ("pending", ev.Purge(ids=(1,)), "job 1 is pending: purge"),
        ("pending", ev.Ack(ids=(1,)), "job 1 is pending: ack"),
        ("pending", ev.Release(items=((1, 0),)), "job 1 is pending: release"),
        ("scheduled", ev.Claim(items=((1, 1),)), "job 1 is scheduled: claim"),
        ("dead", ev.Cancel(ids=(1,)), "job 1 is dead: cancel"),
        ("dead", ev.Claim(items=((1, 1),)), "job 1 is dead: claim"),
        ("running", ev.Requeue(ids=(1,)), "job 1 is running: requeue"),
        ("done", ev.Ack(ids=(1,)), "job 1 is done: ack"),
        ("cancelled", ev.Cancel(ids=(1,)), "job 1 is cancelled: cancel"),
    ],
)
def test_a_move_the_table_does_not_allow_raises(setup: str, event: ev.Event, message: str) -> None:
    """Live, an event the table has no pair for is refused, naming the job and its state."""
    s = fresh()
    (jid,) = enqueue(s, spec(), delay=60 if setup == "scheduled" else 0)
    if setup in ("running", "dead", "done"):
        claim(s, jid)
    if setup == "dead":
        apply(s, ev.Fail(id=jid, attempt=1, dead=True))
    elif setup == "done":
        apply(s, ev.Ack(ids=(jid,)))
    elif setup == "cancelled":
        apply(s, ev.Cancel(ids=(jid,)))
    before = s.status(jid)
    with pytest.raises(StateError, match=message):
        apply(s, event)
    assert s.status(jid) == before


def test_replay_skips_what_cannot_apply() -> None:
    """While loading, a cancel of a dead job or a requeue of a pending one is a no-op."""
    s = QueueState()
    apply(s, ev.Enqueue(id=1, task="t", payload=b"1"))
    apply(s, ev.Enqueue(id=2, task="t", payload=b"1"))
    apply(s, ev.Claim(items=((2, 1),)))
    apply(s, ev.Fail(id=2, attempt=1, dead=True))
    apply(s, ev.Cancel(ids=(2,)))
    apply(s, ev.Requeue(ids=(1,)))
    apply(s, ev.Ack(ids=(7,)))
    s.finish_replay(T0)
    assert (s.status(1), s.status(2)) == ("pending", "dead")


def test_replay_puts_running_jobs_back_with_their_attempt_counted() -> None:
    s = QueueState()
    apply(s, ev.Enqueue(id=1, task="t", payload=b"1"))
    apply(s, ev.Claim(items=((1, 1),)))
    s.finish_replay(T0)
    assert (s.status(1), s.info(1).attempts) == ("pending", 1)
    assert [i.id for i in s.take_ready(5)] == [1]


def test_a_stale_attempt_loses_the_lease() -> None:
    s = fresh()
    (jid,) = enqueue(s, spec())
    claim(s, jid)
    apply(s, ev.Release(items=((jid, 0),)))
    with pytest.raises(LeaseLost, match=f"job {jid} is pending: attempt 1"):
        s.check_holder(jid, 1)
    claim(s, jid)
    with pytest.raises(LeaseLost, match="running attempt 1, not 7"):
        s.check_holder(jid, 7)
    with pytest.raises(StateError, match="is done, not running"):
        apply(s, ev.Ack(ids=(jid,)))
        s.check_holder(jid, None)


# -- claim order, take_ready ------------------------------------------------------------------


def test_claim_order_is_priority_then_id() -> None:
    s = fresh()
    ids = enqueue(s, spec("a", priority=0), spec("b", priority=5), spec("a", priority=5))
    ids += enqueue(s, spec("c", priority=-3), spec("b", priority=0))
    order = [i.id for i in s.take_ready(10)]
    assert order == [ids[1], ids[2], ids[0], ids[4], ids[3]]
    assert s.take_ready(10) == []


def test_take_ready_accept_refuses_a_task_and_defers_a_job() -> None:
    s = fresh()
    a1, b1, a2, c1 = enqueue(s, spec("a"), spec("b"), spec("a"), spec("c"))
    deferred: list[tuple[JobInfo, float]] = []

    def accept(info: JobInfo) -> bool | float:
        if info.task == "a":
            return False  # the task's cap is full: none of its jobs this call
        return 99.0 if info.id == c1 else True

    taken = s.take_ready(10, accept, deferred)
    assert [i.id for i in taken] == [b1]
    assert [(i.id, t) for i, t in deferred] == [(c1, 99.0)]
    # Refused jobs stay where they were; taken ones put back go to the head again.
    s.untake(taken)
    assert [i.id for i in s.take_ready(2)] == [a1, b1]
    assert [i.id for i in s.take_ready(5)] == [a2]


def test_take_ready_drops_jobs_that_left_pending() -> None:
    s = fresh()
    a, b, c = enqueue(s, spec(), spec(), spec())
    apply(s, ev.Cancel(ids=(a,)))
    claim(s, b)
    assert [i.id for i in s.take_ready(5)] == [c]


# -- caps, indexes, counts --------------------------------------------------------------------


def test_max_attempts_come_from_the_job_the_task_or_the_default() -> None:
    s = fresh(default_max_attempts=4)
    own, by_task, default = enqueue(s, spec("x", maxa=2), spec("y"), spec("z"))
    s.set_task_max_attempts("y", 9)
    assert [s.info(j).max_attempts for j in (own, by_task, default)] == [2, 9, 4]
    with pytest.raises(ArgumentError, match=f"1..{MAX_ATTEMPTS}"):
        s.set_task_max_attempts("y", 0)
    with pytest.raises(ArgumentError):
        QueueState(default_max_attempts=MAX_ATTEMPTS + 1)


def test_a_key_is_held_while_the_job_is_unfinished() -> None:
    s = fresh()
    (jid,) = enqueue(s, spec(key="k"))
    assert s.key_holder("k") == jid
    claim(s, jid)
    apply(s, ev.Fail(id=jid, attempt=1, dead=True))
    assert s.key_holder("k") is None
    assert s.key_of(jid) == "k"
    apply(s, ev.Requeue(ids=(jid,)))
    assert s.key_holder("k") == jid
    claim(s, jid)
    apply(s, ev.Ack(ids=(jid,)))
    assert s.key_holder("k") is None


def test_counts_bytes_and_segments_follow_the_jobs() -> None:
    s = fresh()
    a, b, c = enqueue(s, spec("x"), spec("x"), spec("y"))
    claim(s, b)
    counts = s.task_counts()
    assert (counts["x"].pending, counts["x"].running, counts["y"].pending) == (1, 1, 1)
    assert (s.counts.pending, s.counts.running, s.unfinished) == (2, 1, 3)
    assert s.live_bytes == 3 * SIZE and s.segments_in_use() == [1]
    apply(s, ev.Ack(ids=(b,)))
    apply(s, ev.Cancel(ids=(a, c)))
    assert (s.counts.pending, s.counts.running, s.live_bytes, len(s)) == (0, 0, 0, 0)
    assert s.segments_in_use() == []


# -- time: due jobs and leases ----------------------------------------------------------------


def test_tick_moves_due_jobs_and_expired_leases() -> None:
    s = fresh()
    (later,) = enqueue(s, spec(), delay=10)
    (now,) = enqueue(s, spec())
    assert s.status(later) == "scheduled" and s.next_due() == T0.mono + 10
    claim(s, now, lease=4)
    assert s.next_due() == T0.mono + 4
    assert s.tick(at(T0, 3)) == []
    assert s.tick(at(T0, 4)) == [now]
    assert (s.status(now), s.info(now).attempts) == ("pending", 1)
    s.tick(at(T0, 9.5))
    assert s.status(later) == "scheduled"
    s.tick(at(T0, 10))
    assert s.status(later) == "pending"
    assert s.next_due() is None


def test_a_heartbeat_moves_the_lease() -> None:
    s = fresh()
    (jid,) = enqueue(s, spec())
    claim(s, jid, lease=4)
    s.extend(jid, 1, T0.mono + 20)
    assert s.tick(at(T0, 10)) == []
    assert s.tick(at(T0, 20)) == [jid]


# -- the model --------------------------------------------------------------------------------


class StateMachine(RuleBasedStateMachine):
    """QueueState against a plain dict model; every event is tried on any job.

    The model knows the table: where TRANSITIONS has the pair the event must
    work and land in one of its states; where it has none it must raise.
    """

    def __init__(self) -> None:
        super().__init__()
        self.s = fresh(default_max_attempts=MAX_ATTEMPTS)
        self.now = T0
        # id -> [state, priority, attempts, due (mono) or lease deadline]
        self.model: dict[int, list[Any]] = {}
        # The order jobs became pending in: claims take by priority, then this.
        self.order: dict[int, int] = {}
        self.pushes = 0

    def _pending(self, jid: int) -> None:
        self.pushes += 1
        self.order[jid] = self.pushes

    def _apply(self, jid: int, event: str, record: ev.Event, to: str) -> bool:
        """Apply `record` (table event `event`); whether the table allowed it."""
        state = self.model[jid][0] if jid in self.model else "new"
        if (state, event) not in TRANSITIONS:
            with pytest.raises((StateError, UnknownJobError)):
                self.s.apply(record, Loc(1, 0, 16), self.now)
            return False
        assert to in TRANSITIONS[(state, event)]
        self.s.apply(record, Loc(1, 0, 16), self.now)
        self.model[jid][0] = to
        if to == "pending":
            self._pending(jid)
        return True

    def _pick(self, data: st.DataObject) -> int:
        return data.draw(st.sampled_from(sorted(self.model)))

    @rule(prio=st.integers(-2, 2), delay=st.sampled_from([0, 0, 5]), n=st.integers(1, 3))
    def enqueue(self, prio: int, delay: int, n: int) -> None:
        for jid in enqueue(self.s, *[spec(priority=prio)] * n, delay=delay, now=self.now):
            due = self.now.mono + delay
            self.model[jid] = ["scheduled" if delay else "pending", prio, 0, due]
            if not delay:
                self._pending(jid)

    @precondition(lambda self: self.model)
    @rule(data=st.data())
    def claim_one(self, data: st.DataObject) -> None:
        jid = self._pick(data)
        state, _, attempts, _ = self.model[jid]
        if state != "pending":
            with pytest.raises(StateError):
                self.s.apply(ev.Claim(items=((jid, attempts + 1),)), Loc(1, 0, 16), self.now)
            return
        claim(self.s, jid, lease=3, now=self.now)
        self.model[jid][0] = "running"
        self.model[jid][2] = attempts + 1
        self.model[jid][3] = self.now.mono + 3

    @precondition(lambda self: self.model)
    @rule(data=st.data(), kind=st.sampled_from(["ack", "retry", "dead", "release", "cancel"]))
    def finish(self, data: st.DataObject, kind: str) -> None:
        jid = self._pick(data)
        attempts = self.model[jid][2]
        # A Fail record for a pending job is how a claim settles a job it took
        # without running it (out of attempts, damaged, deferred).
        failing = "claim" if self.model[jid][0] == "pending" else "fail"
        if failing == "claim" and kind in ("retry", "dead"):
            take(self.s, jid)
        if kind == "ack":
            self._apply(jid, "ack", ev.Ack(ids=(jid,)), "done")
        elif kind == "retry":
            due = self.now.wall + 2
            retry = ev.Fail(id=jid, attempt=attempts, dead=False, due=due)
            if self._apply(jid, failing, retry, "scheduled"):
                self.model[jid][3] = self.now.mono + 2
        elif kind == "dead":
            self._apply(jid, failing, ev.Fail(id=jid, attempt=attempts, dead=True), "dead")
        elif kind == "release":
            if self._apply(jid, "release", ev.Release(items=((jid, attempts - 1),)), "pending"):
                self.model[jid][2] = attempts - 1
        else:
            self._apply(jid, "cancel", ev.Cancel(ids=(jid,)), "cancelled")
        if self.model[jid][0] in ("done", "cancelled"):
            del self.model[jid]

    @precondition(lambda self: self.model)
    @rule(data=st.data(), kind=st.sampled_from(["requeue", "purge"]))
    def dead_letters(self, data: st.DataObject, kind: str) -> None:
        jid = self._pick(data)
        if kind == "requeue":
            if self._apply(jid, "requeue", ev.Requeue(ids=(jid,)), "pending"):
                self.model[jid][2] = 0
        elif self._apply(jid, "purge", ev.Purge(ids=(jid,)), "purged"):
            del self.model[jid]

    @rule(seconds=st.sampled_from([1, 2, 4]))
    def tick(self, seconds: int) -> None:
        self.now = at(self.now, seconds)
        self.s.tick(self.now)
        # Due jobs first, then expired leases, each in (time, id) order: as tick pushes them.
        for state, event in (("scheduled", "due"), ("running", "expire")):
            moved = sorted(
                (job[3], jid)
                for jid, job in self.model.items()
                if job[0] == state and job[3] <= self.now.mono
            )
            for _, jid in moved:
                assert "pending" in TRANSITIONS[(state, event)]
                self.model[jid][0] = "pending"
                self._pending(jid)

    @precondition(lambda self: self.model)
    @rule(limit=st.integers(1, 4))
    def take_and_give_back(self, limit: int) -> None:
        """take_ready hands out pending jobs by priority, then id; untake restores them."""
        pending = sorted(
            (-p, self.order[j], j) for j, (st_, p, _, _) in self.model.items() if st_ == "pending"
        )
        taken = self.s.take_ready(limit)
        assert [i.id for i in taken] == [j for _, _, j in pending[:limit]]
        self.s.untake(taken)

    @invariant()
    def agrees(self) -> None:
        live = {j: m for j, m in self.model.items()}
        assert len(self.s) == len(live)
        for jid, (state, prio, attempts, _) in live.items():
            info = self.s.info(jid)
            assert (info.state_name, info.priority, info.attempts) == (state, prio, attempts)
        counts = self.s.counts
        by_state = [m[0] for m in live.values()]
        assert counts.pending == by_state.count("pending")
        assert counts.scheduled == by_state.count("scheduled")
        assert counts.running == by_state.count("running")
        assert counts.dead == by_state.count("dead")
        assert self.s.live_bytes == SIZE * len(live)
        assert self.s.has_ready() == (counts.pending > 0)
        assert all(m[0] != "pending" or self.s.info(j).state == PENDING for j, m in live.items())

    @invariant()
    def lists_agree(self) -> None:
        """jobs_after (a listing's page) finds every job in a state, however it stops early."""
        live = sorted(self.model)
        for name in ("pending", "scheduled", "running", "dead", None):
            code = None if name is None else state_code(name)
            for after in (0, live[len(live) // 2] if live else 0):
                want = [j for j in live if j > after and name in (None, self.model[j][0])]
                assert [i.id for i in self.s.jobs_after(after, code)] == want


TestStateMachine = StateMachine.TestCase
TestStateMachine.settings = settings(max_examples=40, stateful_step_count=30, deadline=None)


# -- flow: results, follow-up jobs, dependencies --------------------------------------------


def after(jid: int, *parents: int, policy: int = ev.AFTER_CANCEL, due: float = 0.0) -> ev.After:
    job = ev.Enqueue(id=jid, task="t", payload=b"1", due=due)
    return ev.After(parents=parents, policy=policy, job=job)


def test_a_waiting_job_becomes_pending_when_its_last_parent_is_done() -> None:
    """waiting -> pending once every parent is acked (by an ack or a finish record)."""
    s = fresh()
    a, b = enqueue(s, spec(), spec())
    apply(s, after(3, a, b))
    assert s.status(3) == "waiting" and s.counts.waiting == 1 and s.unfinished == 3
    claim(s, a)
    apply(s, ev.Ack(ids=(a,)))
    assert s.status(3) == "waiting"
    claim(s, b)
    apply(s, ev.Finish(id=b, keep_until=T0.wall + 60, result_kind=ev.RESULT_JSON, result=b"7"))
    assert s.status(3) == "pending" and s.after_of(3) == ((a, b), ev.AFTER_CANCEL)
    assert s.result_loc(b, T0.wall) is not None and s.result_loc(b, T0.wall + 61) is None
    assert [i.id for i in s.take_ready(5)] == [3]


def test_a_delayed_dependent_is_scheduled_when_its_parents_are_done() -> None:
    s = fresh()
    (a,) = enqueue(s, spec())
    apply(s, after(2, a, due=T0.wall + 30))
    claim(s, a)
    apply(s, ev.Ack(ids=(a,)))
    assert s.status(2) == "scheduled"
    s.tick(at(T0, 30))
    assert s.status(2) == "pending"


def test_a_dead_or_cancelled_parent_cancels_the_chain_unless_always() -> None:
    """The cause is kept; a cancelled dependent's own dependents go too; "always" goes on."""
    s = fresh()
    a, b = enqueue(s, spec(), spec())
    apply(s, after(3, a))
    apply(s, after(4, 3))
    apply(s, after(5, a, policy=ev.AFTER_ALWAYS))
    claim(s, a)
    apply(s, ev.Fail(id=a, attempt=1, dead=True, error="boom"))
    assert (s.status(3), s.status(4), s.status(5)) == ("cancelled", "cancelled", "pending")
    assert s.causes[3] == f"job {a} it was enqueued after is dead"
    assert s.causes[4] == "job 3 it was enqueued after is cancelled"
    apply(s, after(6, b))
    apply(s, ev.Cancel(ids=(b,)))
    assert s.status(6) == "cancelled"
    apply(s, after(7, b))  # after a parent already cancelled: cancelled at once
    assert s.status(7) == "cancelled"


def test_a_finish_record_acks_keeps_the_result_and_adds_its_follow_ups_at_once() -> None:
    s = fresh()
    (a,) = enqueue(s, spec())
    claim(s, a)
    kids = (ev.Enqueue(id=2, task="f", payload=b"1"), after(3, 2))
    apply(s, ev.Finish(id=a, children=kids))
    assert (s.status(a), s.status(2), s.status(3)) == ("done", "pending", "waiting")
    assert s.result_loc(a, T0.wall) is None  # RESULT_NONE: nothing kept
    assert s.next_id == 4


def test_replaying_flow_records_reaches_the_owners_state() -> None:
    """The same records replayed (then again, as a snapshot in front of them) agree."""
    records: list[ev.Event] = [
        ev.Enqueue(id=1, task="t", payload=b"1"),
        ev.Enqueue(id=2, task="t", payload=b"1"),
        after(3, 1, 2),
        after(4, 3),
        after(5, 2),
        ev.Claim(items=((1, 1),)),
        ev.Finish(
            id=1,
            keep_until=T0.wall + 60,
            result_kind=ev.RESULT_BYTES,
            result=b"r",
            children=(ev.Enqueue(id=6, task="f", payload=b"1"),),
        ),
        ev.Cancel(ids=(2,)),
    ]
    live = fresh()
    replayed = QueueState()
    for e in records:
        apply(live, e)
        apply(replayed, e)
    replayed.finish_replay(T0)
    for s in (live, replayed):
        got = [s.status(i) for i in range(1, 7)]
        assert got == ["done", "cancelled", "cancelled", "cancelled", "cancelled", "pending"]
        assert s.result_loc(1, T0.wall) is not None
    twice = QueueState()
    for e in records + records:
        apply(twice, e)
    twice.finish_replay(T0)
    assert [twice.status(i) for i in range(1, 7)] == got


def test_a_checkpoints_generations_count_kept_results_too() -> None:
    """A result in a compacted segment no job is in still names its generation."""
    from walq.core import checkpoint
    from walq.core.state import SEQ_BITS

    s = fresh()
    (a,) = enqueue(s, spec())
    claim(s, a)
    s.apply(ev.Finish(id=a, keep_until=T0.wall + 60, result_kind=ev.RESULT_JSON, result=b"1"),
            Loc(7 | 5 << SEQ_BITS, 40, 64), T0)  # fmt: skip
    enqueue(s, spec())  # a live job in generation 0
    assert checkpoint.generations(s) == 5
