"""Segments start small and grow with the write rate, up to segment_size."""

from __future__ import annotations

import posixpath
import time

import walq
from walq.core import format as fmt
from walq.directory import log as wal
from walq.testing.faultfs import SimFileSystem

MIB = 1 << 20


def open_sim(fs: SimFileSystem, **kw: object) -> walq.Queue:
    opts: dict[str, object] = {"compaction": False, "serve": False, "min_free_bytes": 0}
    opts.update(kw)
    return walq.Queue.open("/q", fs=fs, **opts)  # type: ignore[arg-type]


def file_size(fs: SimFileSystem, seq: int) -> int:
    f = fs.open(posixpath.join("/q", fmt.segment_name(seq)))
    try:
        return f.size()
    finally:
        f.close()


def test_a_new_queue_preallocates_one_small_segment_not_segment_size() -> None:
    fs = SimFileSystem()
    q = open_sim(fs)  # segment_size 32 MiB
    q.enqueue("t", {"a": 1})
    assert file_size(fs, 1) == wal.MIN_SEGMENT
    assert q.stats()["disk_bytes"] == wal.MIN_SEGMENT
    q.close()


def test_segments_that_fill_fast_grow_to_segment_size() -> None:
    fs = SimFileSystem()
    q = open_sim(fs, segment_size=4 * MIB, sync="never")
    payload = b"x" * 60_000
    while q._log.active_seq < 5:
        q.enqueue_many([("t", payload)] * 8)
    # 1, 2, 4, 4 MiB: each filled in far less than SEGMENT_SECONDS, and grows at most 2x.
    for seq, size in zip((1, 2, 3, 4), (MIB, 2 * MIB, 4 * MIB, 4 * MIB), strict=True):
        assert size - 61_000 <= file_size(fs, seq) <= size  # sealed: cut at its last record
    assert file_size(fs, 5) == 4 * MIB  # the active one, preallocated whole
    assert q._log._capacity == 4 * MIB
    q.close()


def test_a_segment_that_fills_slowly_makes_the_next_one_smaller() -> None:
    fs = SimFileSystem()
    q = open_sim(fs, segment_size=8 * MIB, sync="never")
    log = q._log
    with log._mu:
        log._capacity = 4 * MIB
        log._end = 2 * MIB
        log._started -= 600  # half full after ten minutes: at most half the size
        assert log._next_capacity() == 2 * MIB
        log._started -= 10**6
        log._capacity = wal.MIN_SEGMENT
        assert log._next_capacity() == wal.MIN_SEGMENT  # never below the floor
        log._capacity, log._started = 2 * MIB, time.monotonic() - 1.0  # 2 MiB in one second
        assert log._next_capacity() == 4 * MIB  # 8 MiB would last SEGMENT_SECONDS: 2x at most
        log._end, log._started = 1024 + fmt.SEGMENT_HEADER_SIZE, time.monotonic() - 1.0
        assert log._next_capacity() == MIB  # 1 KiB/s: half
        log._capacity, log._end = 4 * MIB, fmt.SEGMENT_HEADER_SIZE
    q.close()


def test_a_reopened_queue_keeps_its_active_segments_size() -> None:
    fs = SimFileSystem()
    q = open_sim(fs, segment_size=4 * MIB, sync="never")
    while q._log.active_seq < 3:
        q.enqueue_many([("t", b"x" * 60_000)] * 8)
    size = file_size(fs, 3)
    q.close()
    q = open_sim(fs, segment_size=4 * MIB)
    assert q._log._capacity == size
    jobs = q.claim_many(10_000, lease=60)
    assert jobs and all(j.payload == b"x" * 60_000 for j in jobs)
    q.close()


def test_a_small_segment_size_is_its_own_floor() -> None:
    fs = SimFileSystem()
    q = open_sim(fs, segment_size=64 * 1024)
    q.enqueue("t", 1)
    assert file_size(fs, 1) == 64 * 1024
    q.close()
