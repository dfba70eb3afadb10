"""Power loss, crashes at every kind of call, and failed writes: guarantees 1-5 hold.

The explorer lives in tools/powerloss.py (see its docstring for the model);
here hypothesis drives it, a seeded slice runs without shrinking, the planted
skip-fsync and accept-bad-crc bugs prove it can fail, and every bug it found
has a regression test.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import random
import threading
from collections.abc import Sequence
from typing import Any, TypeVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import walq
from tools import powerloss
from walq.core import format as fmt
from walq.producers import spool, wire
from walq.producers.server import ProducerServer
from walq.testing.faultfs import CrashMode, SimFileSystem, SimulatedCrash, draw_crash

T = TypeVar("T")
QDIR = powerloss.QDIR


class DataChooser:
    """A run's decisions drawn by hypothesis, so a failing run shrinks."""

    def __init__(self, data: st.DataObject) -> None:
        self.data = data

    def integer(self, lo: int, hi: int) -> int:
        return self.data.draw(st.integers(lo, hi))

    def pick(self, options: Sequence[T]) -> T:
        return self.data.draw(st.sampled_from(options))

    def crash(self, fs: SimFileSystem, mode: CrashMode) -> SimFileSystem:
        return draw_crash(self.data, fs, mode=mode)


def explain(run: powerloss.Run) -> str:
    lines = [f"sync={run.sync}", *run.history]
    lines += [f"VIOLATION {v.kind}: {v.detail}" for v in run.violations]
    return "\n".join(lines)


def open_sim(fs: SimFileSystem, **kw: Any) -> walq.Queue:
    opts: dict[str, Any] = {
        "segment_size": 4096, "compaction": False, "min_free_bytes": 0, "serve": False,
    }  # fmt: skip
    opts.update(kw)
    return walq.Queue.open(QDIR, fs=fs, **opts)


# -- exploration ----------------------------------------------------------------------


@pytest.mark.parametrize("sync", ["always", "never"])
@given(data=st.data())
def test_random_workloads_survive_every_crash_state(sync: str, data: st.DataObject) -> None:
    """Hypothesis picks the workload, the crash point and what the crash keeps."""
    run = powerloss.Run(DataChooser(data), sync=sync)
    run.play(data.draw(st.integers(1, 4), label="rounds"))
    assert not run.violations, explain(run)


def test_a_seeded_exploration_finds_no_violation() -> None:
    """A fixed slice of the command-line exploration (about 1,500 crash states)."""
    report = powerloss.explore(1500, seed=20261128, time_limit=60)
    assert report.crash_states >= 500
    assert not report.violations, report.violations[:3]


