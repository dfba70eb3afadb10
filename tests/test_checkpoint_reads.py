"""Read-only tools start from the checkpoint (status, stats, dead list, jobs) and agree
with a replay of the whole log: random histories with compactions, a torn tail after
the checkpoint, a damaged or stale checkpoint, beside a live owner and from the CLI."""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import walq
from walq.core import format as fmt
from walq.core import framing
from walq.core.state import Now
from walq.directory.fs import File, OsFileSystem
from walq.ops import dead as ops_dead
from walq.ops import live, lookup
from walq.ops import replay as ops_replay
from walq.ops import stats as ops_stats
from walq.ops.replay import now_clock

SMALL = 4096
KEYS = ("status", "task", "attempts", "max_attempts", "priority", "key", "error")
# Figures that differ between two directories read at once, or say where they came from.
NOT_COMPARED = ("path", "read_at", "checkpoint", "worker", "breakers", "compactor")


def _random_ops(q: walq.Queue, rng: random.Random, steps: int, *, checkpoint_at: int) -> None:
    for step in range(steps):
        if step == checkpoint_at:
            q.write_checkpoint()
        r = rng.random()
        if r < 0.3:
            q.enqueue_many(
                [
                    (rng.choice(["a", "b"]), {"i": i, "pad": "x" * rng.randrange(60)})
                    for i in range(rng.randrange(1, 30))
                ]
            )
            if rng.random() < 0.3:
                q.enqueue("a", 1, key=f"k{step}", priority=rng.randrange(-3, 4))
            if rng.random() < 0.2:
                q.enqueue("later", 1, delay=3600)
        elif r < 0.55:
            jobs = q.claim_many(rng.randrange(1, 20))
            for j in jobs:
                what = rng.random()
                if what < 0.4:
                    q.ack(j.id)
                elif what < 0.55:
                    q.fail(j.id, f"boom {j.id}", permanent=True)
                elif what < 0.7:
                    q.fail(j.id, "again", delay=0)
                elif what < 0.8:
                    q.release(j.id)
                # else: left running
        elif r < 0.65:
            dead = [d.id for d in q.dead_jobs()]
            if dead:
                q.requeue(dead[0])
            if len(dead) > 1:
                q.purge([dead[-1]])
        elif r < 0.72:
            pending = [j["id"] for j in q.jobs(state="pending", limit=5)]
            if pending:
                q.cancel(pending[-1])
        elif r < 0.76:
            q.compact(seal=True)


def history(qdir: str, seed: int) -> None:
    """A random history over one to three owners; the last writes a checkpoint part-way,
    goes on, and stops with jobs still running (as a killed owner leaves them)."""
    rng = random.Random(seed)
    sessions = rng.randint(1, 3)
    for s in range(sessions):
        last = s == sessions - 1
        with walq.Queue.open(qdir, segment_size=SMALL, compaction=False) as q:
            steps = rng.randrange(20, 40)
            _random_ops(q, rng, steps, checkpoint_at=rng.randrange(5, steps - 3) if last else -1)
            if last:
                q.claim_many(3)  # running at the end, after the checkpoint
            else:
                for j in q.jobs(state="running", limit=1000):
                    q.release(j["id"])


def without_checkpoint(qdir: str, tmp: Path) -> str:
    """A copy of the queue without its checkpoint: read, it is replayed whole."""
    copy = str(tmp / "plain")
    shutil.copytree(qdir, copy, ignore=shutil.ignore_patterns("*.sock", "LOCK"))
    os.remove(os.path.join(copy, "checkpoint"))
    return copy


def newest_segment(qdir: str) -> Path:
    return sorted(Path(qdir).glob("*.wal"))[-1]


def tear_last_record(qdir: str) -> bool:
    """Zero the last bytes of the log's last record, as a crash mid-write leaves it (only
    past the checkpoint's position: the bytes before it were fsynced)."""
    cp = ops_replay._checkpoint(qdir, OsFileSystem(), now_clock())
    assert cp is not None
    for seg in sorted(Path(qdir).glob("*.wal"), reverse=True):
        recs = list(framing.records(seg.read_bytes(), fmt.SEGMENT_HEADER_SIZE))
        if not recs:
            continue
        last = recs[-1]
        if (int(seg.stem, 16), last.offset) < (cp.summary.seq, cp.summary.offset):
            return False
        with open(seg, "r+b") as f:
            f.seek(last.end - 3)
            f.write(b"\0\0\0")
        return True
    return False


