"""walq.ops: the operator's tools as plain functions, on quiet, live and damaged queues."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import walq
from walq.core import format as fmt
from walq.core.state import Now
from walq.directory.fs import File, OsFile, OsFileSystem, open_fd
from walq.directory.queue import STATUS_FILE
from walq.ops import admin as ops_admin
from walq.ops import dead as ops_dead
from walq.ops import dump as ops_dump
from walq.ops import follow as ops_follow
from walq.ops import owner as ops_owner
from walq.ops import repair as ops_repair
from walq.ops import replay as ops_replay
from walq.ops import scan as ops_scan
from walq.ops import stats as ops_stats

ROOT = Path(__file__).resolve().parent.parent
SMALL = 4096  # the smallest segment: a few dozen records each


def segments(qdir: str) -> list[Path]:
    return sorted(Path(qdir).glob("*.wal"))


def flip(path: Path, offset: int) -> None:
    """Damage one byte of a file in place."""
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def record_offsets(path: Path) -> list[int]:
    from walq.core import framing

    return [r.offset for r in framing.records(path.read_bytes(), fmt.SEGMENT_HEADER_SIZE)]


def varied(qdir: str, **opts: Any) -> dict[str, int]:
    """A queue with a job in every state; returns their ids by state. The owner is closed."""
    with walq.Queue.open(qdir, compaction=False, **opts) as q:
        done = q.enqueue("mail", {"to": "a@b"}, key="mail:1")
        dead = q.enqueue("resize", b"\x00\x01\x02")
        scheduled = q.enqueue("mail", {"to": "c@d"})
        running = q.enqueue("resize", {"w": 10})
        pending = q.enqueue("mail", {"to": "e@f"})
        for want in (done, dead, scheduled, running):
            job = q.claim()
            assert job is not None and job.id == want
        q.ack(done)
        q.fail(dead, "ValueError: bad\nTraceback (most recent call last):\n  boom", permanent=True)
        q.fail(scheduled, "try later", delay=3600)
    return {
        "done": done,
        "dead": dead,
        "scheduled": scheduled,
        "running": running,
        "pending": pending,
    }


def tree(path: str) -> dict[str, tuple[int, int]]:
    """Every file under `path` with its size and mtime: to prove a reader wrote nothing."""
    out = {}
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            full = os.path.join(root, name)
            st = os.stat(full)
            out[full] = (st.st_size, st.st_mtime_ns)
    return out


class LiveOwner:
    """An owner in a thread: enqueues, claims, acks and fails until stopped."""

    def __init__(self, qdir: str, **opts: Any) -> None:
        self.q = walq.Queue.open(qdir, **opts)
        self.stop = threading.Event()
        self.rounds = 0
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            self._loop()
        except BaseException as exc:
            self.error = exc
            raise

    def _loop(self) -> None:
        while not self.stop.is_set():
            self.q.enqueue_many([("mail", {"n": self.rounds}), ("resize", {"n": self.rounds})])
            job = self.q.claim()
            if job is not None:
                if job.id % 3:
                    self.q.ack(job.id)
                else:
                    self.q.fail(job.id, "flaky", delay=0.0)
            self.rounds += 1

    def __enter__(self) -> LiveOwner:
        self.thread.start()
        while self.rounds < 20:
            time.sleep(0.005)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(10)
        self.q.close()
        assert self.error is None, repr(self.error)


# -- dump ----------------------------------------------------------------------------------


class TestDump:
    """dump: every record with its fields, filters, damage inline."""

    def test_every_record_names_its_job_task_attempt_and_payload(self, qdir: str) -> None:
        """Each row has segment, offset, type, job, task, attempt, key and a payload preview."""
        ids = varied(qdir)
        rows = list(ops_dump.dump(qdir))
        assert [r["type"] for r in rows][:5] == ["enqueue"] * 5
        first = rows[0]
        assert first["segment"] == fmt.segment_name(1) and first["offset"] == 40
        assert first["job"] == ids["done"] and first["task"] == "mail"
        assert first["key"] == "mail:1" and first["payload"] == '{"to":"a@b"}'
        blob = next(r for r in rows if r.get("job") == ids["dead"] and r["type"] == "enqueue")
        assert blob["payload_kind"] == "bytes" and blob["payload"] == "000102"
        fail = next(r for r in rows if r["type"] == "fail" and r["dead"])
        assert fail["task"] == "resize" and fail["attempt"] == 1
        assert fail["error"].startswith("ValueError: bad\nTraceback")
        ack = next(r for r in rows if r["type"] == "ack")
        assert ack["job"] == ids["done"] and ack["task"] == "mail"
        json.loads(json.dumps(rows))  # plain data

    def test_filters_select_by_job_task_type_and_range(self, qdir: str) -> None:
        """--job, --task, --type and a SEG:OFF range each narrow the rows."""
        ids = varied(qdir)
        by_job = list(ops_dump.dump(qdir, ops_dump.DumpFilter(job=ids["dead"])))
        assert [r["type"] for r in by_job] == ["enqueue", "claim", "fail"]
        by_task = list(ops_dump.dump(qdir, ops_dump.DumpFilter(task="resize")))
        assert {r["job"] for r in by_task} == {ids["dead"], ids["running"]}
        assert {r["type"] for r in by_task} == {"enqueue", "claim", "fail"}
        acks = list(ops_dump.dump(qdir, ops_dump.DumpFilter(types=frozenset({"ack", "fail"}))))
        assert sorted(r["type"] for r in acks) == ["ack", "fail", "fail"]
        rows = list(ops_dump.dump(qdir))
        lo, hi = (1, rows[1]["offset"]), (1, rows[3]["offset"])
        window = list(ops_dump.dump(qdir, ops_dump.DumpFilter(start=lo, end=hi)))
        assert [r["offset"] for r in window] == [rows[1]["offset"], rows[2]["offset"]]

    def test_a_filter_refuses_an_unknown_type(self) -> None:
        """A misspelt --type is an ArgumentError naming the valid ones."""
        with pytest.raises(walq.ArgumentError, match="unknown record type akc"):
            ops_dump.DumpFilter(types=frozenset({"akc"}))

    def test_positions_take_numbers_or_file_names(self) -> None:
        """SEG:OFF, a bare SEG, and a segment file name all parse; junk does not."""
        assert ops_dump.parse_position("3:4096") == (3, 4096)
        assert ops_dump.parse_position("7") == (7, 0)
        assert ops_dump.parse_position("000000000000000a.wal:0x10") == (10, 16)
        for bad in ("x:1", "1:y", "-1:0", ""):
            with pytest.raises(walq.ArgumentError):
                ops_dump.parse_position(bad)

    def test_damage_is_a_row_and_the_dump_goes_on(self, qdir: str) -> None:
        """A damaged record in a sealed segment is reported with offset, length and hex."""
        with walq.Queue.open(qdir, segment_size=SMALL, compaction=False) as q:
            q.enqueue_many([("mail", {"i": i}) for i in range(150)])
        first = segments(qdir)[0]
        offset = record_offsets(first)[3]
        flip(first, offset + 20)
        rows = list(ops_dump.dump(qdir))
        damage = [r for r in rows if r["type"] == "damage"]
        assert len(damage) == 1 and damage[0]["offset"] == offset
        assert damage[0]["length"] > 0 and damage[0]["reason"] == "checksum mismatch"
        assert bytes.fromhex(damage[0]["hex"]) == first.read_bytes()[offset : offset + 32]
        enqueued = [r["job"] for r in rows if r["type"] == "enqueue"]
        assert len(enqueued) == 149 and 4 not in enqueued and 150 in enqueued

    def test_an_unfinished_tail_is_a_tail_not_damage(self, qdir: str) -> None:
        """Garbage after the last record of the newest segment reads as a torn tail."""
        varied(qdir)
        (seg,) = segments(qdir)
        end = record_offsets(seg)[-1] + 100
        data = bytearray(seg.read_bytes())
        data[end : end + 30] = b"\x07" * 30
        seg.write_bytes(bytes(data))
        rows = list(ops_dump.dump(qdir))
        assert rows[-1]["type"] == "torn-tail" and rows[-1]["length"] >= 30
        assert not [r for r in rows if r["type"] == "damage"]

    def test_a_damaged_segment_header_is_a_row_at_offset_0(self, qdir: str) -> None:
        """A foreign write over a header: one damage row for the segment, the others read."""
        with walq.Queue.open(qdir, segment_size=SMALL, compaction=False) as q:
            q.enqueue_many([("mail", {"i": i}) for i in range(150)])
        flip(segments(qdir)[0], 3)
        rows = list(ops_dump.dump(qdir))
        assert rows[0]["type"] == "damage" and rows[0]["offset"] == 0
        assert "bad magic" in rows[0]["reason"]
        assert any(r["type"] == "enqueue" for r in rows[1:])

    def test_reading_a_directory_that_is_not_a_queue_says_so(self, tmp_path: Path) -> None:
        """A missing directory and one without segments are NotAQueueError."""
        with pytest.raises(walq.NotAQueueError, match="no such directory"):
            list(ops_dump.dump(str(tmp_path / "nope")))
        (tmp_path / "other.txt").write_text("x")
        with pytest.raises(walq.NotAQueueError, match="not a walq queue"):
            list(ops_dump.dump(str(tmp_path)))


# -- follow --------------------------------------------------------------------------------


def take(rows: Iterator[dict[str, Any]], until: Callable[[list[dict[str, Any]]], bool],
         timeout: float = 10.0) -> list[dict[str, Any]]:  # fmt: skip
    """Rows from a follow until `until(rows)` holds (or fail after `timeout`)."""
    got: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    for row in rows:
        got.append(row)
        if until(got):
            return got
        assert time.monotonic() < deadline, f"follow stalled after {len(got)} rows"
    return got


class TestFollow:
    """follow: new records of a live queue as they come, across rolls and compactions."""

    def test_new_records_appear_across_segment_rolls(self, qdir: str) -> None:
        """Jobs enqueued by a live owner after the dump all appear once, in order."""
        q = walq.Queue.open(qdir, segment_size=SMALL, compaction=False)
        try:
            q.enqueue("mail", {"i": -1})
            dumper = ops_dump.Dumper()
            list(dumper.rows(qdir))
            done = threading.Event()

            def produce() -> None:
                for i in range(300):
                    q.enqueue("mail", {"i": i})
                done.set()

            threading.Thread(target=produce, daemon=True).start()
            stop = threading.Event()
            rows = ops_follow.follow(qdir, dumper.end, dumper=dumper, poll=0.005, stop=stop.is_set)
            got = take(rows, lambda got: len(got) >= 300)
            stop.set()
        finally:
            q.close()
        assert [r["payload"] for r in got] == [json.dumps({"i": i}).replace(" ", "")
                                               for i in range(300)]  # fmt: skip
        assert len(segments(qdir)) > 3  # it rolled while we followed

    def test_stop_ends_the_follow(self, qdir: str) -> None:
        """With nothing new, follow polls until stop() is true and then returns."""
        varied(qdir)
        dumper = ops_dump.Dumper()
        list(dumper.rows(qdir))
        polls: list[float] = []

        def sleep(seconds: float) -> None:
            polls.append(seconds)

        rows = list(
            ops_follow.follow(qdir, dumper.end, poll=0.5, stop=lambda: len(polls) >= 3, sleep=sleep)
        )
        assert rows == [] and polls == [0.5, 0.5, 0.5]

    def test_an_idle_queue_is_watched_with_stat_not_reread(self, qdir: str) -> None:
        """Nothing new: follow stats the active segment instead of reading it again."""
        read: list[int] = []

        class CountingFile(OsFile):
            __slots__ = ()

            def pread(self, size: int, offset: int) -> bytes:
                data = super().pread(size, offset)
                read.append(len(data))
                return data

        class Counting(OsFileSystem):
            def open(self, path: str, *, write: bool = False, create: bool = False) -> File:
                assert not write and not create
                return CountingFile(path, open_fd(path, os.O_RDONLY))

        q = walq.Queue.open(qdir, segment_size=8 << 20, compaction=False)
        try:
            q.enqueue("mail", {"i": 0})
            active = segments(qdir)[-1]
            assert active.stat().st_size == 8 << 20  # preallocated: mostly zeros
            os.utime(active, ns=(time.time_ns() - 10**10,) * 2)  # last written 10 s ago
            dumper = ops_dump.Dumper()
            list(dumper.rows(qdir))
            polls: list[float] = []
            rows = ops_follow.follow(
                qdir, dumper.end, dumper=dumper, fs=Counting(), poll=0.25,
                stop=lambda: len(polls) >= 50, sleep=polls.append,
            )  # fmt: skip
            assert list(rows) == []
            assert sum(read) <= 2 * ops_follow.CHUNK + 4096  # not 50 x 8 MiB
            polls.clear()
            q.enqueue("mail", {"i": 1})  # the file changes: the new record is read
            rows = ops_follow.follow(
                qdir, dumper.end, dumper=dumper, fs=Counting(), poll=0.25,
                stop=lambda: len(polls) >= 3, sleep=polls.append,
            )  # fmt: skip
            assert [r["payload"] for r in rows if r["type"] == "enqueue"] == ['{"i":1}']
        finally:
            q.close()

    def test_a_compaction_behind_the_follower_is_announced(self, qdir: str) -> None:
        """Segments compacted before the follower reached them: a notice, then their jobs."""
        with walq.Queue.open(qdir, segment_size=SMALL, compaction=False) as q:
            ids = q.enqueue_many([("mail", {"i": i}) for i in range(200)])
            for jid in ids[:150]:
                q.claim()
                q.ack(jid)
            q.compact()
        assert not (Path(qdir) / fmt.segment_name(1)).exists()
        start = ops_dump.LogEnd(1, fmt.SEGMENT_HEADER_SIZE, 1)
        got = take(ops_follow.follow(qdir, start, poll=0.01), lambda got: len(got) >= 2)
        assert got[0]["type"] == "notice" and "compacted" in got[0]["text"]
        assert got[1]["type"] in ("job", "meta")


# -- stats ------------------------------------------------------------------------------------


class TestStats:
    """stats: the queue's numbers rebuilt read-only, beside an owner or without one."""

    def test_numbers_match_the_owners_own(self, qdir: str) -> None:
        """Counts by state and task, next id and live bytes equal Queue.stats()."""
        varied(qdir)
        with walq.Queue.open(qdir, compaction=False) as q:
            job = q.claim()
            assert job is not None
            own = q.stats()
            read = ops_stats.directory_stats(qdir)
        for key in ("pending", "scheduled", "running", "dead", "unfinished", "next_id", "bytes"):
            assert read[key] == own[key], key
        assert read["tasks"] == own["tasks"]
        assert read["owner"] == {"running": True, "pid": os.getpid()}

    def test_without_an_owner_running_jobs_count_as_interrupted_pending(self, qdir: str) -> None:
        """No owner: a job left running is pending (its attempt counted), and says so."""
        ids = varied(qdir)
        st = ops_stats.directory_stats(qdir)
        assert st["owner"]["running"] is False
        assert (st["pending"], st["scheduled"], st["running"], st["dead"]) == (2, 1, 0, 1)
        assert st["interrupted"] == 1
        assert st["oldest_pending_job"] == ids["running"]
        assert 0 <= st["oldest_pending_age"] < 60
        assert 3500 < st["next_due_in"] <= 3600
        assert st["done_in_log"] == 1 and st["damaged"] == 0
        assert st["breakers"] == "unknown" and st["worker"] is None

    def test_garbage_ratio_counts_bytes_a_compaction_would_drop(self, qdir: str) -> None:
        """All acked: nearly everything is garbage; nothing acked: little is."""
        with walq.Queue.open(qdir, compaction=False) as q:
            q.enqueue_many([("mail", {"i": i}) for i in range(50)])
        assert ops_stats.directory_stats(qdir)["garbage_ratio"] == 0.0
        with walq.Queue.open(qdir, compaction=False) as q:
            while (job := q.claim()) is not None:
                q.ack(job.id)
        st = ops_stats.directory_stats(qdir)
        assert st["garbage_ratio"] == 1.0 and st["bytes"] == 0
        assert st["log_bytes"] > st["segments"] * fmt.SEGMENT_HEADER_SIZE

    def test_beside_a_live_owner_it_reads_without_the_lock(self, qdir: str) -> None:
        """A writing owner in a thread: stats and dump read consistent numbers, no errors."""
        with LiveOwner(qdir, segment_size=SMALL) as owner:
            start = owner.rounds
            for _ in range(20):
                st = ops_stats.directory_stats(qdir)
                assert st["owner"]["running"] is True and st["damaged"] == 0
                assert st["running"] <= 1
                assert st["pending"] + st["scheduled"] + st["running"] == st["unfinished"]
                rows = list(ops_dump.dump(qdir))
                assert not [r for r in rows if r["type"] == "damage"]
            deadline = time.monotonic() + 10
            while owner.rounds == start and time.monotonic() < deadline:
                time.sleep(0.01)
            assert owner.rounds > start  # the owner kept writing while we read

    def test_reading_changes_nothing(self, qdir: str) -> None:
        """stats, dump, fsck and dead list leave every file as it was."""
        varied(qdir)
        before = tree(qdir)
        ops_stats.directory_stats(qdir)
        list(ops_dump.dump(qdir))
        ops_repair.fsck(qdir)
        ops_dead.dead_jobs(qdir)
        assert tree(qdir) == before

    def test_spool_and_cut_files_are_counted(self, qdir: str) -> None:
        """Producer requests waiting in spool/ and files in cut/ show in the numbers."""
        varied(qdir)
        (Path(qdir) / "spool").mkdir(exist_ok=True)  # the owner that wrote the queue made it
        (Path(qdir) / "spool" / "00000000000000000001-1-0123456789abcdef-10.job").write_bytes(b"")
        (Path(qdir) / "spool" / ".lock").write_bytes(b"")
        (Path(qdir) / "cut").mkdir()
        (Path(qdir) / "cut" / "0000000000000001.wal.100.0.torn").write_bytes(b"x")
        st = ops_stats.directory_stats(qdir)
        assert st["spooled"] == 1 and st["cut_files"] == 1


