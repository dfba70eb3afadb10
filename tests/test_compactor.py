"""The compactor: disk is reclaimed and, whatever crashes when, no job is lost or revived."""

from __future__ import annotations

import random
import threading
from typing import Any

import pytest

import walq
from walq.directory.compactor import Policy, should_compact
from walq.testing.faultfs import SimFileSystem, SimulatedCrash

QDIR = "/q"


def logical(q: walq.Queue) -> dict[str, Any]:
    """Everything a user can observe of the queue's jobs, for before/after comparisons."""
    state = q._state
    jobs = {}
    for info in state.jobs():
        job = q._job(info.id, info.attempts)
        jobs[info.id] = (info.state_name, info.attempts, job.task, job.payload, job.key)
    return {
        "jobs": jobs,
        "dead": sorted((d.id, d.error) for d in q.dead_jobs()),
        "tombstones": state.tombstones(),
        "next_id": state.next_id,
    }


def workload(q: walq.Queue, rng: random.Random, n: int = 60) -> list[int]:
    """Enqueue, finish most, fail, cancel and key some jobs, across several segments."""
    ids = q.enqueue_many(
        [("t", {"i": i, "pad": "x" * rng.randint(0, 300)}, {"key": f"k{i}" if i % 7 == 0 else None})
         for i in range(n)]
    )  # fmt: skip
    for _ in range(n * 2 // 3):
        job = q.claim()
        assert job is not None
        roll = rng.random()
        if roll < 0.7:
            q.ack(job.id)
        elif roll < 0.8:
            q.fail(job.id, f"boom {job.id}", permanent=True)
        elif roll < 0.9:
            q.fail(job.id, "later", delay=1000)
        else:
            q.release(job.id)
    q.cancel(ids[-1])
    q.claim()  # one left running
    return ids


def open_sim(fs: SimFileSystem) -> walq.Queue:
    # serve=False: no spool-polling thread making file-system calls of its own
    return walq.Queue.open(QDIR, fs=fs, segment_size=4096, compaction=False, serve=False)


def test_compaction_reclaims_disk_and_keeps_every_job(qdir: str) -> None:
    """After compaction the queue is smaller and reopens to exactly the same jobs."""
    with walq.Queue.open(qdir, segment_size=4096, compaction=False) as q:
        workload(q, random.Random(1), 200)
        before = logical(q)
        disk_before = q.stats()["disk_bytes"]
        result = q.compact()
        assert result.segments_in >= 5 and result.bytes_out < result.bytes_in
        assert q.stats()["disk_bytes"] < disk_before
        assert logical(q) == before
    with walq.Queue.open(qdir, segment_size=4096, compaction=False) as q:
        after = logical(q)
    # Reopening turns the running job back to pending (its worker is gone), as without compaction.
    expected = {
        jid: (("pending", *rest) if state == "running" else (state, *rest))
        for jid, (state, *rest) in before["jobs"].items()
    }
    assert after["jobs"] == expected
    assert after["dead"] == before["dead"] and after["next_id"] == before["next_id"]


def test_repeated_compactions_and_statuses(qdir: str) -> None:
    """Compacting again and again keeps ids increasing and every status answerable."""
    every: list[int] = []
    with walq.Queue.open(qdir, segment_size=4096, compaction=False) as q:
        rng = random.Random(2)
        for _ in range(4):
            every += workload(q, rng, 80)
            q.compact()
        before = {jid: q.status(jid) for jid in every}
        assert set(before.values()) >= {"done", "cancelled", "dead", "pending", "scheduled"}
    with walq.Queue.open(qdir, segment_size=4096, compaction=False) as q:
        q.compact()
        after = {jid: q.status(jid) for jid in every}
        assert q.enqueue("t", 1) > max(every)
    running = {jid for jid, s in before.items() if s == "running"}
    assert {j: s for j, s in after.items() if j not in running} == {
        j: s for j, s in before.items() if j not in running
    }
    assert all(after[j] == "pending" for j in running)


def test_compaction_beside_producers_loses_nothing(qdir: str) -> None:
    """Producers and consumers keep going while compactions run; every job is acked once."""
    with walq.Queue.open(qdir, segment_size=8192, compaction=False) as q:
        stop = threading.Event()
        acked: list[int] = []
        produced: list[int] = []

        def produce() -> None:
            for i in range(600):
                produced.append(q.enqueue("t", {"i": i, "pad": "y" * 100}))

        def consume() -> None:
            while not stop.is_set() or q.stats()["pending"]:
                job = q.claim(timeout=0.02)
                if job is not None:
                    q.ack(job.id)
                    acked.append(job.id)

        def compact() -> None:
            while not stop.is_set():
                q.compact()

        threads = [threading.Thread(target=f) for f in (produce, consume, compact)]
        for t in threads:
            t.start()
        threads[0].join()
        stop.set()
        for t in threads[1:]:
            t.join()
        assert sorted(acked) == sorted(produced)
    with walq.Queue.open(qdir, segment_size=8192) as q:
        assert q.stats()["unfinished"] == 0


def test_background_policy_bounds_disk_in_a_steady_loop(qdir: str) -> None:
    """A long enqueue+ack loop keeps disk under live bytes plus a few segments."""
    seg = 16384
    policy = Policy(interval=0.01)
    with walq.Queue.open(qdir, segment_size=seg, compaction=policy) as q:
        peak = 0
        for i in range(1500):
            q.enqueue("t", {"i": i, "pad": "z" * 200})
            job = q.claim()
            assert job is not None
            q.ack(job.id)
            if i % 100 == 0:
                peak = max(peak, q.stats()["disk_bytes"])
        assert q._compactor.runs > 0
        assert peak <= 3 * seg, peak  # the active segment, one sealed, the compacted one


def crash_points(build: Any) -> int:
    """How many file-system calls one compaction makes on the workload."""
    fs = SimFileSystem()
    q = build(fs)
    logical(q)  # as the test does: it opens read handles the compaction would otherwise open
    start = fs.calls
    q.compact()
    return fs.calls - start


def build_workload(fs: SimFileSystem) -> walq.Queue:
    q = open_sim(fs)
    workload(q, random.Random(7), 60)
    return q


def test_a_crash_at_every_call_of_a_compaction_loses_no_job() -> None:
    """kill -9 or power loss at each file-system call of a compaction: same jobs on reopen."""
    calls = crash_points(build_workload)
    assert calls > 10
    for index in range(calls + 1):
        fs = SimFileSystem()
        q = build_workload(fs)
        expected = logical(q)
        fs.crash_at_call(fs.calls + index)
        try:
            q.compact()
        except SimulatedCrash:
            pass
        else:
            assert index == calls
        disks = [fs.crash(mode="clean")]
        disks += [fs.crash([rng.random() < 0.5 for _ in range(fs.choice_count())])
                  for rng in (random.Random(s) for s in range(3))]  # fmt: skip
        for disk in disks:
            q2 = open_sim(disk)
            got = logical(q2)
            want = {
                jid: (("pending", *rest) if state == "running" else (state, *rest))
                for jid, (state, *rest) in expected["jobs"].items()
            }
            assert got["jobs"] == want, index
            assert got["dead"] == expected["dead"], index
            assert got["next_id"] == expected["next_id"], index
            q2.close()


@pytest.mark.parametrize(
    ("sealed", "sealed_bytes", "live", "want"),
    [(0, 0, 0, False), (1, 10_000, 100, True), (1, 10_000, 9_000, False), (8, 10_000, 8_000, True)],
)
def test_policy_trigger(sealed: int, sealed_bytes: int, live: int, want: bool) -> None:
    """Compaction is due on a garbage ratio, or on too many sealed segments."""
    assert should_compact(Policy(), sealed, sealed_bytes, live) is want


def test_seal_then_compact_takes_the_active_segment_too(qdir: str) -> None:
    """compact(seal=True) seals the segment being written, so its garbage goes as well."""
    with walq.Queue.open(qdir, segment_size=1 << 20, compaction=False) as q:
        workload(q, random.Random(3), 100)
        assert q.compact().segments_in == 0
        before = logical(q)
        result = q.compact(seal=True)
        assert result.segments_in == 1 and result.bytes_out < result.bytes_in
        assert logical(q) == before


def test_a_compaction_whose_directory_fsync_failed_does_not_reuse_its_generation() -> None:
    """The failed fsync comes after the rename: jobs already point at the new file's records.

    The next compaction of the same segment number used to give its output the
    same Loc generation, so the jobs did not move (their location looked
    current) and kept offsets into the replaced file: a checkpoint then
    carried them, and the reopened queue dead-lettered them as damaged.
    """
    fs = SimFileSystem()
    q = open_sim(fs)
    ids = q.enqueue_many([("t", {"i": i, "pad": "x" * 300}, {}) for i in range(12)])
    q.compact(seal=True)
    for _ in range(3):
        job = q.claim()
        assert job is not None
        q.ack(job.id)
    fs.inject("sync_dir", path=QDIR)
    with pytest.raises(walq.WalqError, match="directory fsync failed"):
        q.compact()  # only the sealed (compacted) segment: the same number again
    for _ in range(3):
        job = q.claim()
        assert job is not None
        q.ack(job.id)
    assert q.compact().segments_in == 1
    _reopen_from_a_checkpoint_delivers(fs, q, [(jid, i) for i, jid in enumerate(ids)][6:])


def test_a_compaction_takes_a_generation_above_every_one_the_queue_holds() -> None:
    """Whatever the compactor remembers (an open from a checkpoint restores locations a
    previous process's compactions numbered), its output's generation is a new one."""
    fs = SimFileSystem()
    q = open_sim(fs)
    ids = q.enqueue_many([("t", {"i": i, "pad": "x" * 300}, {}) for i in range(12)])
    q.compact(seal=True)
    q._compactor.generation = 0  # as a process that never saw the first compaction
    for _ in range(6):
        job = q.claim()
        assert job is not None
        q.ack(job.id)
    assert q.compact().segments_in == 1
    _reopen_from_a_checkpoint_delivers(fs, q, [(jid, i) for i, jid in enumerate(ids)][6:])


def _reopen_from_a_checkpoint_delivers(
    fs: SimFileSystem, q: walq.Queue, expected: list[tuple[int, int]]
) -> None:
    """Checkpoint and reopen `q`: it opens from the checkpoint and delivers exactly the
    jobs `expected` lists, as (id, its payload's "i"), in that order, and nothing dead."""
    q.write_checkpoint()
    q.close()
    q = open_sim(fs)
    assert q.checkpoint_opened is not None
    got = []
    while (job := q.claim()) is not None:
        got.append((job.id, job.payload["i"]))
        q.ack(job.id)
    assert got == expected
    assert q.dead_jobs() == []
    q.close()


def test_a_location_that_points_at_another_jobs_record_is_damage_not_that_jobs_payload() -> None:
    """A location gone wrong (as a reused compaction generation left them) may land on
    another job's record: its checksum holds, but it must not be delivered as this job."""
    fs = SimFileSystem()
    q = open_sim(fs)
    a, b = q.enqueue_many([("t", {"who": "a"}, {}), ("t", {"who": "b"}, {})])
    state = q._state
    pa, pb = state._jobs[a], state._jobs[b]
    state._jobs[a] = pb & ~7 | pa & 7  # a's entry, b's location (the low bits: its state)
    assert state.info(a).loc == state.info(b).loc
    job = q.claim()
    assert job is not None and (job.id, job.payload) == (b, {"who": "b"})
    (dead,) = q.dead_jobs()
    assert dead.id == a and "[damaged]" in (dead.error or "")
    assert f"job {b}'s, not job {a}'s" in (dead.error or "")
    q.close()


@pytest.mark.parametrize("record", ["enqueue", "job"])
def test_compaction_refuses_a_location_that_points_at_another_jobs_record(record: str) -> None:
    """The compactor copies a plain enqueue or job record without decoding its payload,
    but still checks it is the job's own: a location landing on another job's record
    stops the compaction with CorruptionError naming the file and offset; nothing is lost."""
    fs = SimFileSystem()
    q = open_sim(fs)
    pad = "x" * 200
    ids = q.enqueue_many([("t", {"i": i, "pad": pad}) for i in range(40)])  # 3 segments
    if record == "job":
        q.compact()  # the live jobs' records are job records from here on
    a, b = ids[0], ids[1]
    state = q._state
    pa, pb = state._jobs[a], state._jobs[b]
    state._jobs[a] = pb & ~7 | pa & 7  # a's entry, b's location (the low bits: its state)
    loc = state.info(a).loc
    with pytest.raises(walq.CorruptionError, match=f"job {b}'s, not job {a}'s") as err:
        q.compact()
    assert err.value.offset == loc.offset and err.value.path.endswith(".wal")
    state._jobs[a] = pa  # put it right: every job is still there
    assert [q.claim().payload["i"] for _ in range(40)] == list(range(40))  # type: ignore[union-attr]
    q.close()