def status_of(path: str, jid: int, *, fast: bool) -> Any:
    try:
        got = live.files_job_status(path, jid) if fast else live.replayed_job_status(path, jid)
    except walq.UnknownJobError as exc:
        return ("unknown", str(exc))
    return {k: got.get(k) for k in KEYS}


def figures(path: str, now: Now) -> dict[str, Any]:
    st = ops_stats.directory_stats(path, now=now)
    for key in ("next_due_in", "oldest_pending_age"):  # wall and monotonic clocks converted
        st[key] = None if st[key] is None else round(st[key], 3)
    return {k: v for k, v in st.items() if k not in NOT_COMPARED}


def dead_rows(path: str) -> list[tuple[Any, ...]]:
    return [(d.id, d.task, d.attempts, d.error, d.key, d.payload) for d in ops_dead.dead_jobs(path)]


class Spy:
    """Counts how often each fast path answered and how often it fell back."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.lookups = [0, 0]  # answered from the checkpoint, fell back
        self.replays = [0, 0]
        job, cp = lookup._from_checkpoint, ops_replay._checkpoint

        def spied_job(*args: Any, **kw: Any) -> Any:
            out = job(*args, **kw)
            self.lookups[out is None] += 1
            return out

        def spied_cp(*args: Any, **kw: Any) -> Any:
            out = cp(*args, **kw)
            self.replays[out is None] += 1
            return out

        monkeypatch.setattr(lookup, "_from_checkpoint", spied_job)
        monkeypatch.setattr(ops_replay, "_checkpoint", spied_cp)


def compare(qdir: str, plain: str) -> int:
    """Assert the queue reads the same with its checkpoint as replayed whole; its next id.

    But for two figures the checkpoint knows better than the log: `interrupted`, the
    jobs running when the last owner stopped (a compacted record of a running job no
    longer says it was running, and a claim before an earlier restart still does), and
    `done_in_log` (the checkpoint carries its owner's count, acks a compaction dropped
    included).
    """
    now = now_clock()
    want, got = figures(plain, now), figures(qdir, now)
    for key in ("interrupted", "done_in_log"):
        del got[key], want[key]
    assert got == want
    assert dead_rows(qdir) == dead_rows(plain)
    assert live.list_jobs(qdir, limit=10_000) == live.list_jobs(plain, limit=10_000)
    next_id = int(want["next_id"])
    for jid in range(1, next_id + 2):
        assert status_of(qdir, jid, fast=True) == status_of(plain, jid, fast=False), jid
    return next_id


@pytest.mark.parametrize("seed", range(6))
def test_reads_from_the_checkpoint_equal_a_whole_replay(
    tmp_path: Path, seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    qdir = str(tmp_path / "q")
    history(qdir, seed)
    plain = without_checkpoint(qdir, tmp_path)
    # Usable unless a compaction after it replaced the segments it names.
    usable = ops_replay._checkpoint(qdir, OsFileSystem(), now_clock()) is not None
    assert usable or seed == 5  # (this history compacts after its checkpoint)
    spy = Spy(monkeypatch)
    next_id = compare(qdir, plain)
    if usable:
        assert spy.replays[0] >= 3  # stats, dead list and jobs started from the checkpoint
        assert spy.lookups[0] >= next_id // 2, spy.lookups  # most jobs' status from it too
    else:
        assert spy.replays[0] == spy.lookups[0] == 0


@pytest.mark.parametrize("seed", range(3))
def test_a_torn_tail_after_the_checkpoint_reads_as_a_whole_replay(
    tmp_path: Path, seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    qdir = str(tmp_path / "q")
    history(qdir, 100 + seed)
    with walq.Queue.open(qdir, segment_size=SMALL, compaction=False) as q:
        q.write_checkpoint()
        q.enqueue_many([("a", i) for i in range(5)])
        for j in q.claim_many(3):
            q.ack(j.id)
    assert tear_last_record(qdir)
    plain = without_checkpoint(qdir, tmp_path)
    spy = Spy(monkeypatch)
    compare(qdir, plain)
    assert spy.replays[0] >= 3 and spy.lookups[0] > 0


@pytest.mark.parametrize("how", ["body", "header", "truncated"])
def test_a_damaged_checkpoint_is_not_used(
    tmp_path: Path, how: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    qdir = str(tmp_path / "q")
    history(qdir, 7)
    cp = Path(qdir) / "checkpoint"
    data = bytearray(cp.read_bytes())
    if how == "truncated":
        del data[len(data) // 2 :]
    else:
        data[100 if how == "body" else 20] ^= 0xFF
    cp.write_bytes(bytes(data))
    plain = without_checkpoint(qdir, tmp_path)
    spy = Spy(monkeypatch)
    compare(qdir, plain)
    assert spy.replays[0] == 0 and spy.lookups[0] == 0


def test_a_stale_checkpoint_is_not_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A checkpoint a compaction outran (put back from before it) names replaced segments."""
    qdir = str(tmp_path / "q")
    history(qdir, 11)
    old = (Path(qdir) / "checkpoint").read_bytes()
    with walq.Queue.open(qdir, segment_size=SMALL, compaction=False, checkpoint=False) as q:
        for j in q.claim_many(50):
            q.ack(j.id)
        assert q.compact(seal=True)
    (Path(qdir) / "checkpoint").write_bytes(old)
    plain = without_checkpoint(qdir, tmp_path)
    spy = Spy(monkeypatch)
    compare(qdir, plain)
    assert spy.replays[0] == 0 and spy.lookups[0] == 0


