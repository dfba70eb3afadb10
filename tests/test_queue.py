"""The Queue API: every operation, its errors, and what survives a reopen."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import pytest

import walq
from walq.core.state import Now


class FakeClock:
    """Wall and monotonic clocks that only move when told."""

    def __init__(self) -> None:
        self.wall = 1_700_000_000.0
        self.mono = 1000.0

    def __call__(self) -> Now:
        return Now(self.wall, self.mono)

    def advance(self, seconds: float) -> None:
        self.wall += seconds
        self.mono += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def open_q(path: str, clock: FakeClock | None = None, **kw: object) -> walq.Queue:
    kw.setdefault("segment_size", 64 * 1024)
    return walq.Queue.open(path, clock=clock, **kw)  # type: ignore[arg-type]


def test_enqueue_claim_ack_round_trip(qdir: str) -> None:
    """A job goes pending -> running -> done, and keeps its task, payload and key."""
    with open_q(qdir) as q:
        jid = q.enqueue("send", {"to": "a@b"}, key="k1")
        assert q.status(jid) == "pending"
        job = q.claim()
        assert job is not None
        assert (job.id, job.task, job.payload, job.attempt, job.key) == (
            jid,
            "send",
            {"to": "a@b"},
            1,
            "k1",
        )
        assert q.status(jid) == "running"
        q.ack(jid)
        assert q.status(jid) == "done"
        assert q.claim() is None


def test_ids_are_unique_and_increasing_across_reopen(qdir: str) -> None:
    """Job ids never repeat, even after every job finished and the queue reopened."""
    with open_q(qdir) as q:
        first = [q.enqueue("t", i) for i in range(3)]
        for _ in first:
            job = q.claim()
            assert job is not None
            q.ack(job.id)
    with open_q(qdir) as q:
        later = q.enqueue("t", 9)
    assert first == sorted(first) and later > max(first)


def test_bytes_payloads_stay_bytes(qdir: str) -> None:
    """A bytes payload comes back as the same bytes, not JSON."""
    with open_q(qdir) as q:
        q.enqueue("blob", b"\x00\xffdata")
        job = q.claim()
        assert job is not None and job.payload == b"\x00\xffdata"


def test_unserialisable_and_oversized_payloads_are_refused(qdir: str) -> None:
    """A payload that is not JSON or bytes, or too big, raises PayloadError and writes nothing."""
    with open_q(qdir, max_payload=1000) as q:
        with pytest.raises(walq.PayloadError, match="neither bytes nor a JSON"):
            q.enqueue("t", object())
        with pytest.raises(walq.PayloadError, match="exceeds max_payload"):
            q.enqueue("t", b"x" * 1001)
        with pytest.raises(walq.PayloadError):
            q.enqueue("t", float("nan"))
        assert q.stats()["unfinished"] == 0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"priority": 1 << 20}, "priority"),
        ({"delay": -1}, "delay"),
        ({"delay": float("inf")}, "delay"),
        ({"max_attempts": -2}, "max_attempts"),
        ({"key": 5}, "key"),
    ],
)
def test_bad_arguments_raise_argument_error(
    qdir: str, kwargs: dict[str, object], match: str
) -> None:
    """Out-of-range arguments raise ArgumentError (a WalqError and a ValueError)."""
    with open_q(qdir) as q, pytest.raises(walq.ArgumentError, match=match):
        q.enqueue("t", 1, **kwargs)  # type: ignore[arg-type]
    assert issubclass(walq.ArgumentError, ValueError)


def test_empty_task_name_is_refused(qdir: str) -> None:
    """A task name must be a non-empty string."""
    with open_q(qdir) as q, pytest.raises(walq.ArgumentError, match="task"):
        q.enqueue("", 1)


def test_key_coalesces_while_the_job_is_unfinished(qdir: str) -> None:
    """A second enqueue with the same key returns the first job until it finishes."""
    with open_q(qdir) as q:
        a = q.enqueue("t", 1, key="k")
        assert q.enqueue("t", 2, key="k") == a
        assert (
            q.enqueue_many(
                [("t", 3, {"key": "k"}), ("t", 4, {"key": "j"}), ("t", 5, {"key": "j"})]
            )[0]
            == a
        )
        job = q.claim()
        assert job is not None and job.id == a
        assert q.enqueue("t", 6, key="k") == a  # still running
        q.ack(a)
        assert q.enqueue("t", 7, key="k") != a


def test_key_coalescing_survives_reopen(qdir: str) -> None:
    """The key index is rebuilt from the log."""
    with open_q(qdir) as q:
        a = q.enqueue("t", 1, key="durable")
    with open_q(qdir) as q:
        assert q.enqueue("t", 2, key="durable") == a
        assert q.stats()["coalesced"] == 1


def test_enqueue_many_returns_ids_in_order(qdir: str) -> None:
    """Batch enqueue assigns consecutive ids in item order."""
    with open_q(qdir) as q:
        ids = q.enqueue_many([("t", i) for i in range(50)])
        assert ids == list(range(ids[0], ids[0] + 50))
        got = [q.claim() for _ in range(50)]
        assert [j.payload for j in got if j] == list(range(50))


def test_priority_orders_claims_then_fifo(qdir: str) -> None:
    """Higher priority first; equal priority in enqueue order."""
    with open_q(qdir) as q:
        low = q.enqueue("t", "low", priority=-1)
        a = q.enqueue("t", "a")
        high = q.enqueue("t", "high", priority=5)
        b = q.enqueue("u", "b")
        order = []
        while (job := q.claim()) is not None:
            order.append(job.id)
        assert order == [high, a, b, low]


def test_delayed_job_is_scheduled_until_due(qdir: str, clock: FakeClock) -> None:
    """A delayed job is not claimable before its delay passes."""
    with open_q(qdir, clock) as q:
        jid = q.enqueue("t", 1, delay=30)
        assert q.status(jid) == "scheduled"
        assert q.claim() is None
        clock.advance(29.9)
        assert q.claim() is None
        clock.advance(0.2)
        job = q.claim()
        assert job is not None and job.id == jid


def test_scheduled_job_survives_reopen_with_its_due_time(qdir: str, clock: FakeClock) -> None:
    """A delay is kept in wall time across a restart."""
    with open_q(qdir, clock) as q:
        jid = q.enqueue("t", 1, delay=60)
    clock.advance(30)
    with open_q(qdir, clock) as q:
        assert q.status(jid) == "scheduled"
        clock.advance(31)
        assert q.status(jid) == "pending"


def test_lease_expiry_returns_job_and_rejects_the_late_result(qdir: str, clock: FakeClock) -> None:
    """An expired lease puts the job back; the old attempt's ack then raises LeaseLost."""
    with open_q(qdir, clock) as q:
        jid = q.enqueue("t", 1)
        job = q.claim(lease=10)
        assert job is not None
        clock.advance(11)
        assert q.status(jid) == "pending"
        again = q.claim(lease=10)
        assert again is not None and again.attempt == 2
        with pytest.raises(walq.LeaseLost, match="attempt 2, not 1"):
            q.ack(jid, attempt=job.attempt)
        q.ack(jid, attempt=again.attempt)
        assert q.status(jid) == "done"
        with pytest.raises(walq.LeaseLost):
            q.fail(jid, "late", attempt=again.attempt)
        assert q.status(jid) == "done"


