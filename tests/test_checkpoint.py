"""The checkpoint: open from it equals a full replay; damaged, stale or foreign ones are ignored."""

from __future__ import annotations

import contextlib
import random
import time
from typing import Any

import pytest

import walq
from tests.test_compactor import logical, workload
from walq.core import checkpoint as ckpt
from walq.core.state import PENDING
from walq.directory import checkpoint as checkpoints
from walq.directory.compactor import Policy
from walq.errors import CorruptionError
from walq.testing.faultfs import SimFileSystem, SimulatedCrash

QDIR = "/q"


def open_sim(fs: SimFileSystem, **kw: Any) -> walq.Queue:
    opts: dict[str, Any] = {"segment_size": 4096, "compaction": False, "serve": False}
    opts.update(kw)
    return walq.Queue.open(QDIR, fs=fs, **opts)


def index(q: walq.Queue) -> dict[str, Any]:
    """Everything replay builds, for comparing a checkpoint's open with a full replay's."""
    s = q._state
    return {
        "jobs": {i.id: i for i in s.jobs()},
        "keys": dict(s._keys),
        "key_of": dict(s._key_of),
        "errors": dict(s._errors),
        "scheduled": sorted(s._due),
        "tombstones": s.tombstones(),
        "next_id": s.next_id,
        "paused": sorted(s.paused),
        "counts": s.counts,
        "tasks": s.task_counts(),
        "live_bytes": s.live_bytes,
        "segments": sorted(s.segments_in_use()),
        "ready": sorted(j.id for j in s.jobs() if j.state == PENDING),
        "done": q.stats()["done"],
        # What claims would take (each pending job exactly once), taken from the ready index.
        "claimable": sorted(j.id for j in s.take_ready(1 << 30)),
    }


def full_replay(fs: SimFileSystem) -> dict[str, Any]:
    """The queue's index and jobs as a replay of the whole log has them (checkpoint deleted)."""
    copy = fs.snapshot(mode="clean")
    checkpoints.remove(copy, QDIR)
    q = open_sim(copy)
    try:
        assert q.checkpoint_opened is None
        return {"index": index(q), "logical": logical(q)}
    finally:
        q.close()


def reopened(fs: SimFileSystem) -> tuple[walq.Queue, dict[str, Any]]:
    q = open_sim(fs.snapshot(mode="clean"))
    return q, {"index": index(q), "logical": logical(q)}


def busy_queue(fs: SimFileSystem, seed: int) -> walq.Queue:
    """A queue with every kind of job, a checkpoint taken midway, and more changes after it."""
    rng = random.Random(seed)
    q = open_sim(fs)
    workload(q, rng, 40)
    q.enqueue("later", {"x": 1}, delay=3600)
    q.pause("later")  # paused tasks are in the checkpoint's snapshot records
    q.pause("resumed-after")
    assert q.write_checkpoint() is not None
    q.resume("resumed-after")
    workload(q, rng, 30)
    for _ in range(5):
        job = q.claim()
        if job is not None:
            q.release(job.id)
    dead = q.dead_jobs()
    if dead:
        q.requeue(dead[0].id)
    return q