class TestWorkerStatus:
    """The worker's status file: used when recent and not stopped, else unknown."""

    def write(self, qdir: str, **fields: Any) -> None:
        status: dict[str, Any] = {
            "pid": 1,
            "processes": 2,
            "updated": time.time(),
            "counters": {"ok": 3},
            "tasks": {"mail": {"running": 1, "breaker": "open"}},
            "stopped": False,
        }
        status.update(fields)
        Path(qdir, STATUS_FILE).write_text(json.dumps(status))

    def test_recent_status_gives_breaker_states(self, qdir: str) -> None:
        """A fresh file: breaker states per task, and the worker's age."""
        varied(qdir)
        self.write(qdir)
        st = ops_stats.directory_stats(qdir)
        assert st["breakers"] == {"mail": "open"}
        assert st["worker"]["processes"] == 2 and st["worker"]["age"] < 5

    def test_a_status_written_during_a_long_read_is_fresh(
        self, qdir: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The worker writes its status while stats replays the log: it is the worker's."""
        varied(qdir)
        real = ops_replay.replay

        def slow_replay(*args: Any, **kwargs: Any) -> Any:
            out = real(*args, **kwargs)
            self.write(qdir)  # written while the (long) replay ran
            return out

        monkeypatch.setattr(ops_stats, "replay", slow_replay)
        began = time.time() - 60.0  # the read began a minute ago
        st = ops_stats.directory_stats(qdir, now=Now(wall=began, mono=time.monotonic() - 60.0))
        assert st["worker"] is not None and st["breakers"] == {"mail": "open"}

    @pytest.mark.parametrize(
        "fields", [{"updated": 0.0}, {"stopped": True}, {"updated": "soon"}], ids=str
    )
    def test_stale_stopped_or_odd_status_is_unknown(self, qdir: str, fields: Any) -> None:
        """An old, final or malformed status file says nothing about breakers now."""
        varied(qdir)
        self.write(qdir, **fields)
        assert ops_stats.directory_stats(qdir)["breakers"] == "unknown"

    def test_unreadable_status_is_unknown(self, qdir: str) -> None:
        """A status file that is not JSON is ignored."""
        varied(qdir)
        Path(qdir, STATUS_FILE).write_text("{not json")
        assert ops_owner.worker_status(qdir) is None


@pytest.mark.skipif(not Path("/proc/locks").exists(), reason="needs Linux /proc/locks")
def test_an_owner_in_another_process_is_found_without_taking_the_lock(qdir: str) -> None:
    """/proc/locks names the process holding the queue's lock."""
    varied(qdir)
    code = "import sys, time, walq; q = walq.Queue.open(sys.argv[1]); print('ready', flush=True); time.sleep(30)"  # noqa: E501
    proc = subprocess.Popen([sys.executable, "-c", code, qdir], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        assert ops_owner.owner(qdir) == ops_owner.Owner(True, proc.pid)
        st = ops_stats.directory_stats(qdir)
        assert st["running"] == 1 and st["interrupted"] == 0  # its job is running, not lost
    finally:
        proc.kill()
        proc.wait()
    assert ops_owner.owner(qdir) == ops_owner.Owner(False)


# -- a compaction racing the reader -------------------------------------------------------------


class CompactsOnOpen(OsFileSystem):
    """Runs the owner's compaction the second time the reader opens segment `seq`."""

    def __init__(self, q: walq.Queue, seq: int) -> None:
        self.q = q
        self.name = fmt.segment_name(seq)
        self.opens = 0

    def open(self, path: str, *, write: bool = False, create: bool = False) -> File:
        if path.endswith(self.name):
            self.opens += 1
            if self.opens == 2:
                self.q.compact()
        return super().open(path, write=write, create=create)


def test_a_compaction_racing_the_reader_is_detected_and_retried(qdir: str) -> None:
    """Segments vanish mid-read: the scan notices the compacted segment and reads again."""
    q = walq.Queue.open(qdir, segment_size=SMALL, compaction=False)
    try:
        ids = q.enqueue_many([("mail", {"i": i}) for i in range(200)])
        for jid in ids[:150]:
            q.claim()
            q.ack(jid)
        own = q.stats()
        raced = list(ops_scan.iter_scans(qdir, CompactsOnOpen(q, 2)))
        assert raced[-2].raced or any(s.raced for s in raced)
        st = ops_stats.directory_stats(qdir, CompactsOnOpen(q, 3))
        assert (st["pending"], st["next_id"]) == (own["pending"], own["next_id"])
    finally:
        q.close()


# -- dead jobs and administration ---------------------------------------------------------------


class TestDeadJobs:
    """dead_jobs reads errors and payloads; requeue and purge need the lock."""

    def test_dead_jobs_carry_the_error_traceback_and_payload(self, qdir: str) -> None:
        """The stored error (with its traceback) and the payload, read-only."""
        ids = varied(qdir)
        (d,) = ops_dead.dead_jobs(qdir)
        assert d.id == ids["dead"] and d.task == "resize" and d.attempts == 1
        assert d.error.startswith("ValueError: bad\nTraceback")
        assert d.payload == b"\x00\x01\x02" and d.payload_text() == "000102"
        assert d.summary()["error"] == "ValueError: bad"
        assert d.detail()["error"] == d.error

    def test_asking_for_a_job_that_is_not_dead_is_refused(self, qdir: str) -> None:
        """An unknown id is UnknownJobError; a live one is StateError naming its state."""
        ids = varied(qdir)
        with pytest.raises(walq.UnknownJobError):
            ops_dead.dead_jobs(qdir, ids=[999])
        with pytest.raises(walq.StateError, match="scheduled, not dead"):
            ops_dead.dead_jobs(qdir, ids=[ids["scheduled"]])

    def test_dead_jobs_survive_a_compaction(self, qdir: str) -> None:
        """After compaction the error lives in the job record; it still reads the same."""
        with walq.Queue.open(qdir, segment_size=SMALL, compaction=False) as q:
            ids = q.enqueue_many([("mail", {"i": i}) for i in range(120)])
            q.claim()
            q.fail(ids[0], "it broke\ntrace", permanent=True)
            q.enqueue_many([("mail", {"i": i}) for i in range(120)])
            assert q.compact().segments_in >= 1
        (d,) = ops_dead.dead_jobs(qdir)
        assert d.id == ids[0] and d.error == "it broke\ntrace"

    def test_requeue_and_purge_without_an_owner(self, qdir: str) -> None:
        """No owner: requeue revives a dead job; purge deletes the rest."""
        ids = varied(qdir)
        assert ops_admin.requeue(qdir, [ids["dead"]]) == [ids["dead"]]
        assert ops_dead.dead_jobs(qdir) == []
        with walq.Queue.open(qdir) as q:
            assert q.status(ids["dead"]) == "pending"
            job = q.claim()
            while job is not None and job.id != ids["dead"]:
                job = q.claim()
            assert job is not None
            q.fail(job.id, "again", permanent=True)
        assert ops_admin.purge(qdir) == 1
        assert ops_dead.dead_jobs(qdir) == []

    def test_requeue_of_a_live_job_changes_nothing(self, qdir: str) -> None:
        """All or nothing: one id that is not dead refuses the whole requeue."""
        ids = varied(qdir)
        with pytest.raises(walq.StateError):
            ops_admin.requeue(qdir, [ids["dead"], ids["pending"]])
        assert [d.id for d in ops_dead.dead_jobs(qdir)] == [ids["dead"]]

    def test_administration_beside_an_owner_is_locked_out(self, qdir: str) -> None:
        """requeue, purge, compact and repair name the running owner and change nothing."""
        ids = varied(qdir)
        with walq.Queue.open(qdir, compaction=False):
            for step in (
                lambda: ops_admin.requeue(qdir, [ids["dead"]]),
                lambda: ops_admin.purge(qdir),
                lambda: ops_admin.compact(qdir),
                lambda: ops_repair.repair(qdir),
            ):
                with pytest.raises(
                    walq.LockedError, match=f"an owner is running \\(pid {os.getpid()}\\)"
                ):
                    step()
        assert [d.id for d in ops_dead.dead_jobs(qdir)] == [ids["dead"]]

    def test_administration_never_creates_a_queue(self, tmp_path: Path) -> None:
        """Queue.open would create a missing directory; the tools refuse instead."""
        missing = str(tmp_path / "typo")
        with pytest.raises(walq.NotAQueueError):
            ops_admin.requeue(missing, [1])
        with pytest.raises(walq.NotAQueueError):
            ops_admin.compact(missing)
        assert not os.path.exists(missing)

    def test_compact_reports_the_sizes_around_it(self, qdir: str) -> None:
        """An owner-less compaction: segments and bytes before and after."""
        with walq.Queue.open(qdir, segment_size=SMALL, compaction=False) as q:
            ids = q.enqueue_many([("mail", {"i": i}) for i in range(300)])
            for jid in ids[:280]:
                q.claim()
                q.ack(jid)
        steps: list[tuple[int, int]] = []
        r = ops_admin.compact(qdir, progress=lambda done, total: steps.append((done, total)))
        assert r.segments_in > 1 and r.bytes_out < r.bytes_in
        assert r.segments_after < r.segments_before and r.disk_after < r.disk_before
        assert steps and steps[-1][0] == steps[-1][1]
        assert ops_stats.directory_stats(qdir)["pending"] == 20


# -- fsck ---------------------------------------------------------------------------------------


class TestFsck:
    """fsck: problems with file and offset; warnings for what is normal after a crash."""

    def test_a_leftover_tmp_file_is_a_warning(self, qdir: str) -> None:
        """A .tmp file is an unfinished segment or compaction: deleted on open, not damage."""
        varied(qdir)
        Path(qdir, fmt.segment_name(9) + ".tmp").write_bytes(b"x")
        report = ops_repair.fsck(qdir)
        assert report.clean and any(".tmp" in w for w in report.warnings)

    def test_a_header_naming_another_segment_is_a_problem(self, qdir: str) -> None:
        """A segment file renamed by hand: its header disagrees with its name."""
        varied(qdir)
        seg = segments(qdir)[0]
        seg.rename(seg.with_name(fmt.segment_name(5)))
        report = ops_repair.fsck(qdir)
        assert not report.clean and "header says segment 1" in report.problems[0]

    def test_progress_is_reported_per_segment(self, qdir: str) -> None:
        """fsck's progress callback sees every segment."""
        with walq.Queue.open(qdir, segment_size=SMALL, compaction=False) as q:
            q.enqueue_many([("mail", {"i": i}) for i in range(200)])
        steps: list[tuple[int, int]] = []
        ops_repair.fsck(qdir, progress=lambda done, total: steps.append((done, total)))
        n = len(segments(qdir))
        assert steps == [(i, n) for i in range(1, n + 1)]