def test_leases_ignore_wall_clock_jumps(qdir: str, clock: FakeClock) -> None:
    """Leases run on monotonic time: a wall-clock jump neither expires nor extends them."""
    with open_q(qdir, clock) as q:
        jid = q.enqueue("t", 1)
        assert q.claim(lease=10) is not None
        clock.wall += 3600
        assert q.status(jid) == "running"
        clock.wall -= 7200
        clock.mono += 11
        assert q.status(jid) == "pending"


def test_extend_keeps_a_long_job_leased(qdir: str, clock: FakeClock) -> None:
    """A heartbeat moves the lease deadline."""
    with open_q(qdir, clock) as q:
        jid = q.enqueue("t", 1)
        job = q.claim(lease=10)
        assert job is not None
        clock.advance(8)
        q.extend(jid, 10, attempt=job.attempt)
        clock.advance(8)
        assert q.status(jid) == "running"
        clock.advance(3)
        assert q.status(jid) == "pending"


def test_fail_retries_then_dead_letters_after_max_attempts(qdir: str, clock: FakeClock) -> None:
    """Failures are retried with a delay and dead after max_attempts, with the error kept."""
    with open_q(qdir, clock) as q:
        jid = q.enqueue("t", {"n": 1}, max_attempts=3)
        for attempt in (1, 2, 3):
            clock.advance(1000)
            job = q.claim()
            assert job is not None and job.attempt == attempt
            outcome = q.fail(jid, f"boom {attempt}", attempt=attempt)
            assert outcome == ("dead" if attempt == 3 else "scheduled")
        assert q.status(jid) == "dead"
        (dead,) = q.dead_jobs()
        assert (dead.id, dead.attempts, dead.error, dead.payload) == (jid, 3, "boom 3", {"n": 1})
    with open_q(qdir, clock) as q:
        assert [d.error for d in q.dead_jobs()] == ["boom 3"]