def test_a_job_of_a_foreign_record_location_is_not_trusted(tmp_path: Path) -> None:
    """The checkpoint's entry for a job points at a record that is not that job's: the
    lookup reads the job's records instead."""
    qdir = str(tmp_path / "q")
    with walq.Queue.open(qdir, compaction=False) as q:
        ids = q.enqueue_many([("a", i) for i in range(10)])
        q.write_checkpoint()
    seg = newest_segment(qdir)
    data = bytearray(seg.read_bytes())
    recs = list(framing.records(bytes(data), fmt.SEGMENT_HEADER_SIZE))
    # Break the job's record (as damage would): its checksum fails.
    data[recs[-1].offset + 20] ^= 0xFF
    seg.write_bytes(bytes(data))
    assert lookup._from_checkpoint(qdir, ids[-1], OsFileSystem(), now_clock(), False) is None
    assert lookup._from_checkpoint(qdir, ids[0], OsFileSystem(), now_clock(), False) is not None


def test_beside_a_live_owner_running_jobs_read_as_running(tmp_path: Path) -> None:
    """Jobs running at the checkpoint's position stay running to a reader beside the owner,
    until a record after it says otherwise."""
    qdir = str(tmp_path / "q")
    with walq.Queue.open(qdir, compaction=False, sync="always") as q:
        q.enqueue_many([("a", i) for i in range(40)])
        before = q.claim_many(10)
        q.write_checkpoint()
        q.ack(before[0].id)
        q.fail(before[1].id, "again", delay=0)
        after = q.claim_many(5)
        q.ack(after[0].id)
        plain = without_checkpoint(qdir, tmp_path)
        fast = ops_replay.replay(qdir, owner_running=True)
        slow = ops_replay.replay(plain, owner_running=True)
        assert fast.running == slow.running
        assert before[2].id in fast.running and before[0].id not in fast.running
        assert fast.counts == slow.counts and fast.tasks == slow.tasks
        for j in (*before, *after):
            got = lookup.job_state(qdir, j.id, owner_running=True)
            want = lookup.job_state(plain, j.id, owner_running=True)
            assert got == want, j.id


class CountingFile:
    def __init__(self, f: File, counter: list[int]) -> None:
        self.f, self.counter = f, counter

    def pread(self, size: int, offset: int) -> bytes:
        data = self.f.pread(size, offset)
        self.counter[0] += len(data)
        return data

    def size(self) -> int:
        return self.f.size()

    def close(self) -> None:
        self.f.close()


class CountingFs(OsFileSystem):
    """Counts the bytes read; refuses to write (a read-only directory)."""

    def __init__(self) -> None:
        super().__init__()
        self.read = [0]

    def open(self, path: str, *, write: bool = False, create: bool = False) -> Any:
        assert not write and not create, path
        return CountingFile(super().open(path), self.read)

    def rename(self, src: str, dst: str) -> None:
        raise AssertionError(f"rename {src}")

    def remove(self, path: str) -> None:
        raise AssertionError(f"remove {path}")