class TestFile:
    """The file's encoding: what is written decodes; any damage is refused."""

    def image(self) -> bytes:
        fs = SimFileSystem()
        q = busy_queue(fs, 1)
        q.close()
        f = fs.open(checkpoints.path_of(QDIR))
        return f.pread(f.size(), 0)

    def test_round_trip(self) -> None:
        """A written checkpoint decodes to a summary that matches its body."""
        data = self.image()
        cp = ckpt.decode(data, "cp")
        assert cp.summary.jobs == len(cp.image.jobs) > 0
        assert (cp.summary.seq, cp.summary.offset) == (
            cp.image.marks[-1].seq,
            cp.image.marks[-1].end,
        )

    def test_every_damaged_byte_is_refused(self) -> None:
        """Flip any byte (header or body): CorruptionError, never a wrong image."""
        data = self.image()
        rng = random.Random(5)
        spots = list(range(ckpt.HEADER_SIZE)) + rng.sample(range(len(data)), 200)
        for at in spots:
            bad = bytearray(data)
            bad[at] ^= 1 << rng.randrange(8)
            with pytest.raises(CorruptionError):
                ckpt.decode(bytes(bad), "cp")

    def test_truncated_is_refused(self) -> None:
        """Any shorter prefix of the file is refused."""
        data = self.image()
        for size in [0, 10, ckpt.HEADER_SIZE - 1, ckpt.HEADER_SIZE, len(data) // 2, len(data) - 1]:
            with pytest.raises(CorruptionError):
                ckpt.decode(data[:size], "cp")

    def test_a_sound_checksum_over_a_wrong_shape_is_refused(self) -> None:
        """A body that is valid marshal but not an image is refused, not trusted."""
        import marshal
        import struct

        from crc32c import crc32c

        body = marshal.dumps((1, 2, 3))
        head = ckpt.HEADER.pack(ckpt.MAGIC, ckpt.VERSION, 0, 0.0, 1, 40, 0, len(body),
                                crc32c(body), 0)[:-4]  # fmt: skip
        data = head + struct.pack("<I", crc32c(head)) + body
        with pytest.raises(CorruptionError, match="malformed"):
            ckpt.decode(data, "cp")


def test_the_quick_image_equals_one_made_by_visiting_every_job() -> None:
    """The image built from the live indexes equals the one built by visiting every job."""
    fs = SimFileSystem()
    q = busy_queue(fs, 8)
    q.claim()
    s = q._state
    now = q._clock()

    def built(visit: bool) -> ckpt.Image:
        taken = ckpt.take(s, now, 0, [])
        return (ckpt._image_by_visiting if visit else ckpt.image)(taken, [])

    quick, slow = built(False), built(True)
    assert quick.jobs == slow.jobs
    assert quick.counts == slow.counts and quick.live_bytes == slow.live_bytes
    assert {t: n for t, n in quick.by_task.items() if any(n)} == slow.by_task
    assert {k: v for k, v in quick.seg_bytes.items() if v} == slow.seg_bytes

    def ids(img: ckpt.Image) -> list[int]:
        out = []
        for _, _, raw in img.ready:
            for j in memoryview(raw).cast("Q"):
                p = img.jobs.get(j)
                if p is not None and p & 7 == PENDING:
                    out.append(j)
        return sorted(out)

    assert ids(quick) == ids(slow)
    q.close()


class TestOpen:
    """Opening from a checkpoint builds exactly what a full replay builds."""

    @pytest.mark.parametrize("seed", range(6))
    def test_open_from_checkpoint_equals_full_replay(self, seed: int) -> None:
        """Jobs, keys, errors, schedules, counts, bytes and tombstones all agree."""
        fs = SimFileSystem()
        q = busy_queue(fs, seed)
        q.close()
        want = full_replay(fs)
        q2, got = reopened(fs)
        assert q2.checkpoint_opened is not None
        assert got == want
        q2.close()

    def test_after_a_crash_without_close(self) -> None:
        """Power cut (durable state only) after more work: same as a full replay."""
        fs = SimFileSystem()
        q = busy_queue(fs, 11)
        q.enqueue("after", {"y": 2})
        lost = fs.crash(mode="durable")
        want = full_replay(lost)
        q2 = open_sim(lost.crash(mode="clean"))
        assert q2.checkpoint_opened is not None
        assert {"index": index(q2), "logical": logical(q2)} == want
        q2.close()
        del q

    def test_after_compactions_before_and_after_it(self) -> None:
        """Locations of a compaction in the old process stay readable; new ones compact again."""
        fs = SimFileSystem()
        q = busy_queue(fs, 12)
        q.compact(seal=True)
        q.write_checkpoint()
        workload(q, random.Random(3), 15)
        q.close()
        want = full_replay(fs)
        q2, got = reopened(fs)
        assert q2.checkpoint_opened is not None
        assert got["logical"] == want["logical"]
        before = logical(q2)
        q2.compact(seal=True)
        assert logical(q2) == before
        q2.close()

    def test_first_claim_comes_from_the_checkpoint(self) -> None:
        """The oldest pending job is claimed first, as after a full replay."""
        fs = SimFileSystem()
        q = open_sim(fs)
        ids = q.enqueue_many([("t", {"i": i}) for i in range(50)])
        q.write_checkpoint()
        q.enqueue("t", {"i": 50})
        q.close()
        q2 = open_sim(fs.crash(mode="clean"))
        job = q2.claim()
        assert job is not None and job.id == ids[0]
        q2.close()


class TestDistrust:
    """A checkpoint that does not agree with the log is ignored: the whole log is replayed."""

    def test_damaged_checkpoint_falls_back(self, caplog: pytest.LogCaptureFixture) -> None:
        """A flipped byte: ignored, logged, and the open equals a full replay."""
        fs = SimFileSystem()
        busy_queue(fs, 2).close()
        want = full_replay(fs)
        path = checkpoints.path_of(QDIR)
        f = fs.open(path, write=True)
        size = f.size()
        f.pwrite(bytes([f.pread(1, size - 3)[0] ^ 0x40]), size - 3)
        f.close()
        q, got = reopened(fs)
        assert q.checkpoint_opened is None
        assert got == want
        assert "checkpoint ignored" in caplog.text
        q.close()

    def test_a_compaction_deletes_the_checkpoint_it_makes_stale(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A compaction replaces the segments the checkpoint names: it deletes the file, so
        an open before the next checkpoint replays the log without warning of a stale one."""
        fs = SimFileSystem()
        q = busy_queue(fs, 3)
        assert fs.exists(checkpoints.path_of(QDIR))
        q.compact(seal=True)
        assert not fs.exists(checkpoints.path_of(QDIR))
        q.close()
        want = full_replay(fs)
        q2, got = reopened(fs)
        assert q2.checkpoint_opened is None
        assert got == want
        assert "checkpoint ignored" not in caplog.text
        q2.close()

    def test_an_older_checkpoint_put_back_is_used_or_refused_never_wrong(self) -> None:
        """An older checkpoint of the same log still agrees with it: replay covers the rest."""
        fs = SimFileSystem()
        q = busy_queue(fs, 4)
        f = fs.open(checkpoints.path_of(QDIR))
        old = f.pread(f.size(), 0)
        f.close()
        workload(q, random.Random(9), 20)
        q.write_checkpoint()
        q.close()
        checkpoints.write(fs, QDIR, old)
        want = full_replay(fs)
        q2, got = reopened(fs)
        assert got == want
        q2.close()

    def test_another_queues_checkpoint_is_refused(self) -> None:
        """A checkpoint copied from another queue names bytes this log does not hold."""
        other = SimFileSystem()
        q = open_sim(other)
        q.enqueue_many([("other", {"i": i}) for i in range(30)])
        q.write_checkpoint()
        q.close()
        f = other.open(checkpoints.path_of(QDIR))
        foreign = f.pread(f.size(), 0)
        f.close()
        fs = SimFileSystem()
        q = open_sim(fs)
        q.enqueue_many([("mine", {"i": i}) for i in range(30)])
        q.close()
        checkpoints.write(fs, QDIR, foreign)
        want = full_replay(fs)
        q2, got = reopened(fs)
        assert q2.checkpoint_opened is None
        assert got == want
        q2.close()

    def test_damaged_covered_bytes_refuse_it(self, caplog: pytest.LogCaptureFixture) -> None:
        """A byte of the log prefix it covers changed: the checkpoint is not trusted."""
        fs = SimFileSystem()
        q = open_sim(fs, segment_size=1 << 20)
        q.enqueue_many([("t", {"i": i}) for i in range(20)])
        q.write_checkpoint()
        q.close()
        seg = f"{QDIR}/{'1'.zfill(16)}.wal"
        f = fs.open(seg, write=True)
        f.pwrite(b"\xff", 200)
        f.close()
        # The full replay then finds the damage (here: in the newest segment, a torn tail).
        q = open_sim(fs.crash(mode="clean"), segment_size=1 << 20)
        assert q.checkpoint_opened is None
        assert "does not hold the bytes it covered" in caplog.text
        q.close()

    def test_damage_in_a_covered_sealed_segment_still_stops_open(self) -> None:
        """Guarantee 4 holds with a checkpoint: damage it covers is found by the full replay."""
        fs = SimFileSystem()
        q = open_sim(fs, segment_size=64 << 10)
        q.enqueue_many([("t", {"i": i, "pad": "p" * 200}) for i in range(400)])
        q.write_checkpoint()
        sealed = q._log.sealed()[0].path
        q.close()
        f = fs.open(sealed, write=True)
        at = 60_000  # deep inside: not the first records
        f.pwrite(bytes([f.pread(1, at)[0] ^ 0x10]), at)
        f.close()
        with pytest.raises(CorruptionError):
            open_sim(fs.crash(mode="clean"), segment_size=64 << 10)

    def test_bytes_added_after_a_covered_sealed_segment_stop_open(self) -> None:
        """Noise appended to a sealed segment it covers: ignored; the full replay reports it."""
        fs = SimFileSystem()
        q = open_sim(fs)
        q.enqueue_many([("t", {"i": i, "pad": "p" * 200}) for i in range(60)])
        q.write_checkpoint()
        sealed = q._log.sealed()[0].path
        q.close()
        f = fs.open(sealed, write=True)
        f.pwrite(bytes(range(7, 250)), f.size())
        f.close()
        with pytest.raises(CorruptionError):
            open_sim(fs.crash(mode="clean"))


def test_a_crash_at_every_call_of_a_checkpoint_loses_nothing() -> None:
    """kill -9 or power loss at each file-system call of writing one: reopen equals replay."""

    def build(fs: SimFileSystem) -> walq.Queue:
        q = busy_queue(fs, 5)
        logical(q)
        return q

    probe = SimFileSystem()
    q = build(probe)
    start = probe.calls
    q.write_checkpoint()
    calls = probe.calls - start
    assert calls > 5
    for i in range(calls + 1):
        fs = SimFileSystem()
        q = build(fs)
        fs.crash_at_call(fs.calls + i)
        with contextlib.suppress(SimulatedCrash):
            q.write_checkpoint()
        disks = [fs.crash(mode="clean"), fs.crash(mode="durable")]
        disks += [fs.crash([rng.random() < 0.5 for _ in range(fs.choice_count())])
                  for rng in (random.Random(s) for s in range(3))]  # fmt: skip
        for disk in disks:
            want = full_replay(disk)
            q2, got = reopened(disk)
            assert got == want, i
            q2.close()


def test_the_background_writes_one_when_due(tmp_path: Any) -> None:
    """With a small policy the compactor's thread writes a checkpoint without being asked."""
    q = walq.Queue.open(str(tmp_path / "q"), compaction=Policy(interval=0.05), serve=False)
    try:
        cp = q._compactor.checkpointer
        assert cp is not None
        cp.policy = checkpoints.Policy(min_bytes=1, min_interval=0.0)
        q.enqueue_many([("t", {"i": i}) for i in range(100)])
        deadline = time.monotonic() + 60
        while cp.last is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert cp.last is not None and cp.last.jobs == 100
    finally:
        q.close()
    q = walq.Queue.open(str(tmp_path / "q"), serve=False, compaction=False)
    assert q.checkpoint_opened is not None
    assert q.stats()["pending"] == 100
    q.close()


def test_fsck_and_stats_describe_it(tmp_path: Any) -> None:
    """fsck says whether an open would use it; stats show its age and position."""
    from walq.ops import repair
    from walq.ops import stats as ops_stats

    path = str(tmp_path / "q")
    q = walq.Queue.open(path, compaction=False, serve=False)
    q.enqueue_many([("t", {"i": i}) for i in range(10)])
    written = q.write_checkpoint()
    assert written is not None
    live = q.stats()["checkpoint"]
    assert (live["seq"], live["offset"], live["jobs"]) == (written.seq, written.offset, 10)
    q.close()
    report = repair.fsck(path)
    assert report.clean and report.checkpoint is not None
    assert "agrees with the log" in report.checkpoint
    st = ops_stats.read(path)
    assert st.checkpoint is not None and st.checkpoint["jobs"] == 10
    with open(checkpoints.path_of(path), "r+b") as f:
        f.seek(-1, 2)
        f.write(b"\x00" if f.read(1) != b"\x00" else b"\x01")
    report = repair.fsck(path)
    assert report.clean  # not damage: the whole log is replayed instead
    assert report.checkpoint is not None and "ignored on open" in report.checkpoint


def test_a_job_taken_out_of_pending_after_the_checkpoint_is_queued_once_when_pending_again() -> (
    None
):
    """The checkpoint queued it; the records after it claimed and dead-lettered it.

    Its entry in the restored ready queue used to stay, so a requeue queued it
    a second time and one claim_many took it twice (StateError: claim is not
    a transition from running).
    """
    fs = SimFileSystem()
    q = open_sim(fs)
    jid = q.enqueue("t", {"n": 1})
    q.write_checkpoint()
    job = q.claim()
    assert job is not None and job.id == jid
    q.fail(jid, "boom", permanent=True)
    q.close()
    q = open_sim(fs)
    assert q.checkpoint_opened is not None
    q.requeue(jid)
    assert [j.id for j in q.claim_many(3)] == [jid]
    assert q.claim_many(3) == []
    q.close()