def test_permanent_failure_is_dead_at_once(qdir: str) -> None:
    """permanent=True dead-letters without retrying."""
    with open_q(qdir) as q:
        jid = q.enqueue("t", 1)
        assert q.claim() is not None
        assert q.fail(jid, "bad input", permanent=True) == "dead"


def test_fail_with_explicit_delay(qdir: str, clock: FakeClock) -> None:
    """A caller-given delay (e.g. Retry-After) is honoured exactly."""
    with open_q(qdir, clock) as q:
        jid = q.enqueue("t", 1)
        assert q.claim() is not None
        q.fail(jid, "slow down", delay=42)
        clock.advance(41.9)
        assert q.claim() is None
        clock.advance(0.2)
        assert q.claim() is not None


def test_release_does_not_charge_the_attempt(qdir: str) -> None:
    """A released job's next claim has the same attempt number."""
    with open_q(qdir) as q:
        jid = q.enqueue("t", 1)
        job = q.claim()
        assert job is not None
        q.release(jid)
        again = q.claim()
        assert again is not None and again.attempt == job.attempt


def test_release_survives_reopen(qdir: str) -> None:
    """The uncharged attempt is durable too."""
    with open_q(qdir) as q:
        jid = q.enqueue("t", 1)
        assert q.claim() is not None
        q.release(jid)
    with open_q(qdir) as q:
        job = q.claim()
        assert job is not None and job.attempt == 1


def test_attempts_survive_a_crash_and_dead_letter_a_crash_looping_job(qdir: str) -> None:
    """A claim is durable before return: a job whose attempts die with the owner ends dead."""
    for attempt in (1, 2):
        q = open_q(qdir, max_attempts=2)
        if attempt == 1:
            q.enqueue("t", "poison")
        job = q.claim()
        assert job is not None and job.attempt == attempt
        q._log.close()  # the owner "dies": no ack, no fail
        q._lock_handle.release()
    with open_q(qdir, max_attempts=2) as q:
        assert q.claim() is None
        (dead,) = q.dead_jobs()
        assert "interrupted" in dead.error and dead.attempts == 2


def test_cancel_and_statuses(qdir: str) -> None:
    """cancel works on pending, scheduled and running jobs; finished ones report False."""
    with open_q(qdir) as q:
        a, b, c = q.enqueue("t", 1), q.enqueue("t", 2, delay=100), q.enqueue("t", 3)
        job = q.claim()
        assert job is not None and job.id == a
        assert q.cancel(a) and q.cancel(b)
        assert q.status(a) == "cancelled" and q.status(b) == "cancelled"
        assert q.cancel(a) is False
        with pytest.raises(walq.LeaseLost):
            q.ack(a, attempt=1)
        job = q.claim()
        assert job is not None and job.id == c
        q.ack(c)
        assert q.cancel(c) is False
    with open_q(qdir) as q:
        assert [q.status(i) for i in (a, b, c)] == ["cancelled", "cancelled", "done"]


