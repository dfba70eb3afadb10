"""The spare segment: the next segment is made ahead of the roll, and never mistaken for data."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

import walq
from walq.core import format as fmt
from walq.directory.segment import Segment
from walq.testing.faultfs import SimFileSystem, SimulatedCrash

SEG = 1 << 16
PAYLOAD = b"p" * 1000


def open_sim(fs: SimFileSystem) -> walq.Queue:
    return walq.Queue.open("/q", fs=fs, segment_size=SEG, compaction=False, serve=False)


def fill_past_roll(q: walq.Queue) -> list[int]:
    """Enqueue until the log has rolled to a second segment."""
    ids = []
    while q._log.active_seq == 1:
        ids.append(q.enqueue("t", PAYLOAD))
    return ids


def spares(fs: SimFileSystem) -> list[str]:
    return [n for n in fs.listdir("/q") if n.endswith(".spare")]


def test_a_roll_renames_the_prepared_spare(monkeypatch: pytest.MonkeyPatch) -> None:
    """With a spare ready, the roll creates no segment: it renames the spare into place."""
    fs = SimFileSystem()
    q = open_sim(fs)
    assert q._log.prepare_spare()
    assert spares(fs) == [fmt.segment_name(2) + ".spare"]
    assert not q._log.prepare_spare()  # already made for the coming roll

    def no_create(*args: object, **kwargs: object) -> Segment:
        raise AssertionError("the roll created a segment although a spare was ready")

    monkeypatch.setattr(Segment, "create", no_create)
    ids = fill_past_roll(q)
    assert spares(fs) == []
    assert fmt.segment_name(2) in fs.listdir("/q")
    ids.append(q.enqueue("t", PAYLOAD))
    monkeypatch.undo()
    q.close()
    with open_sim(fs) as q2:
        assert {q2.status(i) for i in ids} == {"pending"}


def test_without_a_spare_the_roll_creates_the_segment() -> None:
    """No spare (no compactor thread): the roll makes the next segment itself."""
    fs = SimFileSystem()
    with open_sim(fs) as q:
        ids = fill_past_roll(q)
        assert spares(fs) == []
    with open_sim(fs) as q2:
        assert {q2.status(i) for i in ids} == {"pending"}


def test_a_spare_made_for_a_roll_that_came_first_is_replaced() -> None:
    """A spare for a segment number already in use is deleted, never installed."""
    fs = SimFileSystem()
    with open_sim(fs) as q:
        assert q._log.prepare_spare()  # for segment 2
        q._log.spare.segment, stale = None, q._log.spare.segment  # a roll that did not see it
        ids = fill_past_roll(q)
        q._log.spare.segment = stale  # now stale: segment 2 is the active one
        assert q._log.prepare_spare()  # for segment 3, discarding the stale one
        assert spares(fs) == [fmt.segment_name(3) + ".spare"]
        assert q._log.spare.segment is not None and q._log.spare.segment.seq == 3
    with open_sim(fs) as q2:
        assert {q2.status(i) for i in ids} == {"pending"}


def test_close_deletes_the_spare() -> None:
    """A closed queue leaves no spare segment behind."""
    fs = SimFileSystem()
    q = open_sim(fs)
    q._log.prepare_spare()
    q.close()
    assert spares(fs) == []


def test_open_deletes_a_spare_left_by_a_crash() -> None:
    """kill -9 with a spare on disk: open deletes it and the next roll makes a good segment."""
    fs = SimFileSystem()
    q = open_sim(fs)
    ids = [q.enqueue("t", PAYLOAD) for _ in range(3)]
    q._log.prepare_spare()
    disk = fs.crash(mode="clean")
    assert spares(disk) == [fmt.segment_name(2) + ".spare"]
    with open_sim(disk) as q2:
        assert spares(disk) == []
        ids += fill_past_roll(q2)
    with open_sim(disk) as q3:
        assert {q3.status(i) for i in ids} == {"pending"}


def test_a_power_cut_during_or_after_a_spare_loses_nothing() -> None:
    """Power loss at each file-system call of making and installing a spare: no durable job lost."""
    fs = SimFileSystem()
    q = open_sim(fs)
    q.enqueue("t", PAYLOAD)
    start = fs.calls
    q._log.prepare_spare()
    fill_past_roll(q)
    q.enqueue("t", PAYLOAD)
    q.close()
    calls = fs.calls - start
    assert calls > 5
    for at in range(start, start + calls):
        fs = SimFileSystem()
        q = open_sim(fs)
        durable = [q.enqueue("t", PAYLOAD)]
        fs.crash_at_call(at)
        try:
            q._log.prepare_spare()
            while True:
                durable.append(q.enqueue("t", PAYLOAD))
                if q._log.active_seq > 1:
                    break
            durable.append(q.enqueue("t", PAYLOAD))
        except (SimulatedCrash, walq.WalqError):
            pass
        disk = fs.crash([False] * fs.choice_count())  # only what was synced survives
        with open_sim(disk) as q2:
            assert all(q2.status(i) == "pending" for i in durable), at
            assert spares(disk) == []


def test_the_compactor_thread_prepares_the_spare_once_half_full(tmp_path: Path) -> None:
    """On a real disk, the background thread makes the spare once the active one is half full."""
    qdir = str(tmp_path / "q")
    with walq.Queue.open(qdir, segment_size=SEG, serve=False) as q:
        spare = tmp_path / "q" / (fmt.segment_name(2) + ".spare")
        q.enqueue_many([("t", PAYLOAD)] * 10)  # under half
        time.sleep(0.2)
        assert not spare.exists()
        q.enqueue_many([("t", PAYLOAD)] * 30)  # past half
        # The file appears before it is preallocated: wait for the log to hold it made.
        deadline = time.monotonic() + 30
        while q._log.spare.segment is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert spare.exists()
        assert spare.stat().st_size == SEG
        ids = q.enqueue_many([("t", PAYLOAD)] * 40)  # rolls onto the spare
        assert not spare.exists()
        assert (tmp_path / "q" / fmt.segment_name(2)).exists()
    assert not list((tmp_path / "q").glob("*.spare"))
    with walq.Queue.open(qdir, segment_size=SEG, serve=False) as q2:
        assert {q2.status(i) for i in ids} == {"pending"}


def test_a_full_disk_while_making_the_spare_leaves_no_partial_file() -> None:
    """ENOSPC half-way through the spare: it is removed, and the queue goes on writing."""
    fs = SimFileSystem(capacity=SEG + SEG // 2, reported_free=1 << 40)
    with open_sim(fs) as q:
        ids = [q.enqueue("t", PAYLOAD) for _ in range(3)]
        assert not q._log.prepare_spare()
        assert spares(fs) == []
        ids.append(q.enqueue("t", PAYLOAD))
    with open_sim(fs) as q2:
        assert {q2.status(i) for i in ids} == {"pending"}