def test_the_command_line_prints_its_counts(capsys: pytest.CaptureFixture[str]) -> None:
    """`python tools/powerloss.py --states N --seed S` prints crash-states and violations."""
    assert powerloss.main(["--states", "40", "--seed", "7"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("crash-states: ") and int(out[0].split()[1]) >= 40
    assert out[1] == "violations: 0"


# -- schedules: the tick write --------------------------------------------------------------


def tick_jobs(fs: SimFileSystem) -> list[tuple[str, int]]:
    """(key, job id) of every tick job whose record is in the log on `fs` (log order)."""
    from walq.ops.dump import Dumper

    return [
        (row["key"], row["job"])
        for row in Dumper(payload=False).rows(QDIR, fs=fs)
        if row.get("type") in ("enqueue", "job") and str(row.get("key")).startswith("schedule:")
    ]


@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_each_tick_is_enqueued_once_across_power_loss(data: st.DataObject) -> None:
    """The power is cut at a drawn call while a schedule fires (jobs acked, compactions
    between); the next owner fires it again (misfire="all"): every tick whose firing
    returned is there, no tick has two jobs, none is missing."""
    from walq.core.schedule import parse_tick_key
    from walq.cron import schedule

    # A payload of a few sectors: a torn write may keep a tick's enqueue and lose its
    # schedule record (then the enqueue's key says the tick was enqueued).
    sched = schedule("beat", "beat", every=60, misfire="all", payload={"pad": "x" * 1500})
    clock = powerloss.FakeClock()
    fs = SimFileSystem()
    q = open_sim(fs, clock=clock)
    confirmed: dict[int, str] = {}  # the jobs of the ticks whose firing returned: their keys
    fs.crash_at_call(fs.calls + data.draw(st.integers(0, 120), label="crash at call"))
    try:
        for _ in range(6):
            clock.advance(data.draw(st.sampled_from([1, 30, 60, 150]), label="wait"))
            confirmed.update((jid, str(q._state.key_of(jid))) for jid in q.fire_schedule(sched))
            if data.draw(st.booleans(), label="ack"):
                for job in q.claim_many(10):
                    q.ack(job.id)
            if data.draw(st.integers(0, 3), label="compact") == 0:
                q.compact()
    except SimulatedCrash:
        pass
    disk = draw_crash(data, fs, mode="any")
    clock.advance(60)
    q = open_sim(disk, clock=clock)
    try:
        for job in q.claim_many(100):  # a worker may finish the ticks' jobs before it fires
            q.ack(job.id)
        q.fire_schedule(sched)
        q.sync()
    finally:
        q.close()
    q = open_sim(disk, clock=clock)
    try:  # a confirmed tick's job is there, or done (a compaction dropped its record)
        assert all(q.status(jid) in ("pending", "done") for jid in confirmed)
    finally:
        q.close()
    jobs = {(key, jid) for jid, key in confirmed.items()} | set(tick_jobs(disk))
    keys = [key for key, _ in jobs]
    assert len(keys) == len(set(keys)), "a tick was enqueued twice"
    ticks = sorted(t for _, t in filter(None, map(parse_tick_key, keys)))
    assert all(round(b - a) == 60 for a, b in itertools.pairwise(ticks)), "a tick was lost"


# -- the tool can fail --------------------------------------------------------------------


@pytest.mark.parametrize("bug", ["skip-fsync", "accept-bad-crc"])
def test_a_planted_bug_is_reported(bug: str) -> None:
    """With fsync skipped, or torn records accepted, the explorer reports violations."""
    report = powerloss.explore(5000, seed=5, plant=bug, stop_after=1, time_limit=60)
    assert report.failing >= 1, f"{bug}: {report.crash_states} crash states, no violation"
    kinds = {v.kind for v in report.violations}
    assert kinds & {"lost", "open-failed", "damaged", "redelivered-after-ack", "attempts-lost"}


# -- failed writes and fsyncs -----------------------------------------------------------------


def confirmed_jobs(q: walq.Queue, n: int) -> dict[int, Any]:
    return {
        q.enqueue("t", {"i": i, "pad": "x" * 500}): {"i": i, "pad": "x" * 500} for i in range(n)
    }


def assert_keeps(disk: SimFileSystem, jobs: dict[int, Any]) -> None:
    q = open_sim(disk)
    try:
        for jid, payload in jobs.items():
            assert q.status(jid) == "pending", jid
            assert q._job(jid, 0).payload == payload
    finally:
        q.close()


@pytest.mark.parametrize("kind", ["pwrite", "sync"])
@pytest.mark.parametrize("code", [errno.EIO, errno.ENOSPC])
@pytest.mark.parametrize("nth", [1, 2, 5])
def test_a_failed_write_or_fsync_stops_writes_and_a_reopen_keeps_confirmed_jobs(
    kind: str, code: int, nth: int
) -> None:
    """EIO/ENOSPC on write or fsync: LogFailedError now and for every later write; nothing lost."""
    fs = SimFileSystem()
    q = open_sim(fs)
    jobs = confirmed_jobs(q, 3)
    fs.inject(kind, code, path=QDIR + "/", nth=nth)
    with pytest.raises(walq.LogFailedError):
        for i in range(50):  # enough writes to reach the nth failing call
            jobs[q.enqueue("t", {"i": 100 + i, "pad": "y" * 500})] = {
                "i": 100 + i,
                "pad": "y" * 500,
            }
    fs.clear_faults()
    for name, write in (
        ("enqueue", lambda: q.enqueue("t", 1)),
        ("enqueue_many", lambda: q.enqueue_many([("t", 1)])),
        ("claim", q.claim),
        ("cancel", lambda: q.cancel(next(iter(jobs)))),
    ):
        with pytest.raises(walq.LogFailedError):
            write()
            pytest.fail(f"{name} accepted a write after the log failed")
    q.close()
    rng = random.Random(nth)
    assert_keeps(fs.snapshot(mode="clean"), jobs)
    assert_keeps(fs.snapshot(mode="durable"), jobs)
    assert_keeps(fs.snapshot(rng, mode="any"), jobs)


def test_a_full_disk_stops_writes_and_a_reopen_on_it_keeps_confirmed_jobs() -> None:
    """A real ENOSPC (capacity reached while creating a segment) fails the log cleanly."""
    fs = SimFileSystem(capacity=3 * 4096 + 512)
    q = open_sim(fs)
    jobs: dict[int, Any] = {}
    with pytest.raises(walq.LogFailedError):
        for i in range(100):
            payload = {"i": i, "pad": "z" * 900}
            jobs[q.enqueue("t", payload)] = payload
    q.close()
    assert jobs
    assert_keeps(fs.snapshot(mode="clean"), jobs)
    assert_keeps(fs.snapshot(mode="durable"), jobs)


# -- regressions: bugs the explorer found -------------------------------------------------------


def test_a_failed_fsync_then_a_restart_then_power_loss_still_opens() -> None:
    """EIO on fsync, restart without reboot, a confirmed enqueue, power loss: open works."""
    fs = SimFileSystem()
    q = open_sim(fs)
    first = q.enqueue("t", "a")
    fs.inject("sync", errno.EIO, path=QDIR + "/")
    with pytest.raises(walq.LogFailedError):
        q.enqueue("t", "b")  # its bytes reached the page cache; their fate is unknown
    q.close()
    restarted = fs.crash(mode="clean")
    q = open_sim(restarted)  # sees "b" in the page cache and builds on it
    later = q.enqueue("t", "c")  # confirmed: its record vouches for "b" as synced
    q.close()
    after_power_loss = restarted.crash(mode="durable")
    q = open_sim(after_power_loss)  # CorruptionError today: "b" was never durable
    assert q.status(first) == "pending" and q.status(later) == "pending"
    q.close()


def test_compaction_after_an_unsynced_fail_reads_the_buffered_error() -> None:
    """fail(sync=False) -- what the Worker does -- then compact(): no false CorruptionError."""
    fs = SimFileSystem()
    q = open_sim(fs)
    q.enqueue("t", b"x" * 3000)
    q.enqueue("t", b"y" * 3000)  # seals segment 1: the first job's record is compactable
    job = q.claim()
    assert job is not None
    q.fail(job.id, "boom", permanent=True, sync=False)
    q.compact()  # CorruptionError today: "corrupt at offset ...: ?"
    (dead,) = q.dead_jobs()
    assert dead.id == job.id and dead.error == "boom"
    q.close()


class Scripted:
    """Choices for a run played by hand: each pick takes the first option, and each
    integer comes from `ints` (then the top of its range)."""

    def __init__(self, *ints: int) -> None:
        self.ints = list(ints)

    def integer(self, lo: int, hi: int) -> int:
        return self.ints.pop(0) if self.ints else hi

    def pick(self, options: Sequence[T]) -> T:
        return options[0]

    def crash(self, fs: SimFileSystem, mode: CrashMode) -> SimFileSystem:
        return fs.crash(mode=mode)


def claimed_in_a_segment_with_room(ints: Sequence[int], room: int | None) -> powerloss.Run:
    """A run (choices scripted) whose job 1 is claimed, its segment filled to leave `room`
    bytes (None: not filled); every step confirmed in the run's model."""
    run = powerloss.Run(Scripted(*ints), sync="always")
    q = run.q = run.open(run.fs)

    def confirmed(payload: bytes) -> None:
        before = dict(run.model.live)
        jid = q.enqueue("a", payload)
        run.model.payloads[jid] = ("a", payload)
        run.model.record(run.records(before), committed=True)

    confirmed(b"the job")
    before = dict(run.model.live)
    job = q.claim()
    assert job is not None and job.id == 1
    run.model.record(run.records(before), committed=True)
    if room is not None:
        log = q._log
        start = log._end
        confirmed(b"")
        overhead = log._end - start  # of an enqueue record with an empty payload
        pad = log._capacity - log._end - overhead - room
        assert pad >= 0
        confirmed(b"p" * pad)
        assert log._capacity - log._end == room and log.active_seq == 1
    return run


# (the operation, the integers its choices draw, the job as a reopen shows it done)
TORN_OUTCOMES = [
    (powerloss.op_ack, (0,), ("done",)),  # 0: says how its attempt ran
    (powerloss.op_fail, (0, 0), ("dead", 1)),  # permanent; says how it ran
    (powerloss.op_release, (0,), ("pending", 0)),  # the attempt given back
]


@pytest.mark.parametrize(("op", "ints", "shown"), TORN_OUTCOMES, ids=["ack", "fail", "release"])
def test_an_outcome_whose_roll_fails_after_its_record_may_survive(
    op: powerloss.Op, ints: tuple[int, ...], shown: tuple[Any, ...]
) -> None:
    """An outcome with ran=...: room for its record but not for its attempt record. The roll
    between them fails, the call raises LogFailedError, and after a restart the outcome holds.

    The crash model leaves a failed write's fate unknown; the explorer's model once let
    only an enqueue or a claim that raised have written anything, and called this "lost".
    """
    run = claimed_in_a_segment_with_room(ints, None)
    assert run.q is not None
    end = run.q._log._end
    op(run)
    size = run.q._log._end - end  # the outcome's record and its attempt record
    run.q.close()
    run = claimed_in_a_segment_with_room(ints, size - 1)  # an attempt record is > 1 byte
    assert run.q is not None
    run.fs.inject("pwrite", errno.EIO, path=fmt.segment_name(2))  # creating the next segment
    before = dict(run.model.live)
    with pytest.raises(walq.LogFailedError, match="creating segment 2"):
        op(run)
    assert "ran=Ran(" in run.history[-1]
    run.interrupted(before)
    run.fs.clear_faults()
    run.q.close()
    with contextlib.suppress(powerloss.Stop):
        run.recover(run.fs.crash(mode="durable"))  # the record was fsynced with segment 1
    assert not run.violations, run.violations
    assert run.q is not None
    assert powerloss.project(powerloss.observe(run.q, [1]).get(1), run.clock.mono) == shown
    run.q.close()


def test_a_kill_during_a_segment_roll_then_power_loss_keeps_later_confirmed_jobs() -> None:
    """kill -9 between a new segment's rename and its directory fsync; restart; power loss."""
    fs = SimFileSystem()
    q = open_sim(fs)
    q.enqueue("t", b"a" * 3000)
    fs.crash_on("sync_dir", path=QDIR)
    with pytest.raises(SimulatedCrash):
        q.enqueue("t", b"b" * 3000)  # rolls: segment 2 is renamed into place, then the kill
    restarted = fs.crash(mode="clean")
    q = open_sim(restarted)
    confirmed = q.enqueue("t", "confirmed")  # lands in segment 2, whose name is not durable
    after_power_loss = restarted.crash(mode="durable")
    q = open_sim(after_power_loss)
    assert q.status(confirmed) == "pending"  # UnknownJobError today: segment 2 is gone
    q.close()


def spooled_disk(n: int) -> SimFileSystem:
    """A queue's disk with one durable spool file of `n` items, as a producer leaves it."""
    fs = SimFileSystem()
    open_sim(fs).close()
    items = [wire.Item(task="t", kind=1, data=bytes([i]) * 900) for i in range(n)]
    writer = spool.SpoolWriter(fs, QDIR, max_files=100, max_bytes=1 << 30, lock_timeout=1.0)
    writer.put(items)  # durable on return: the producer's promise
    return fs


def test_spool_ingestion_stays_exactly_once_when_a_compaction_runs_during_it() -> None:
    """Ingest a spool file; the compactor tries to run before the unlink is durable; power is cut.

    (Bug 7, fixed: the compactor takes the queue's ingest_lock, so it waits for the
    ingestion instead of dropping the enqueue records that name the spool file.)
    """
    fs = spooled_disk(10)
    q = open_sim(fs)
    server = ProducerServer(q, listen=False, poll_interval=None)
    unlink = server.spool._unlink

    compactor_ran = threading.Event()

    def background_compaction() -> None:
        with contextlib.suppress(SimulatedCrash, walq.WalqError):
            q.compact()
        compactor_ran.set()

    def compact_then_unlink(names: list[str]) -> bool:
        # The background compactor, poked when the batch sealed a segment, wants to run now.
        threading.Thread(target=background_compaction, daemon=True).start()
        assert not compactor_ran.wait(0.3)  # it waits for the ingestion to be durable
        return unlink(names)

    server.spool._unlink = compact_then_unlink  # type: ignore[method-assign]
    fs.crash_on("sync_dir", path=QDIR + "/spool")  # power is cut before the unlink is durable
    with pytest.raises(SimulatedCrash):
        server.start()
    q = open_sim(fs.crash(mode="durable"))
    ProducerServer(q, listen=False, poll_interval=None).start()
    assert q.stats()["pending"] == 10  # 18 today: 8 ingested twice
    q.close()


@pytest.mark.parametrize("fault", ["sync_dir", "remove"])
def test_spool_ingestion_stays_exactly_once_when_removing_the_file_fails(fault: str) -> None:
    """Ingested, then the spool file's removal (or the spool directory's fsync after it)
    fails: compaction and checkpoints wait, the next poll retries, and a power cut at any
    point leaves every spooled item in the queue exactly once.

    (Found by tools/powerloss.py: the failed fsync's error left the ingestion, and a
    compaction then dropped the origins while the removal was not durable; a power cut
    brought the file back and it was ingested twice.)
    """
    fs = spooled_disk(3)
    q = open_sim(fs)
    server = ProducerServer(q, listen=False, poll_interval=None)
    fs.inject(fault, errno.EIO, path=QDIR + "/spool", times=None)
    assert server.ingest() == 3
    for _ in range(3):  # seal the segment holding the ingested enqueue records
        q.enqueue("t", b"x" * 3000)

    def exactly_once(disk: SimFileSystem) -> None:
        again = open_sim(disk)
        ProducerServer(again, listen=False, poll_interval=None).start()  # settles, ingests
        assert again.stats()["pending"] == 3 + 3, fs.listdir(QDIR + "/spool")
        again.close()

    with pytest.raises(walq.CompactionError, match=r"spool.*compaction waits"):
        q.compact()
    with pytest.raises(walq.CompactionError, match=r"spool.*the checkpoint waits"):
        q.write_checkpoint()
    assert server.ingest() == 0  # the retry fails too: nothing is ingested twice
    exactly_once(fs.snapshot(mode="durable"))
    exactly_once(fs.snapshot(mode="clean"))
    fs.clear_faults()
    assert server.ingest() == 0  # the retry holds now
    assert q.compact().segments_in > 0
    exactly_once(fs.snapshot(mode="durable"))
    q.close()


def test_a_queue_opened_without_serving_settles_a_crashed_ingestion_first() -> None:
    """An owner dies between an ingestion's enqueue and the file's removal; the next open
    has serve=False and compacts: the file is settled at open, not ingested again later."""
    fs = spooled_disk(3)
    q = open_sim(fs)
    fs.crash_on("remove", path=QDIR + "/spool")
    with pytest.raises(SimulatedCrash):
        ProducerServer(q, listen=False, poll_interval=None).ingest()
    disk = fs.crash(mode="durable")  # the enqueue is durable; the file is still there
    q = open_sim(disk)  # serve=False
    assert [n for n in disk.listdir(QDIR + "/spool") if not n.startswith(".")] == []
    while (job := q.claim()) is not None:
        q.ack(job.id)
    for _ in range(3):  # seal the segment with the ingested jobs' records
        q.enqueue("t", b"x" * 3000)
    assert q.compact().segments_in > 0  # the acked jobs' records, origins with them, go
    q.close()
    again = open_sim(disk)
    ProducerServer(again, listen=False, poll_interval=None).start()
    assert again.stats()["pending"] == 3  # the padding: no spooled item came back
    again.close()


# -- flow: results, follow-up jobs, dependencies (docs/FLOW.md) -----------------------------


def _flow_script(q: walq.Queue, done: list[str]) -> None:
    """A job with a dependent; its ack commits a result and three follow-up jobs; compactions."""
    pad = "p" * 1500  # three jobs fill a 4 KiB segment: compactions have sealed segments
    a = q.enqueue("a", {"pad": pad})
    q.enqueue("b", {"pad": pad}, after=[a])
    done.append("enqueued")
    job = q.claim(tasks=["a"])
    assert job is not None
    q.ack(job.id, result={"r": 1}, enqueue=[("f", {"i": i, "pad": pad}) for i in range(3)])
    done.append("acked")
    q.compact()
    child = q.claim(tasks=["b"])
    assert child is not None and child.parents == {a: {"r": 1}}
    q.ack(child.id, result=b"ok")
    done.append("b-acked")
    q.enqueue("pad", {"pad": pad})
    q.compact()
    done.append("compacted")


def _check_flow(disk: SimFileSystem, done: list[str]) -> None:
    """The reopened queue: the ack, its result and its follow-ups all there or none of them."""
    q = open_sim(disk)
    try:
        if "enqueued" not in done and q.stats()["next_id"] <= 2:
            return  # the crash came before the two enqueues were confirmed
        a, b = 1, 2
        follow = q.stats()["tasks"].get("f", {}).get("pending", 0)
        if q.status(a) == "done":
            assert follow == 3, f"job {a} done with {follow} of its 3 follow-up jobs"
            assert q.result(a, timeout=0) == {"r": 1}
            assert q.status(b) in ("pending", "done")
        else:
            assert "acked" not in done, "a confirmed ack was lost"
            assert follow == 0, f"{follow} follow-up jobs exist without the ack of job {a}"
            assert q.status(b) == "waiting", f"job {b} is {q.status(b)} before its parent is done"
            assert q.claim(tasks=["b"]) is None
        if "b-acked" in done:
            assert q.result(b, timeout=0) == b"ok"
        if q.status(b) == "pending":
            job = q.claim(tasks=["b"])
            assert job is not None and job.parents == {a: {"r": 1}}
    finally:
        q.close()


def test_follow_up_jobs_and_results_are_atomic_with_the_ack_at_every_crash_point() -> None:
    """Crash at every file-system call of the flow script, under every crash mode."""
    probe = SimFileSystem()
    _flow_script(open_sim(probe), [])
    total = probe.calls
    rng = random.Random(20261204)
    states = 0
    for index in range(total):
        fs = SimFileSystem()
        done: list[str] = []
        fs.crash_at_call(index)
        with contextlib.suppress(SimulatedCrash, walq.LogFailedError):
            _flow_script(open_sim(fs), done)
        for mode in ("clean", "durable", "prefix", "any"):
            choices = rng if mode in ("prefix", "any") else None
            _check_flow(fs.snapshot(choices, mode=mode), done)
            states += 1
    assert states >= 4 * 50