def test_requeue_and_purge_dead_jobs(qdir: str) -> None:
    """requeue revives a dead job with fresh attempts; purge removes dead jobs."""
    with open_q(qdir) as q:
        a, b = q.enqueue("t", 1), q.enqueue("t", 2)
        for _ in range(2):
            job = q.claim()
            assert job is not None
            q.fail(job.id, "x", permanent=True)
        q.requeue(a)
        job = q.claim()
        assert job is not None and job.id == a and job.attempt == 1
        assert q.purge() == 1
        with pytest.raises(walq.UnknownJobError, match="purged"):
            q.status(b)
        with pytest.raises(walq.StateError):
            q.requeue(a)


def test_unknown_job_raises_a_key_error_subclass(qdir: str) -> None:
    """status/ack of an id never issued raises UnknownJobError (a KeyError)."""
    with open_q(qdir) as q:
        with pytest.raises(walq.UnknownJobError, match="job 99 does not exist"):
            q.status(99)
        with pytest.raises(KeyError):
            q.status(99)
        with pytest.raises(walq.UnknownJobError):
            q.ack(99)


def test_max_pending_raises_queue_full_and_waits(qdir: str) -> None:
    """At the cap, enqueue raises QueueFull, or waits up to timeout for room."""
    with open_q(qdir, max_pending=2) as q:
        q.enqueue("t", 1)
        q.enqueue("t", 2)
        with pytest.raises(walq.QueueFull, match="max_pending"):
            q.enqueue("t", 3)
        with pytest.raises(walq.QueueFull):
            q.enqueue_many([("t", 4)])
        job = q.claim()
        assert job is not None

        def ack_later() -> None:
            time.sleep(0.2)
            q.ack(job.id)

        t = threading.Thread(target=ack_later)
        t.start()
        assert q.enqueue("t", 3, timeout=5) > 0
        t.join()


def test_max_bytes_caps_live_payload_bytes(qdir: str) -> None:
    """max_bytes refuses an enqueue that would pass the cap."""
    with open_q(qdir, max_bytes=2000) as q:
        q.enqueue("t", b"x" * 900)
        with pytest.raises(walq.QueueFull, match="max_bytes"):
            q.enqueue("t", b"x" * 1200)


def test_free_disk_floor_raises_queue_full(qdir: str) -> None:
    """Below min_free_bytes on the disk, enqueue raises QueueFull."""
    with open_q(qdir, min_free_bytes=1 << 62) as q, pytest.raises(walq.QueueFull, match="free"):
        q.enqueue("t", 1)


def test_claim_waits_for_a_job(qdir: str) -> None:
    """claim(timeout=) wakes when another thread enqueues."""
    with open_q(qdir) as q:
        threading.Timer(0.1, lambda: q.enqueue("t", "late")).start()
        started = time.monotonic()
        job = q.claim(timeout=5)
        assert job is not None and job.payload == "late"
        assert time.monotonic() - started < 4


def test_claim_filters_by_task(qdir: str) -> None:
    """claim(tasks=...) only takes those tasks, leaving others pending."""
    with open_q(qdir) as q:
        q.enqueue("a", 1)
        b = q.enqueue("b", 2)
        job = q.claim(tasks=["b"])
        assert job is not None and job.id == b
        assert q.stats()["pending"] == 1


def test_claim_many_takes_a_batch_with_one_write(qdir: str) -> None:
    """claim_many returns up to n jobs, recorded by one claim record (one fsync)."""
    with open_q(qdir) as q:
        q.enqueue_many([("t", i) for i in range(10)])
        before = q.stats()["fsyncs"]
        jobs = q.claim_many(8)
        assert [j.payload for j in jobs] == list(range(8))
        assert q.stats()["fsyncs"] - before == 1
        q.ack_many([j.id for j in jobs])
        assert q.stats()["running"] == 0


def test_closed_queue_raises_closed_error(qdir: str) -> None:
    """Every operation on a closed queue raises ClosedError; close is idempotent."""
    q = open_q(qdir)
    q.close()
    q.close()
    with pytest.raises(walq.ClosedError):
        q.enqueue("t", 1)
    with pytest.raises(walq.ClosedError):
        q.claim()


