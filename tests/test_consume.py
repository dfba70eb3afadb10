"""The consume path: batched claims read records in runs, build each job once, keep the counts."""

from __future__ import annotations

import posixpath
from typing import Any

import attrs
from crc32c import crc32c

import walq
from walq.core import format as fmt
from walq.core.job import Job
from walq.directory.fs import File
from walq.testing.faultfs import SimFileSystem

QDIR = "/q"


def sim_queue(fs: SimFileSystem, **kw: Any) -> walq.Queue:
    opts: dict[str, Any] = {"compaction": False, "min_free_bytes": 0, "serve": False}
    opts.update(kw)
    return walq.Queue.open(QDIR, fs=fs, **opts)


class CountingFile:
    """A read handle that counts its preads."""

    def __init__(self, f: File, counts: list[int]) -> None:
        self._f = f
        self._counts = counts
        self.path = f.path

    def pread(self, size: int, offset: int) -> bytes:
        self._counts.append(size)
        return self._f.pread(size, offset)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._f, name)


def count_preads(q: walq.Queue) -> list[int]:
    """Make `q`'s read handles count their preads; the list they append each read's size to."""
    counts: list[int] = []
    readers = q._readers
    handle = readers.handle

    def counting(seg: int) -> Any:
        return CountingFile(handle(seg), counts)

    readers.handle = counting  # type: ignore[method-assign]
    return counts


def test_claim_many_reads_a_batch_enqueued_together_with_one_pread() -> None:
    fs = SimFileSystem()
    q = sim_queue(fs)
    ids = q.enqueue_many([("t", {"n": i}) for i in range(50)])
    preads = count_preads(q)
    jobs = q.claim_many(50, lease=60)
    assert [j.id for j in jobs] == ids
    assert [j.payload for j in jobs] == [{"n": i} for i in range(50)]
    assert all(j.attempt == 1 and j.task == "t" for j in jobs)
    assert len(preads) == 1
    q.close()


def test_a_run_that_ends_in_the_unwritten_buffer_reads_both_parts() -> None:
    """Records in the file, then records appended but not yet committed (sync=False)."""
    fs = SimFileSystem()
    q = sim_queue(fs)
    first = q.enqueue_many([("t", i) for i in range(5)])
    second = q.enqueue_many([("t", i) for i in range(5, 10)], sync=False)
    jobs = q.claim_many(10, lease=60)
    assert [j.id for j in jobs] == first + second
    assert [j.payload for j in jobs] == list(range(10))
    q.close()


def test_a_forged_record_in_the_middle_of_a_run_is_dead_lettered_and_the_rest_delivered() -> None:
    fs = SimFileSystem()
    q = sim_queue(fs)
    ids = q.enqueue_many([("t", {"a": i}) for i in range(3)])
    q.close()
    path = posixpath.join(QDIR, fmt.segment_name(1))
    data = bytearray(fs.files()[path])
    at = fmt.SEGMENT_HEADER_SIZE
    at += fmt.RECORD_HEADER_SIZE + int.from_bytes(data[at + 4 : at + 8], "little")  # the second
    end = at + fmt.RECORD_HEADER_SIZE + int.from_bytes(data[at + 4 : at + 8], "little")
    data[end - 1] = ord("]")  # {"a":1] -- the checksum recomputed: a foreign write
    data[at : at + 4] = crc32c(bytes(data[at + 4 : end])).to_bytes(4, "little")
    fs.remove(path)
    f = fs.open(path, create=True)
    f.pwrite(bytes(data), 0)
    f.close()
    fs.sync_all()
    q = sim_queue(fs)
    jobs = q.claim_many(3, lease=60)
    assert [j.id for j in jobs] == [ids[0], ids[2]]
    assert q.status(ids[1]) == "dead"
    assert "[damaged]" in q.dead_jobs()[0].error
    q.close()


def test_plain_damage_in_a_run_is_dead_lettered_not_delivered() -> None:
    fs = SimFileSystem()
    q = sim_queue(fs)
    ids = q.enqueue_many([("t", "x" * 100) for _ in range(4)])
    loc = q._state.info(ids[2]).loc
    f = fs.open(posixpath.join(QDIR, fmt.segment_name(1)), write=True)
    f.pwrite(b"!", loc.offset + loc.size - 3)  # a payload byte: the checksum fails
    f.close()
    jobs = q.claim_many(4, lease=60)
    assert [j.id for j in jobs] == [ids[0], ids[1], ids[3]]
    assert q.status(ids[2]) == "dead"
    q.close()


def test_batched_claim_and_ack_keep_the_counts_and_survive_a_reopen() -> None:
    fs = SimFileSystem()
    q = sim_queue(fs)
    q.enqueue_many([("a", i) for i in range(6)] + [("b", i) for i in range(4)])
    jobs = q.claim_many(7, lease=60)
    stats = q.stats()
    assert (stats["pending"], stats["running"]) == (3, 7)
    tasks = q._state.task_counts()
    assert (tasks["a"].running, tasks["a"].pending, tasks["b"].running) == (6, 0, 1)
    size = q._state.live_bytes
    refused = q.ack_many([j.id for j in jobs[:5]] + [10], strict=False)  # job 10 is pending
    assert [jid for jid, _ in refused] == [10]
    stats = q.stats()
    assert (stats["pending"], stats["running"]) == (3, 2)
    assert q._state.live_bytes == size * 5 // 10  # the records are all the same size
    assert q._state.task_counts()["a"].running == 1
    q.close()
    q = sim_queue(fs)
    stats = q.stats()
    assert (stats["pending"], stats["running"]) == (5, 0)  # the unacked two came back
    again = q.claim_many(10, lease=60)
    assert {j.id for j in again} == {j.id for j in jobs[5:]} | set(range(8, 11))
    assert {j.attempt for j in again if j.id in {x.id for x in jobs[5:]}} == {2}
    q.close()


def test_a_jobs_fields_are_every_field_and_rebuild_it() -> None:
    """What the worker pool sends a worker process: Job(**job.fields()) is the job."""
    job = Job(id=3, task="t", payload={"a": [1]}, attempt=2, key="k", priority=-1,
              max_attempts=5, enqueued_at=1.5)  # fmt: skip
    assert job.fields() == attrs.asdict(job, recurse=False)
    assert Job(**job.fields()) == job