def test_a_lookup_reads_neither_the_covered_log_nor_the_zeroed_space(tmp_path: Path) -> None:
    qdir = str(tmp_path / "q")
    with walq.Queue.open(qdir, compaction=False, segment_size=8 << 20) as q:
        ids = q.enqueue_many([("a", {"pad": "x" * 200, "i": i}) for i in range(20_000)])
        for j in q.claim_many(100):
            q.ack(j.id)
        q.write_checkpoint()
        late = q.enqueue("f", 1)
        assert q.claim(tasks=["f"]) is not None
        q.fail(late, "late", permanent=True)
    seg = newest_segment(qdir)
    log_bytes = sum(p.stat().st_size for p in Path(qdir).glob("*.wal"))
    cp_bytes = (Path(qdir) / "checkpoint").stat().st_size
    fs = CountingFs()
    got = lookup.job_state(qdir, ids[500], fs, owner_running=False)
    assert got["status"] == "pending"
    assert fs.read[0] < cp_bytes + (2 << 20) < log_bytes, (fs.read[0], log_bytes)
    fs = CountingFs()
    got = lookup.job_state(qdir, late, fs, owner_running=False)
    assert (got["status"], got["error"]) == ("dead", "late")
    assert fs.read[0] < cp_bytes + (2 << 20), fs.read[0]
    # Without a checkpoint: the job's own segment onward, but not the zeroed space.
    os.remove(os.path.join(qdir, "checkpoint"))
    fs = CountingFs()
    got = lookup.job_state(qdir, late, fs, owner_running=False)
    assert (got["status"], got["error"]) == ("dead", "late")
    written = list(framing.records(seg.read_bytes(), fmt.SEGMENT_HEADER_SIZE))[-1].end
    assert seg.stat().st_size - written > 4 * lookup.CHUNK  # zeroed space to leave unread
    heads = lookup.HEAD * len(list(Path(qdir).glob("*.wal")))
    assert fs.read[0] <= written + heads + lookup.CHUNK, (fs.read[0], written)


def test_stats_reads_a_read_only_directory_from_the_checkpoint(tmp_path: Path) -> None:
    qdir = str(tmp_path / "q")
    history(qdir, 21)
    plain = without_checkpoint(qdir, tmp_path)
    fs = CountingFs()
    r = ops_replay.replay(qdir, fs, owner_running=False)
    w = ops_replay.replay(plain, owner_running=False)
    assert r.counts == w.counts and r.state.next_id == w.state.next_id
    assert ops_replay._checkpoint(qdir, fs, now_clock()) is not None


def tree(qdir: str) -> dict[str, tuple[int, int, str]]:
    out = {}
    for p in sorted(Path(qdir).rglob("*")):
        if p.is_file():
            st = p.stat()
            out[str(p)] = (st.st_size, st.st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
    return out


def walq_cli(*args: str) -> str:
    r = subprocess.run(
        [sys.executable, "-m", "walq", *args], capture_output=True, text=True, timeout=300,
        check=False,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_the_cli_reads_the_same_with_and_without_the_checkpoint(tmp_path: Path) -> None:
    qdir = str(tmp_path / "q")
    history(qdir, 3)
    plain = without_checkpoint(qdir, tmp_path)
    before = tree(qdir)

    def stats(path: str) -> dict[str, Any]:
        st = json.loads(walq_cli("stats", path, "--json"))
        # (Times are the moment each command ran; see compare for the last two.)
        skip = (*NOT_COMPARED, "oldest_pending_age", "next_due_in", "interrupted", "done_in_log")
        return {k: v for k, v in st.items() if k not in skip}

    assert stats(qdir) == stats(plain)
    assert walq_cli("dead", "list", qdir, "--json") == walq_cli("dead", "list", plain, "--json")
    st = stats(plain)
    jobs = [json.loads(line) for line in walq_cli("jobs", plain, "--json").splitlines()]
    picks = {jobs[0]["id"], jobs[-1]["id"], int(st["next_id"]) - 1, 1}
    for jid in picks:
        got = walq_cli("status", qdir, str(jid), "--json")
        want = walq_cli("status", plain, str(jid), "--json")
        assert {k: json.loads(got).get(k) for k in KEYS} == {
            k: json.loads(want).get(k) for k in KEYS
        }, jid
        assert walq_cli("dump", qdir, "--job", str(jid)) == walq_cli(
            "dump", plain, "--job", str(jid)
        ).replace(plain, qdir)
    assert tree(qdir) == before  # read-only: nothing written, nothing taken