def test_second_open_in_process_is_locked(qdir: str) -> None:
    """A second owner in the same process gets LockedError at once."""
    with open_q(qdir):
        started = time.monotonic()
        with pytest.raises(walq.LockedError, match="owned by another"):
            open_q(qdir)
        assert time.monotonic() - started < 1


def test_lock_timeout_waits_for_the_owner(qdir: str) -> None:
    """With lock_timeout, a second opener waits until the first closes."""
    q = open_q(qdir)
    threading.Timer(0.2, q.close).start()
    with open_q(qdir, lock_timeout=5) as q2:
        assert q2.stats()["unfinished"] == 0


def test_second_process_gets_locked_error_within_a_second(qdir: str) -> None:
    """Another process opening the directory fails fast with LockedError."""
    code = (
        "import sys, time, walq\n"
        "t = time.monotonic()\n"
        "try:\n"
        f"    walq.Queue.open({qdir!r})\n"
        "except walq.LockedError:\n"
        "    print('locked', time.monotonic() - t)\n"
    )
    with open_q(qdir):
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=False
        )
    word, seconds = out.stdout.split()
    assert word == "locked" and float(seconds) < 1.0, out.stderr


def test_directory_is_created_private(qdir: str) -> None:
    """Queue.open creates the directory with mode 0700."""
    import os
    import stat

    with open_q(qdir):
        pass
    assert stat.S_IMODE(os.stat(qdir).st_mode) == 0o700


def test_segments_roll_and_replay_in_order(qdir: str) -> None:
    """Many jobs across many small segments replay to the same state."""
    with open_q(qdir, segment_size=4096, compaction=False) as q:
        ids = q.enqueue_many([("t", {"i": i, "pad": "x" * 100}) for i in range(200)])
        for _ in range(50):
            job = q.claim()
            assert job is not None
            q.ack(job.id)
        assert q.stats()["segments"] > 5
    with open_q(qdir, segment_size=4096) as q:
        assert q.stats()["pending"] == 150
        job = q.claim()
        assert job is not None and job.id == ids[50] and job.payload["i"] == 50


@pytest.mark.parametrize("mode", ["always", "interval", "never"])
def test_sync_modes_all_persist_on_close(qdir: str, mode: str) -> None:
    """Whatever the sync mode, a clean close makes every job durable."""
    with open_q(qdir, sync=mode, sync_interval=0.01) as q:
        q.enqueue_many([("t", i) for i in range(20)])
        q.enqueue("t", 20, sync=True)
    with open_q(qdir) as q:
        assert q.stats()["pending"] == 21


def test_invalid_open_arguments(qdir: str) -> None:
    """Bad options raise ArgumentError before anything is created."""
    with pytest.raises(walq.ArgumentError, match="sync"):
        walq.Queue.open(qdir, sync="sometimes")
    with pytest.raises(walq.ArgumentError, match="recovery"):
        walq.Queue.open(qdir, recovery="yolo")


def test_concurrent_producers_and_consumers_lose_nothing(qdir: str) -> None:
    """8 producer threads and 4 consumers: every job is acked exactly once."""
    with open_q(qdir) as q:
        produced: list[int] = []
        acked: list[int] = []
        lock = threading.Lock()

        def produce(n: int) -> None:
            for i in range(n):
                jid = q.enqueue("t", i)
                with lock:
                    produced.append(jid)

        def consume(stop: threading.Event) -> None:
            while not stop.is_set() or q.stats()["pending"]:
                job = q.claim(timeout=0.05)
                if job is not None:
                    q.ack(job.id)
                    with lock:
                        acked.append(job.id)

        stop = threading.Event()
        consumers = [threading.Thread(target=consume, args=(stop,)) for _ in range(4)]
        producers = [threading.Thread(target=produce, args=(50,)) for _ in range(8)]
        for t in consumers + producers:
            t.start()
        for t in producers:
            t.join()
        stop.set()
        for t in consumers:
            t.join()
        assert sorted(acked) == sorted(produced) and len(set(acked)) == 400
