"""The log's group commit: concurrent callers share fsyncs, and a failure reaches them all."""

from __future__ import annotations

import errno
import threading

import pytest

import walq
from walq.testing.faultfs import SimFileSystem


def produce_concurrently(q: walq.Queue, threads: int = 16, each: int = 40) -> list[int]:
    ids: list[int] = []
    lock = threading.Lock()

    def produce() -> None:
        for i in range(each):
            jid = q.enqueue("t", {"i": i})
            with lock:
                ids.append(jid)

    workers = [threading.Thread(target=produce) for _ in range(threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    return ids


def test_concurrent_enqueues_share_fsyncs(qdir: str) -> None:
    """16 threads on a real disk: far fewer fsyncs than enqueues (group commit)."""
    with walq.Queue.open(qdir, compaction=False) as q:
        before = q.stats()["fsyncs"]
        ids = produce_concurrently(q)
        assert len(set(ids)) == 640
        assert q.stats()["fsyncs"] - before < 640 * 0.7


def test_concurrent_enqueues_survive_a_power_cut() -> None:
    """16 threads; a power cut keeping only synced data afterwards loses no returned job."""
    fs = SimFileSystem()
    q = walq.Queue.open("/q", fs=fs, segment_size=1 << 16, compaction=False, serve=False)
    ids = produce_concurrently(q)
    disk = fs.crash([False] * fs.choice_count())  # keep only what was synced
    with walq.Queue.open("/q", fs=disk, segment_size=1 << 16, serve=False) as q2:
        assert {q2.status(i) for i in ids} == {"pending"}


def test_an_fsync_failure_reaches_every_waiting_caller() -> None:
    """When the leader's fsync fails, every parked caller gets LogFailedError; none hangs."""
    fs = SimFileSystem()
    q = walq.Queue.open("/q", fs=fs, segment_size=1 << 16, compaction=False, serve=False)
    q.enqueue("t", 0)
    fs.inject("sync", errno.EIO, path=".wal", times=None)
    errors: list[BaseException] = []

    def produce() -> None:
        try:
            q.enqueue("t", 1)
        except walq.LogFailedError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=produce) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
        assert not t.is_alive()
    assert len(errors) == 8
    with pytest.raises(walq.LogFailedError, match="fsync of /q/"):
        q.enqueue("t", 2)
