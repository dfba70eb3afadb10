"""One contract, every backend: the file queue and the Redis queue pass the same tests.

Each test runs against the file queue (a temporary directory) and the Redis
queue (a fresh key prefix on the server at WALQ_REDIS_URL, on the cluster at
WALQ_REDIS_CLUSTER_URL and on Sentinel's primary at WALQ_REDIS_SENTINEL_URL;
each skipped, with the reason, if missing, unless WALQ_REQUIRE_REDIS is set).
Real clocks, short leases: every test takes well under a few seconds.
"""

from __future__ import annotations

import inspect
import math
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import walq

LEASE = 0.4  # short enough to expire within a test, long enough to outlive a slow step


# The Redis deployments the suite runs on, each by the variable naming its URL
# (.ci/redis.sh start single|cluster|sentinel sets them).
REDIS_KINDS = {
    "redis": "WALQ_REDIS_URL",
    "redis-cluster": "WALQ_REDIS_CLUSTER_URL",
    "redis-sentinel": "WALQ_REDIS_SENTINEL_URL",
}


def redis_url(kind: str = "redis") -> str | None:
    """The URL of the test deployment of `kind`, or None."""
    return os.environ.get(REDIS_KINDS[kind]) or None


def _redis_skip_reason(kind: str = "redis") -> str | None:
    url = redis_url(kind)
    if url is None:
        mode = {"redis": "", "redis-cluster": " cluster", "redis-sentinel": " sentinel"}[kind]
        return f'no Redis: set {REDIS_KINDS[kind]} (eval "$(bash .ci/redis.sh start{mode})")'
    try:
        import redis

        from walq.redisq.connection import connect
        from walq.redisq.url import parse_url
    except ImportError:
        return "redis-py is not installed (pip install 'walq[redis]')"
    try:
        client = connect(parse_url(url), 2.0)
        client.ping()
        client.close()
    except redis.RedisError as exc:
        return f"no Redis reachable at {url}: {exc}"
    return None


REDIS_SKIPS = {kind: _redis_skip_reason(kind) for kind in REDIS_KINDS}
REDIS_SKIP = REDIS_SKIPS["redis"]
# WALQ_REQUIRE_REDIS=1 (CI sets it) turns a missing server or redis-py into failures,
# so that a broken CI setup cannot pass by skipping.
REDIS_REQUIRED = os.environ.get("WALQ_REQUIRE_REDIS", "") not in ("", "0")
SKIP_REDIS = REDIS_SKIP is not None and not REDIS_REQUIRED


def need_redis(kind: str = "redis") -> None:
    """Fail the test if Redis was required and is missing (else the skip mark decided)."""
    if REDIS_SKIPS[kind] is not None:
        pytest.fail(f"WALQ_REQUIRE_REDIS is set, but: {REDIS_SKIPS[kind]}")


def redis_param(kind: str) -> Any:
    """A pytest param for deployment `kind`, skipped (with the reason) if it is missing."""
    skip = REDIS_SKIPS[kind] is not None and not REDIS_REQUIRED
    return pytest.param(
        kind,
        marks=[pytest.mark.redis, pytest.mark.skipif(skip, reason=REDIS_SKIPS[kind] or "")],
    )


class Backend:
    """Opens queues of one kind; `open()` twice gives two handles on the same queue."""

    def __init__(self, kind: str, tmp_path: Path) -> None:
        self.kind = kind
        self.dir = str(tmp_path / "q")
        self.prefix = f"walqtest-{uuid.uuid4().hex[:12]}"

    def url(self) -> str:
        """This backend's queue URL (a Redis kind only)."""
        url = redis_url(self.kind)
        assert url is not None
        url = f"{url}{'&' if '?' in url else '?'}prefix={self.prefix}"
        if self.kind == "redis-sentinel":
            url += "&min_replicas=1"  # every change waits for the replica (WAIT)
        return url

    def open(self, **opts: Any) -> Any:
        if self.kind == "file":
            opts.setdefault("segment_size", 64 * 1024)
            return walq.Queue.open(self.dir, **opts)
        from walq.redisq.queue import RedisQueue

        return RedisQueue.open(self.url(), **opts)

    def cleanup(self) -> None:
        """Delete this test's keys (all in its prefix's slot)."""
        if self.kind == "file":
            return
        from walq.redisq.connection import connect
        from walq.redisq.url import key_prefix, parse_url

        client = connect(parse_url(self.url()), 10.0)
        names = list(client.scan_iter(match=f"{key_prefix(self.prefix)}:*", count=1000))
        if names:
            client.delete(*names)
        client.close()


@pytest.fixture(params=["file", *(redis_param(kind) for kind in REDIS_KINDS)])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    if request.param != "file":
        need_redis(request.param)
    b = Backend(request.param, tmp_path)
    yield b
    b.cleanup()


@pytest.fixture
def q(backend: Backend) -> Iterator[Any]:
    queue = backend.open()
    yield queue
    queue.close()


def claimed(q: Any, **kw: Any) -> walq.Job:
    job: walq.Job | None = q.claim(**kw)
    assert job is not None
    return job


def wait_for(predicate: Callable[[], bool], timeout: float = 3.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


class TestContract:
    """The Queue contract, as the worker and users rely on it, for every backend."""

    def test_round_trip(self, q: Any) -> None:
        """pending -> running -> done, keeping task, payload, key and attempt."""
        jid = q.enqueue("send", {"to": "a@b", "n": [1, 2.5, None]}, key="k1")
        assert isinstance(jid, int) and q.status(jid) == "pending"
        job = claimed(q)
        assert (job.id, job.task, job.payload, job.attempt, job.key) == (
            jid,
            "send",
            {"to": "a@b", "n": [1, 2.5, None]},
            1,
            "k1",
        )
        assert job.max_attempts == 20 and job.enqueued_at > 0
        assert q.status(jid) == "running"
        q.ack(jid, attempt=job.attempt)
        assert q.status(jid) == "done"
        assert q.claim() is None

    def test_ids_unique_increasing_and_state_survives_reopen(self, backend: Backend) -> None:
        """Ids never repeat; jobs, keys and statuses are there after a reopen."""
        with backend.open() as q:
            first = [q.enqueue("t", i) for i in range(3)]
            q.ack(claimed(q).id)
            held = q.enqueue("t", "keyed", key="durable")
        with backend.open() as q:
            later = q.enqueue("t", 9)
            assert first == sorted(first) and later > max(first) and later > held
            assert q.status(first[0]) == "done" and q.status(first[1]) == "pending"
            assert q.enqueue("t", "again", key="durable") == held

    def test_bytes_stay_bytes_and_bad_payloads_are_refused(self, backend: Backend) -> None:
        """bytes come back as bytes; non-JSON or oversized payloads raise PayloadError."""
        with backend.open(max_payload=1000) as q:
            q.enqueue("blob", b"\x00\xffdata")
            assert claimed(q).payload == b"\x00\xffdata"
            with pytest.raises(walq.PayloadError, match="neither bytes nor a JSON"):
                q.enqueue("t", object())
            with pytest.raises(walq.PayloadError, match="exceeds max_payload"):
                q.enqueue("t", b"x" * 1001)
            with pytest.raises(walq.PayloadError):
                q.enqueue("t", float("nan"))
            assert q.stats()["unfinished"] == 1

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
    def test_bad_arguments(self, q: Any, kwargs: dict[str, Any], match: str) -> None:
        """Out-of-range arguments raise ArgumentError and add nothing."""
        with pytest.raises(walq.ArgumentError, match=match):
            q.enqueue("t", 1, **kwargs)
        with pytest.raises(walq.ArgumentError, match="task"):
            q.enqueue("", 1)
        assert q.stats()["unfinished"] == 0

    def test_key_coalesces_while_unfinished(self, q: Any) -> None:
        """The same key returns the unfinished job (also within a batch) until it is done."""
        a = q.enqueue("t", 1, key="k")
        assert q.enqueue("t", 2, key="k") == a
        ids = q.enqueue_many(
            [("t", 3, {"key": "k"}), ("t", 4, {"key": "j"}), ("t", 5, {"key": "j"}), ("t", 6)]
        )
        assert ids[0] == a and ids[1] == ids[2] and ids[3] == ids[1] + 1
        job = claimed(q)
        assert job.id == a
        assert q.enqueue("t", 7, key="k") == a  # still running
        q.ack(a)
        b = q.enqueue("t", 8, key="k")
        assert b != a
        assert q.stats()["coalesced"] == 4

    def test_dead_job_releases_its_key_and_requeue_takes_it_back(self, q: Any) -> None:
        """A dead job no longer holds its key; requeue holds it again if it is free."""
        a = q.enqueue("t", 1, key="k")
        claimed(q)
        q.fail(a, "bad", permanent=True)
        b = q.enqueue("t", 2, key="k")
        assert b != a
        (dead,) = q.dead_jobs()
        assert dead.key == "k"
        q.requeue(a)
        assert q.enqueue("t", 3, key="k") == b  # b still holds it
        assert q.status(a) == "pending"
        q.cancel(b)
        assert q.enqueue("t", 4, key="k") not in (a, b)  # a did not take the key over

    def test_enqueue_many_ids_in_order(self, q: Any) -> None:
        """A batch gets consecutive ids in item order and is claimed FIFO."""
        ids = q.enqueue_many([("t", i) for i in range(50)])
        assert ids == list(range(ids[0], ids[0] + 50))
        got = q.claim_many(50)
        assert [j.payload for j in got] == list(range(50))

    def test_priority_then_fifo_across_tasks(self, q: Any) -> None:
        """Higher priority first; equal priority in enqueue order, whatever the task."""
        low = q.enqueue("t", "low", priority=-1)
        a = q.enqueue("t", "a")
        high = q.enqueue("t", "high", priority=5)
        b = q.enqueue("u", "b")
        order = []
        while (job := q.claim()) is not None:
            order.append(job.id)
        assert order == [high, a, b, low]

    def test_delay_schedules_until_due(self, q: Any) -> None:
        """A delayed job is scheduled, not claimable, until its delay passes."""
        jid = q.enqueue("t", 1, delay=0.3)
        assert q.status(jid) == "scheduled" and q.claim() is None
        assert q.stats()["scheduled"] == 1
        due = q.next_due_in()
        assert due is not None and 0 < due <= 0.3
        time.sleep(0.35)
        assert q.status(jid) == "pending"
        assert claimed(q).id == jid

    def test_lease_expiry_rescues_and_refuses_the_stale_result(self, q: Any) -> None:
        """An expired lease returns the job (attempt counted); the old attempt cannot finish it."""
        jid = q.enqueue("t", 1)
        first = claimed(q, lease=LEASE)
        time.sleep(LEASE + 0.1)
        assert q.status(jid) == "pending"
        assert q.stats()["expired"] == 1
        second = claimed(q, lease=30)
        assert second.attempt == 2
        with pytest.raises(walq.LeaseLost, match="attempt 2, not 1"):
            q.ack(jid, attempt=first.attempt)
        with pytest.raises(walq.LeaseLost):
            q.fail(jid, "late", attempt=first.attempt)
        with pytest.raises(walq.LeaseLost):
            q.release(jid, attempt=first.attempt)
        assert q.status(jid) == "running"
        q.ack(jid, attempt=second.attempt)
        assert q.status(jid) == "done"
        with pytest.raises(walq.LeaseLost):
            q.fail(jid, "later still", attempt=second.attempt)
        with pytest.raises(walq.StateError, match="not running"):
            q.ack(jid)
        assert q.status(jid) == "done"

    def test_without_attempt_a_handle_acts_on_its_own_claim(self, q: Any) -> None:
        """ack/fail/release/extend without attempt= use this handle's newest claim."""
        jid = q.enqueue("t", 1)
        claimed(q, lease=LEASE)
        time.sleep(LEASE + 0.1)
        assert q.status(jid) == "pending"
        steps: tuple[Callable[[], object], ...] = (
            lambda: q.ack(jid),
            lambda: q.fail(jid, "late"),
            lambda: q.release(jid),
            lambda: q.extend(jid, 30),
        )
        for step in steps:
            with pytest.raises(walq.LeaseLost, match=f"job {jid}"):
                step()
        assert q.ack_many([jid], strict=False)[0][0] == jid
        assert q.status(jid) == "pending"
        second = claimed(q, lease=30)  # claimed again by the same handle: the newest wins
        assert second.attempt == 2
        q.extend(jid, 30)
        q.ack(jid)
        assert q.status(jid) == "done"
        with pytest.raises(walq.StateError, match="not running"):
            q.ack(jid)

    def test_extend_keeps_a_long_job_leased(self, q: Any) -> None:
        """A heartbeat moves the lease deadline; without one the lease expires."""
        jid = q.enqueue("t", 1)
        job = claimed(q, lease=LEASE)
        for _ in range(3):
            time.sleep(LEASE / 2)
            q.extend(jid, LEASE, attempt=job.attempt)
        assert q.status(jid) == "running"
        time.sleep(LEASE + 0.1)
        assert q.status(jid) == "pending"
        with pytest.raises(walq.LeaseLost):
            q.extend(jid, LEASE, attempt=job.attempt)

    def test_extend_many_keeps_held_leases_and_reports_the_lost(self, q: Any) -> None:
        """One heartbeat call extends every lease still held and names the others."""
        a, b, c = q.enqueue_many([("t", 1), ("t", 2), ("t", 3)])
        jobs = {j.id: j for j in q.claim_many(3, lease=LEASE)}
        q.ack(c, attempt=jobs[c].attempt)
        for _ in range(3):
            time.sleep(LEASE / 2)
            refused = q.extend_many([a, b, c], lease=LEASE, attempts=[1, 1, 1])
            assert [jid for jid, _ in refused] == [c]
            assert isinstance(refused[0][1], walq.StateError)
        assert q.status(a) == q.status(b) == "running"
        time.sleep(LEASE + 0.1)
        assert q.status(a) == q.status(b) == "pending"
        refused = q.extend_many([a, b], lease=LEASE)  # this handle's own claims
        assert [jid for jid, _ in refused] == [a, b]
        assert all(isinstance(exc, walq.LeaseLost) for _, exc in refused)
        assert q.extend_many([], lease=LEASE) == []

    def test_fail_retries_then_dead_letters(self, q: Any) -> None:
        """Failures retry (here at once) and go dead after max_attempts, the error kept."""
        jid = q.enqueue("t", {"n": 1}, max_attempts=3)
        for attempt in (1, 2, 3):
            job = claimed(q)
            assert job.attempt == attempt and job.max_attempts == 3
            outcome = q.fail(jid, f"boom {attempt}", attempt=attempt, delay=0)
            assert outcome == ("dead" if attempt == 3 else "scheduled")
        assert q.status(jid) == "dead" and q.claim() is None
        (dead,) = q.dead_jobs()
        assert (dead.id, dead.attempts, dead.error, dead.payload) == (jid, 3, "boom 3", {"n": 1})
        st = q.stats()
        assert (st["dead"], st["failed"], st["retried"], st["dead_lettered"]) == (1, 3, 2, 1)

    def test_permanent_and_default_backoff(self, q: Any) -> None:
        """permanent=True is dead at once; a plain fail schedules a retry with backoff."""
        a, b = q.enqueue("t", 1), q.enqueue("t", 2)
        claimed(q)
        assert q.fail(a, "bad input", permanent=True) == "dead"
        claimed(q)
        assert q.fail(b, "flaky") == "scheduled"
        assert q.status(b) in ("scheduled", "pending")  # backoff is uniform in [0, 2 s)

    def test_fail_with_explicit_delay(self, q: Any) -> None:
        """A caller-given delay (Retry-After) is honoured."""
        jid = q.enqueue("t", 1)
        claimed(q)
        q.fail(jid, "slow down", delay=0.3)
        assert q.status(jid) == "scheduled" and q.claim() is None
        time.sleep(0.35)
        assert claimed(q).attempt == 2

    def test_release_does_not_charge_the_attempt(self, q: Any) -> None:
        """A released job is pending again, its next claim the same attempt number."""
        jid = q.enqueue("t", 1)
        job = claimed(q)
        q.release(jid, attempt=job.attempt)
        assert q.status(jid) == "pending"
        assert claimed(q).attempt == job.attempt

    def test_interrupted_job_out_of_attempts_is_dead_lettered(self, q: Any) -> None:
        """A job whose last attempt was interrupted (lease expired) is dead at the next claim."""
        jid = q.enqueue("t", "poison", max_attempts=2)
        for attempt in (1, 2):
            assert claimed(q, lease=LEASE).attempt == attempt
            time.sleep(LEASE + 0.1)
        assert q.claim() is None
        assert q.status(jid) == "dead"
        (dead,) = q.dead_jobs()
        assert "interrupted" in dead.error and dead.attempts == 2

    def test_cancel_and_statuses(self, q: Any) -> None:
        """cancel works on pending, scheduled and running jobs; finished ones report False."""
        heard: list[int] = []
        q.cancel_listeners.append(heard.append)
        a, b, c = q.enqueue("t", 1), q.enqueue("t", 2, delay=100), q.enqueue("t", 3)
        assert claimed(q).id == a
        assert q.cancel(a) and q.cancel(b)
        assert heard == [a]  # only a running job's worker needs telling
        assert q.status(a) == "cancelled" and q.status(b) == "cancelled"
        assert q.cancel(a) is False
        with pytest.raises(walq.LeaseLost):
            q.ack(a, attempt=1)
        assert claimed(q).id == c
        q.ack(c)
        assert q.cancel(c) is False
        d = q.enqueue("t", 4)
        claimed(q)
        q.fail(d, "x", permanent=True)
        with pytest.raises(walq.StateError, match="dead"):
            q.cancel(d)
        assert q.stats()["unfinished"] == 0

    def test_requeue_and_purge(self, q: Any) -> None:
        """requeue revives a dead job with fresh attempts; purge deletes dead jobs."""
        a, b = q.enqueue("t", 1), q.enqueue("t", 2)
        for _ in range(2):
            q.fail(claimed(q).id, "x", permanent=True)
        q.requeue(a)
        job = claimed(q)
        assert job.id == a and job.attempt == 1
        with pytest.raises(walq.StateError):
            q.requeue(a)
        with pytest.raises(walq.StateError, match="not dead"):
            q.purge([a])
        assert q.purge() == 1
        with pytest.raises(walq.UnknownJobError, match="purged"):
            q.status(b)
        assert q.purge() == 0 and q.dead_jobs() == []

    def test_unknown_job_is_a_key_error(self, q: Any) -> None:
        """An id never issued raises UnknownJobError, a KeyError, for every operation."""
        with pytest.raises(walq.UnknownJobError, match="job 99 does not exist"):
            q.status(99)
        for op in (q.ack, q.release, q.cancel, q.requeue, lambda i: q.fail(i, "x")):
            with pytest.raises(KeyError):
                op(99)

    def test_max_pending_raises_queue_full_then_waits(self, backend: Backend) -> None:
        """At the cap enqueue raises QueueFull, or waits up to timeout for room."""
        with backend.open(max_pending=2) as q:
            q.enqueue("t", 1)
            q.enqueue("t", 2)
            with pytest.raises(walq.QueueFull, match="max_pending"):
                q.enqueue("t", 3)
            with pytest.raises(walq.QueueFull):
                q.enqueue_many([("t", 4)])
            job = claimed(q)
            threading.Timer(0.2, lambda: q.ack(job.id)).start()
            started = time.monotonic()
            assert q.enqueue("t", 3, timeout=5) > 0
            assert 0.1 < time.monotonic() - started < 4

    def test_max_bytes_caps_live_bytes(self, backend: Backend) -> None:
        """max_bytes refuses an enqueue that would pass the cap; coalescing is free."""
        with backend.open(max_bytes=2000) as q:
            q.enqueue("t", b"x" * 900, key="k")
            with pytest.raises(walq.QueueFull, match="max_bytes"):
                q.enqueue("t", b"x" * 1200)
            q.enqueue("t", b"x" * 1200, key="k")  # the key's job exists: nothing added

    def test_claim_waits_for_a_job(self, q: Any) -> None:
        """claim(timeout=) wakes when another thread enqueues."""
        threading.Timer(0.2, lambda: q.enqueue("t", "late")).start()
        started = time.monotonic()
        job = q.claim(timeout=5)
        assert job is not None and job.payload == "late"
        assert time.monotonic() - started < 3
        started = time.monotonic()
        assert q.claim(timeout=0.2) is None
        assert 0.15 < time.monotonic() - started < 2

    def test_claim_filters_by_task(self, q: Any) -> None:
        """claim(tasks=...) only takes those tasks, leaving the others pending."""
        q.enqueue("a", 1)
        b = q.enqueue("b", 2)
        assert claimed(q, tasks=["b"]).id == b
        assert q.claim(tasks=["c"]) is None
        assert q.stats()["pending"] == 1

    def test_claim_many_filters_by_task_before_accept(self, q: Any) -> None:
        """claim_many(tasks=...) takes only those tasks; accept sees only those."""
        q.enqueue_many([("a", 1), ("b", 2), ("c", 3), ("b", 4)])
        seen: list[str] = []

        def accept(info: Any) -> bool:
            seen.append(info.task)
            return info.task in {"b", "c"}

        jobs = q.claim_many(10, tasks=["a", "b"], accept=accept)
        assert sorted(j.payload for j in jobs) == [2, 4]
        assert set(seen) <= {"a", "b"}
        assert q.stats()["pending"] == 2  # "a" refused by accept, "c" by tasks
        assert [j.task for j in q.claim_many(10, tasks=["c"])] == ["c"]

    def test_claim_many_and_ack_many(self, q: Any) -> None:
        """claim_many takes a batch; ack_many strict acks all or none; lenient reports."""
        ids = q.enqueue_many([("t", i) for i in range(10)])
        jobs = q.claim_many(8, lease=30)
        assert [j.id for j in jobs] == ids[:8]
        with pytest.raises(walq.StateError):
            q.ack_many([jobs[0].id, ids[9]])  # ids[9] is pending, not running
        assert q.status(jobs[0].id) == "running"
        refused = q.ack_many(
            [j.id for j in jobs] + [ids[9]],
            attempts=[1] * 8 + [1],
            strict=False,
        )
        assert [jid for jid, _ in refused] == [ids[9]]
        assert isinstance(refused[0][1], walq.LeaseLost)
        st = q.stats()
        assert (st["running"], st["pending"], st["done"], st["acked"]) == (0, 2, 8, 8)

    def test_accept_takes_refuses_and_defers(self, q: Any) -> None:
        """claim_many's accept: True takes, False leaves the task pending, a time defers."""
        a1, a2 = q.enqueue("a", 1), q.enqueue("a", 2)
        b1 = q.enqueue("b", 3)
        c1 = q.enqueue("c", 4)
        asked: list[int] = []

        def accept(info: Any) -> bool | float:
            asked.append(info.id)
            assert info.attempts == 0 and info.max_attempts == 20
            if info.task == "a":
                return False
            if info.task == "c":
                return time.monotonic() + 0.3
            return True

        jobs = q.claim_many(5, accept=accept)
        assert [j.id for j in jobs] == [b1]
        assert a1 in asked and a2 not in asked  # a refusal covers the task's other jobs
        assert q.status(a1) == "pending" and q.status(a2) == "pending"
        assert q.status(c1) == "scheduled"
        time.sleep(0.35)
        jobs = q.claim_many(5)
        assert [j.id for j in jobs] == [a1, a2, c1]  # refused jobs kept their place
        assert jobs[2].attempt == 1  # the deferral did not charge the attempt

    def test_accept_raising_puts_candidates_back(self, q: Any) -> None:
        """If accept raises, nothing is taken and the candidates stay pending."""
        ids = q.enqueue_many([("t", i) for i in range(3)])

        def accept(info: Any) -> bool:
            raise RuntimeError("policy bug")

        with pytest.raises(RuntimeError):
            q.claim_many(3, accept=accept)
        assert [q.status(i) for i in ids] == ["pending"] * 3
        assert [j.id for j in q.claim_many(3)] == ids

    def test_task_defaults_bound_attempts(self, q: Any) -> None:
        """set_task_defaults sets max_attempts for jobs that did not choose their own."""
        q.set_task_defaults("t", max_attempts=1)
        a = q.enqueue("t", 1)
        b = q.enqueue("t", 2, max_attempts=2)
        job = claimed(q)
        assert job.id == a and job.max_attempts == 1
        assert q.fail(a, "x", delay=0) == "dead"
        assert claimed(q).max_attempts == 2
        assert q.fail(b, "x", delay=0) == "scheduled"

    def test_stats_counts_by_state_and_task(self, q: Any) -> None:
        """stats: counts by state and per task, and the counters."""
        q.enqueue_many([("a", 1), ("a", 2), ("b", 3)])
        q.enqueue("b", 4, delay=60)
        q.ack(claimed(q).id)
        claimed(q)
        st = q.stats()
        assert (st["pending"], st["scheduled"], st["running"], st["dead"]) == (1, 1, 1, 0)
        assert st["unfinished"] == 3 and st["done"] == 1 and st["bytes"] > 0
        assert st["tasks"]["a"]["running"] == 1 and st["tasks"]["b"]["scheduled"] == 1
        assert (st["enqueued"], st["claimed"], st["acked"]) == (4, 2, 1)

    def test_ready_listeners_hear_of_new_work(self, q: Any) -> None:
        """A ready listener is called when a job becomes claimable (a worker's wakeup)."""
        heard = threading.Event()
        q.ready_listeners.append(heard.set)
        time.sleep(0.05)
        heard.clear()
        q.enqueue("t", 1)
        assert heard.wait(3.0)
        q.ready_listeners.remove(heard.set)

    def test_closed_queue_raises(self, backend: Backend) -> None:
        """Every operation on a closed queue raises ClosedError; close is idempotent."""
        q = backend.open()
        q.close()
        q.close()
        with pytest.raises(walq.ClosedError):
            q.enqueue("t", 1)
        with pytest.raises(walq.ClosedError):
            q.claim()

    def test_concurrent_producers_and_consumers_lose_nothing(self, q: Any) -> None:
        """4 producer threads and 4 consumers: every job is acked exactly once."""
        produced: list[int] = []
        acked: list[int] = []
        lock = threading.Lock()
        stop = threading.Event()

        def produce() -> None:
            for i in range(50):
                jid = q.enqueue("t", i)
                with lock:
                    produced.append(jid)

        def consume() -> None:
            while not stop.is_set() or q.stats()["pending"]:
                job = q.claim(timeout=0.05)
                if job is not None:
                    q.ack(job.id, attempt=job.attempt)
                    with lock:
                        acked.append(job.id)

        consumers = [threading.Thread(target=consume) for _ in range(4)]
        producers = [threading.Thread(target=produce) for _ in range(4)]
        for t in consumers + producers:
            t.start()
        for t in producers:
            t.join(30)
        stop.set()
        for t in consumers:
            t.join(30)
        assert sorted(acked) == sorted(produced) and len(set(acked)) == 200


class TestFlow:
    """Results, follow-up jobs committed with the ack, and dependencies (docs/FLOW.md)."""

    def test_result_is_kept_and_read_back(self, backend: Backend) -> None:
        """A JSON or bytes result is returned by result(), from this and a later handle."""
        q = backend.open()
        a, b, c = q.enqueue("t", 1), q.enqueue("t", 2), q.enqueue("t", 3)
        q.ack(claimed(q).id, result={"sum": 3})
        q.ack(claimed(q).id, result=b"\x00raw")
        q.ack(claimed(q).id)
        assert q.result(a) == {"sum": 3} and q.result(b) == b"\x00raw" and q.result(c) is None
        q.close()
        with backend.open() as again:
            assert again.result(a, timeout=0) == {"sum": 3}
            assert again.result(b, timeout=0) == b"\x00raw"

    def test_result_waits_times_out_and_names_failure_and_cancellation(self, q: Any) -> None:
        """result() waits for an unfinished job; dead and cancelled jobs raise with why."""
        jid = q.enqueue("t", 1)
        with pytest.raises(walq.ResultTimeout, match=f"job {jid} is pending"):
            q.result(jid, timeout=0.05)
        got: list[Any] = []
        waiter = threading.Thread(target=lambda: got.append(q.result(jid, timeout=30)))
        waiter.start()
        job = claimed(q)
        q.ack(job.id, result=[1, 2])
        waiter.join(30)
        assert got == [[1, 2]]
        bad = q.enqueue("t", 1)
        q.fail(claimed(q).id, "it broke", permanent=True)
        with pytest.raises(walq.JobFailed, match="it broke") as failed:
            q.result(bad)
        assert failed.value.error.startswith("it broke")
        gone = q.enqueue("t", 1)
        q.cancel(gone)
        with pytest.raises(walq.JobCancelled):
            q.result(gone)
        with pytest.raises(walq.UnknownJobError):
            q.result(10**9)

    def test_results_are_bounded_and_expire(self, backend: Backend) -> None:
        """A result over max_result_bytes is refused (the job stays running); it expires."""
        q = backend.open(max_result_bytes=100, keep_results=0.3)
        jid = q.enqueue("t", 1)
        job = claimed(q)
        with pytest.raises(walq.PayloadError, match="max_result_bytes"):
            q.ack(job.id, result="x" * 200)
        with pytest.raises(walq.PayloadError, match=r"^job \d+: its result is a set, neither JSON"):
            q.ack(job.id, result={1, 2})
        assert q.status(jid) == "running"
        q.ack(job.id, result="short")
        assert q.result(jid) == "short"
        assert wait_for(lambda: q.result(jid) is None, timeout=30)
        q.close()

    def test_follow_up_jobs_exist_once_acked_never_before(self, backend: Backend) -> None:
        """Jobs given to ack(enqueue=...) appear with the ack, coalesce by key, survive reopen."""
        q = backend.open()
        jid = q.enqueue("first", 1)
        job = claimed(q)
        assert q.stats()["unfinished"] == 1
        q.ack(job.id, result="r", enqueue=[("second", {"n": 2}), ("third", 3, {"key": "k"}),
                                           ("third", 4, {"key": "k"})])  # fmt: skip
        assert q.stats()["unfinished"] == 2
        q.close()
        q = backend.open()
        got = sorted((j.task, j.payload) for j in q.claim_many(10))
        assert got == [("second", {"n": 2}), ("third", 3)]
        assert q.result(jid) == "r"
        q.close()

    def test_follow_up_jobs_take_run_at_and_refuse_after_and_unique_for(self, q: Any) -> None:
        """A follow-up job may say when (run_at); after= and unique_for= are refused, with why,
        in job.enqueue (the handler) and in ack(enqueue=...), and the job stays running."""
        from datetime import datetime, timedelta, timezone

        parent = q.enqueue("first", 1)
        job = claimed(q)
        at = datetime.now(timezone.utc) + timedelta(hours=1)
        for options in ({"after": [parent]}, {"key": "k", "unique_for": 60},
                        {"after": [parent], "after_policy": "always"}):  # fmt: skip
            with pytest.raises(walq.ArgumentError, match="a follow-up job takes no"):
                job.enqueue("next", 2, **options)
            with pytest.raises(walq.ArgumentError, match="a follow-up job takes no"):
                q.ack(job.id, enqueue=[("next", 2, options)])
        with pytest.raises(walq.ArgumentError, match="naive"):
            job.enqueue("next", 2, run_at=at.replace(tzinfo=None))
        assert q.status(job.id) == "running"
        job.enqueue("next", 2, run_at=at)
        q.ack(job.id, enqueue=job.outbox)
        (row,) = q.jobs(task="next")
        assert row["status"] == "scheduled"
        assert q.job_detail(row["id"])["due_in"] > 3500

    def test_a_lost_attempt_adds_no_follow_up_jobs(self, q: Any) -> None:
        """An attempt whose lease expired cannot ack: its follow-up jobs never exist."""
        q.enqueue("first", 1)
        job = claimed(q, lease=LEASE)
        assert wait_for(lambda: q.status(job.id) == "pending", timeout=30)
        with pytest.raises(walq.LeaseLost):
            q.ack(job.id, attempt=job.attempt, enqueue=[("second", 2)])
        assert q.stats()["unfinished"] == 1 and q.claim(tasks=["second"]) is None

    def test_chain_and_fan_in_wait_for_their_parents(self, backend: Backend) -> None:
        """A job after others waits until all are done, then reads their results."""
        q = backend.open()
        a1, a2 = q.enqueue("a", 1), q.enqueue("a", 2)
        b = q.enqueue("b", None, after=[a1, a2])
        c = q.enqueue("c", None, after=[b])
        assert q.status(b) == "waiting" and q.status(c) == "waiting"
        assert q.stats()["waiting"] == 2 and q.stats()["unfinished"] == 4
        first = claimed(q)
        assert first.id == a1 and q.claim(tasks=["b", "c"]) is None
        q.ack(a1, result=10)
        assert q.status(b) == "waiting"
        q.close()
        q = backend.open()  # the wait survives a reopen
        assert q.status(b) == "waiting"
        second = claimed(q)
        q.ack(second.id, result=20)
        assert q.status(b) == "pending" and q.status(c) == "waiting"
        job_b = claimed(q)
        assert job_b.id == b and job_b.parents == {a1: 10, a2: 20}
        q.ack(b, result=30)
        job_c = claimed(q)
        assert job_c.id == c and job_c.parents == {b: 30}
        q.close()

    def test_a_plain_ack_releases_dependents(self, q: Any) -> None:
        """An ack without result or follow-up jobs (the batched ack path) moves dependents on."""
        a = q.enqueue("a", 1)
        b = q.enqueue("b", 1, after=[a])
        q.ack_many([claimed(q).id])
        assert q.status(b) == "pending"
        assert claimed(q).parents == {a: None}

    def test_a_failed_parent_cancels_dependents_unless_always(self, q: Any) -> None:
        """A dead or cancelled parent cancels the chain after it, with the cause; "always" runs."""
        a = q.enqueue("a", 1, max_attempts=1)
        b = q.enqueue("b", 1, after=[a])
        c = q.enqueue("c", 1, after=[b])
        d = q.enqueue("d", 1, after=[a], after_policy="always")
        q.fail(claimed(q).id, "boom")
        assert q.status(b) == "cancelled" and q.status(c) == "cancelled"
        assert q.status(d) == "pending"
        with pytest.raises(walq.JobCancelled, match=f"job {a} .* is dead"):
            q.result(b)
        cause = f"job {a} it was enqueued after is dead"
        assert q.job_detail(b) == {"id": b, "status": "cancelled", "cause": cause}
        e = q.enqueue("e", 1)
        f = q.enqueue("f", 1, after=[e])
        q.cancel(e)
        assert q.status(f) == "cancelled"
        late = q.enqueue("g", 1, after=[e])
        assert q.status(late) == "cancelled"

    def test_after_refuses_unknown_ids_and_bad_arguments(self, q: Any) -> None:
        """Unknown parents (so also cycles: a parent exists before its child) are refused."""
        with pytest.raises(walq.UnknownJobError):
            q.enqueue("t", 1, after=[10**9])
        for after, match in (([], "1.."), ([0], "job ids"), (5, "job ids"), (["1"], "job ids")):
            with pytest.raises(walq.ArgumentError, match=match):
                q.enqueue("t", 1, after=after)
        a = q.enqueue("t", 1)
        with pytest.raises(walq.ArgumentError, match="after_policy"):
            q.enqueue("t", 1, after=[a], after_policy="sometimes")
        assert q.stats()["unfinished"] == 1


class Ticks:
    """A timetable whose ticks the test sets (wall seconds): time passing, on any backend."""

    def __init__(self, *ticks: float) -> None:
        self.ticks = sorted(ticks)

    def latest(self, at: float) -> float | None:
        return max((t for t in self.ticks if t <= at), default=None)

    def before(self, tick: float) -> float | None:
        return max((t for t in self.ticks if t < tick), default=None)

    def after(self, at: float) -> float | None:
        return min((t for t in self.ticks if t > at), default=None)


def ticking(misfire: str, table: Ticks, name: str = "rep") -> Any:
    from walq.core.schedule import Schedule

    return Schedule(
        name=name, task="report", payload={"x": 1}, timetable=table, misfire=misfire, spec="{}"
    )


class TestTime:
    """Schedules, unique_for and run_at behave alike on every backend."""

    @pytest.mark.parametrize(("misfire", "fired"), [("skip", 1), ("once", 1), ("all", 3)])
    def test_fire_schedule(self, q: Any, misfire: str, fired: int) -> None:
        """First sight runs no late tick; after downtime misfire decides; each tick once."""
        from walq.core.schedule import tick_key

        now = time.time()
        table = Ticks(now - 7200)
        sched = ticking(misfire, table)
        assert q.fire_schedule(sched) == []  # first sight: the tick is hours late
        assert [r["last"] for r in q.schedules()] == [now - 7200]
        table.ticks += [now - 3600, now - 1800, now - 2]  # the last one on time
        ids = q.fire_schedule(sched)
        assert len(ids) == fired
        assert q.fire_schedule(sched) == []
        keys = []
        while (job := q.claim()) is not None:
            keys.append(job.key)
            assert (job.task, job.payload) == ("report", {"x": 1})
            q.ack(job.id)
        assert keys[-1] == tick_key("rep", now - 2)
        assert len(set(keys)) == len(keys) == fired
        assert q.fire_schedule(sched) == []  # done ticks are not run again

    def test_skip_runs_no_late_tick(self, q: Any) -> None:
        """misfire=skip after downtime: no run at all until the next tick on time."""
        now = time.time()
        table = Ticks(now - 7200)
        sched = ticking("skip", table)
        q.fire_schedule(sched)
        table.ticks += [now - 3600, now - 1800]
        assert q.fire_schedule(sched) == []
        assert q.schedules()[0]["last"] == now - 1800

    def test_a_full_queue_still_takes_its_schedules_ticks(self, backend: Backend) -> None:
        """max_pending and max_bytes refuse producers, not a schedule's ticks: a queue kept
        full would starve periodic work (a tick adds at most its own jobs)."""
        now = time.time()
        table = Ticks(now - 50)
        with backend.open(max_pending=1, max_bytes=10_000) as q:
            q.fire_schedule(ticking("all", table))  # first sight: no late tick
            q.enqueue("t", "x" * 9_000)
            with pytest.raises(walq.QueueFull, match="max_pending"):
                q.enqueue("t", 2)
            table.ticks += [now - 40, now - 30]
            ids = q.fire_schedule(ticking("all", table))
            assert len(ids) == 2
            assert q.stats()["pending"] == 3
            with pytest.raises(walq.QueueFull):
                q.enqueue("t", 3)

    def test_two_handles_fire_each_tick_once(self, backend: Backend) -> None:
        """Handles firing the same schedule at once enqueue each tick once."""
        now = time.time()
        table = Ticks(*(now - 1000 + i for i in range(30)))
        handles = [backend.open()] + ([backend.open()] if backend.kind == "redis" else [])
        try:
            handles[0].fire_schedule(ticking("all", Ticks(now - 5000)))
            ids: list[int] = []
            lock = threading.Lock()

            def fire(h: Any) -> None:
                for _ in range(20):
                    got = h.fire_schedule(ticking("all", table))
                    with lock:
                        ids.extend(got)

            threads = [threading.Thread(target=fire, args=(h,)) for h in handles * 2]
            for t in threads:
                t.start()
            for t in threads:
                t.join(30)
            assert len(ids) == len(set(ids)) == 30
        finally:
            for h in handles:
                h.close()

    def test_unique_for_remembers_a_done_key(self, q: Any) -> None:
        """A done job's key returns it for unique_for seconds; a key without it does not."""
        jid = q.enqueue("email", b"x", key="welcome:1", unique_for=60.0)
        job = claimed(q)
        q.ack(job.id)
        assert q.status(jid) == "done"
        assert q.enqueue("email", b"x", key="welcome:1") == jid
        assert q.enqueue("email", b"x", key="welcome:1", unique_for=60.0) == jid
        other = q.enqueue("email", b"x", key="plain")
        q.ack(claimed(q).id)
        assert q.enqueue("email", b"x", key="plain") != other

    def test_unique_for_survives_an_ack_with_a_result(self, backend: Backend) -> None:
        """An ack that keeps a result and adds jobs (one finish) remembers the key too,
        also for a later handle."""
        q = backend.open()
        jid = q.enqueue("email", b"x", key="welcome:2", unique_for=60.0)
        q.ack(claimed(q).id, result={"sent": 1}, enqueue=[("log", {"of": jid})])
        assert q.status(jid) == "done" and q.result(jid) == {"sent": 1}
        assert q.enqueue("email", b"x", key="welcome:2") == jid
        q.close()
        with backend.open() as again:
            assert again.enqueue("email", b"x", key="welcome:2") == jid

    def test_after_with_unique_for_remembers_the_dependents_key(self, backend: Backend) -> None:
        """after= with unique_for=: the dependent waits, runs, and its key is remembered
        once it is done (also for a later handle); a cancelled dependent releases it."""
        q = backend.open()
        parent = q.enqueue("a", 1)
        dep = q.enqueue("email", b"y", key="k2", unique_for=60.0, after=[parent])
        assert q.status(dep) == "waiting"
        assert q.enqueue("email", b"y", key="k2", unique_for=60.0, after=[parent]) == dep
        q.ack(claimed(q).id)
        assert q.status(dep) == "pending"
        q.ack(claimed(q).id)
        assert q.status(dep) == "done" and q.enqueue("email", b"z", key="k2") == dep
        doomed = q.enqueue("b", 1, max_attempts=1)
        other = q.enqueue("email", b"w", key="k3", unique_for=60.0, after=[doomed])
        q.fail(claimed(q).id, "boom")
        assert q.status(other) == "cancelled"
        assert q.enqueue("email", b"w", key="k3") != other  # released with the cancel
        q.close()
        with backend.open() as again:
            assert again.enqueue("email", b"z", key="k2") == dep

    def test_enqueue_many_takes_every_option(self, q: Any) -> None:
        """enqueue_many items take after=, after_policy=, run_at= and unique_for= as
        enqueue does; a bad one or an unknown parent adds nothing."""
        from datetime import datetime, timedelta, timezone

        a = q.enqueue("a", 1)
        at = datetime.now(timezone.utc) + timedelta(hours=1)
        ids = q.enqueue_many([
            ("p", 1),
            ("b", 2, {"after": [a]}),
            ("c", 3, {"after": [a], "after_policy": "always", "key": "kc", "unique_for": 60}),
            ("d", 4, {"run_at": at}),
            ("e", 5, {"key": "ke", "unique_for": 60}),
            ("f", 6, {"key": "kf", "unique_for": 60}),
            ("g", 7),
        ])  # fmt: skip
        assert ids == list(range(a + 1, a + 8))
        states = [q.status(i) for i in ids]
        assert states == ["pending", "waiting", "waiting", "scheduled", "pending", "pending",
                          "pending"]  # fmt: skip
        assert q.job_detail(ids[3])["due_in"] > 3500
        before = q.stats()["unfinished"]
        for items, error in (
            ([("x", 1), ("y", 1, {"after": [10**9]})], walq.UnknownJobError),
            ([("x", 1), ("y", 1, {"after": [a], "unique_for": 5})], walq.ArgumentError),
            ([("x", 1), ("y", 1, {"run_at": datetime(2030, 1, 1)})], walq.ArgumentError),
            ([("x", 1), ("y", 1, {"unique_for": -1, "key": "k"})], walq.ArgumentError),
            ([("x", 1), ("y", 1, {"after_policy": "always"})], walq.ArgumentError),
        ):
            with pytest.raises(error):
                q.enqueue_many(items)
        assert q.stats()["unfinished"] == before

    def test_unique_for_expires(self, q: Any) -> None:
        """Once unique_for has passed, the key makes a new job."""
        jid = q.enqueue("email", b"x", key="k", unique_for=0.2)
        q.ack(claimed(q).id)
        assert wait_for(lambda: q.enqueue("email", b"x", key="k") != jid, timeout=5.0)

    def test_run_at(self, q: Any) -> None:
        """run_at: an aware datetime schedules the job; a naive one is refused."""
        from datetime import datetime, timedelta, timezone

        jid = q.enqueue("t", run_at=datetime.now(timezone.utc) + timedelta(hours=1))
        assert q.status(jid) == "scheduled"
        with pytest.raises(walq.ArgumentError, match="naive"):
            q.enqueue("t", run_at=datetime(2030, 1, 1))


# The calls only one backend has, as docs/REDIS.md lists them ("What differs").
ONE_BACKEND_ONLY = {
    "open",  # each takes its own options (a directory's; a server's)
    "compact",  # the file queue's compactor; Redis rewrites its AOF itself
    "compactor_health",  # whether that compactor keeps failing
    "sync_mode",  # the file queue's fsync policy
    "write_checkpoint",  # the file queue's restart checkpoint; a server keeps its state itself
}


def test_both_backends_implement_the_one_interface(q: Any) -> None:
    """walq.open returns a QueueBackend; the interface's calls are the backend's."""
    assert isinstance(q, walq.QueueBackend)
    for name in dir(walq.QueueBackend):
        if not name.startswith("_") and callable(getattr(walq.QueueBackend, name)):
            a = inspect.signature(getattr(walq.QueueBackend, name)).parameters
            b = inspect.signature(getattr(type(q), name)).parameters
            assert [(p.name, p.kind, p.default) for p in a.values()] == [
                (p.name, p.kind, p.default) for p in b.values()
            ], name


def test_the_interface_checks_arguments_once_for_every_backend(q: Any) -> None:
    """claim_many, fail and extend_many refuse bad arguments the same way on each backend."""
    for n in (True, 0, -1, 1.5, "2"):
        with pytest.raises(walq.ArgumentError, match="n must be a positive integer"):
            q.claim_many(n)
    for lease in (0, -1.0, float("nan")):
        with pytest.raises(walq.ArgumentError, match="lease"):
            q.claim_many(1, lease=lease)
        with pytest.raises(walq.ArgumentError, match="lease"):
            q.extend_many([1], lease)
    with pytest.raises(walq.ArgumentError, match="delay"):
        q.fail(1, "x", delay=-1)


def test_walq_open_dispatches_by_scheme_and_refuses_unknown_ones(tmp_path: Path) -> None:
    """A path opens the directory backend; an unknown scheme is refused, not made a folder."""
    with walq.open(str(tmp_path / "q")) as q:
        assert isinstance(q, walq.Queue)
    with pytest.raises(walq.ArgumentError, match="unknown URL scheme 'nats://'"):
        walq.open("nats://host/q")
    assert not Path("nats:").exists()


def test_both_backends_take_the_same_calls_with_the_same_parameters() -> None:
    """Code written against one backend runs on the other: same names, parameters, defaults."""
    from walq.directory.queue import Queue
    from walq.redisq.queue import RedisQueue

    def public(cls: type) -> set[str]:
        return {n for n in dir(cls) if not n.startswith("_")} - ONE_BACKEND_ONLY

    assert public(Queue) == public(RedisQueue)
    for name in sorted(public(Queue)):
        a, b = getattr(Queue, name), getattr(RedisQueue, name)
        if not callable(a):
            continue
        params = [
            [(p.name, p.kind, p.default) for p in inspect.signature(f).parameters.values()]
            for f in (a, b)
        ]
        assert params[0] == params[1], name


def test_storm_gates_are_shared_by_every_host_of_a_server_queue(backend: Backend) -> None:
    """A directory has one host: its worker's own gates are the queue's (None). On a
    server, two handles (two hosts) share each task's rate limit, breaker and
    concurrency cap, and the retry budget: what one takes, the other cannot."""
    import random

    from walq.core.retry import CircuitBreaker, RateLimit, RetryBudget, TaskPolicy

    if backend.kind == "file":  # one owner at a time
        with backend.open() as q:
            assert q.shared_gates() is None
        return
    a, b = backend.open(), backend.open()
    try:
        ga, gb = a.shared_gates(), b.shared_gates()
        rng = random.Random(1)
        local = TaskPolicy(
            rate=RateLimit(per_second=0.5, burst=3),
            breaker=CircuitBreaker(failures=2, cooldown=60.0),
            concurrency=4,
        )
        pa, pb = ga.share("t", local, 30.0), gb.share("t", local, 30.0)
        budget_a = ga.budget(RetryBudget(ratio=0.5, floor=0.0, window=60.0))
        budget_b = gb.budget(RetryBudget(ratio=0.5, floor=0.0, window=60.0))
        now = time.monotonic()
        # The rate limit's burst of 3 is one for both hosts.
        took = [p.admit(now, attempt=1, running=0, budget=budget_a, rng=rng) for p in (pa, pb, pa)]
        assert all(x.ok for x in took)
        refused = pb.admit(now, attempt=1, running=0, budget=budget_b, rng=rng)
        assert not refused.ok and refused.reason == "rate" and refused.not_before > now + 1
        # 3 first attempts earned 1.5 retries: b's retry spends it, a's has none left.
        assert budget_b.try_withdraw(now) and not budget_a.try_withdraw(now)
        # The cap of 4 counts both hosts' running attempts: 3 run, one more may.
        cap_only = TaskPolicy(concurrency=4, breaker=None)
        ca, cb = ga.share("c", cap_only, 30.0), gb.share("c", cap_only, 30.0)
        assert [ca.admit(now, attempt=1, running=0, budget=None, rng=rng).ok for _ in range(3)]
        assert cb.admit(now, attempt=1, running=0, budget=None, rng=rng).ok
        full = cb.admit(now, attempt=1, running=0, budget=None, rng=rng)
        assert not full.ok and full.reason == "concurrency"
        ca.on_success(now, attempt=1, budget=None)  # one of a's ends: room for b
        assert cb.admit(now, attempt=1, running=0, budget=None, rng=rng).ok
        # Two failures on host a open the breaker for host b too.
        for _ in range(2):
            pa.on_failure(ConnectionError("down"), now, attempt=1, rng=rng)
        assert pb.breaker is not None and pb.breaker.state(now) == "open"
        assert pb.breaker.retry_at(now) > now + 50
    finally:
        a.close()
        b.close()


class TestOperating:
    """Pause and resume, a job's detail, find by key, and listing jobs: the same on each backend."""

    def test_a_paused_task_is_not_claimed_and_resume_lets_it_run(self, q: Any) -> None:
        a = q.enqueue("mail", 1)
        b = q.enqueue("resize", 2)
        running = claimed(q, tasks=["mail"])
        assert running.id == a
        q.enqueue("mail", 3)
        assert q.pause("mail") is True and q.pause("mail") is False
        assert q.paused() == ["mail"]
        job = claimed(q)
        assert job.id == b  # the other task's job
        assert q.claim() is None  # mail's pending job stays pending
        q.ack(running.id)  # a running job of a paused task still finishes
        assert q.status(a) == "done"
        assert q.resume("mail") is True and q.resume("mail") is False
        assert claimed(q).task == "mail" and q.paused() == []

    def test_a_pause_survives_reopening(self, backend: Backend) -> None:
        with backend.open() as q:
            q.enqueue("mail", 1)
            q.pause("mail")
        with backend.open() as q:
            assert q.paused() == ["mail"] and q.claim() is None
            q.resume("mail")
        with backend.open() as q:
            assert q.paused() == [] and claimed(q).task == "mail"

    def test_job_detail_find_and_jobs(self, q: Any) -> None:
        a = q.enqueue("mail", 1, key="k1")
        b = q.enqueue("mail", 2, delay=60)
        c = q.enqueue("resize", 3, max_attempts=1)
        job = claimed(q, tasks=["resize"])
        q.fail(job.id, "boom")
        d = q.enqueue("mail", 4)
        run = claimed(q)
        assert run.id == a
        detail = q.job_detail(a)
        assert detail["status"] == "running" and detail["key"] == "k1"
        assert detail["attempts"] == 1 and detail["task"] == "mail"
        assert 0 < detail["lease_left"] <= 60
        assert 0 < q.job_detail(b)["due_in"] <= 60
        dead = q.job_detail(c)
        assert dead["status"] == "dead" and dead["error"] == "boom" and dead["max_attempts"] == 1
        q.ack(a)
        assert q.job_detail(a) == {"id": a, "status": "done"}
        with pytest.raises(walq.UnknownJobError):
            q.job_detail(10_000)
        assert q.find("k1") is None  # its job finished
        assert q.find("nope") is None
        e = q.enqueue("mail", 5, key="k2")
        assert q.find("k2") == e
        assert [j["id"] for j in q.jobs()] == [b, c, d, e]
        assert [j["id"] for j in q.jobs(state="dead")] == [c]
        assert [j["id"] for j in q.jobs(task="mail", limit=2)] == [b, d]
        assert [j["id"] for j in q.jobs(task="mail", after=d)] == [e]
        assert q.jobs(state="pending")[0] == {
            "id": d, "task": "mail", "status": "pending", "attempts": 0, "priority": 0,
            "key": None,
        }  # fmt: skip
        with pytest.raises(walq.ArgumentError, match="state must be one of"):
            q.jobs(state="done")
        for bad in ({"limit": 0}, {"limit": -5}, {"limit": 2.5}, {"after": -1}, {"after": "1"}):
            with pytest.raises(walq.ArgumentError, match=r"^(limit|after) must be"):
                q.jobs(**bad)


def test_outcomes_take_how_the_attempt_ran_on_every_backend(q: Any) -> None:
    """ack, ack_many, fail and release accept `ran` (a directory logs it, a server ignores
    it) and act exactly as without it; ran of the wrong length is refused before any write."""
    ids = q.enqueue_many([("t", {"n": i}) for i in range(4)])
    jobs = q.claim_many(4)
    assert sorted(j.id for j in jobs) == sorted(ids)
    with pytest.raises(walq.ArgumentError):
        q.ack_many(ids[:2], attempts=[1, 1], ran=[walq.Ran(1.0, 0.5, 7)])
    # A ran that is not one, or out of range, is one clear error on every outcome, writing
    # nothing (it was a struct.error from deep in the log's encoder).
    for bad in ("x", (1.0, 2.0), walq.Ran(math.nan, 1.0, 5), walq.Ran(1.0, -1.0, 5),
                walq.Ran(1.0, 1.0, -3), walq.Ran(1.0, 1.0, 1 << 40)):  # fmt: skip
        with pytest.raises(walq.ArgumentError, match=r"^ran"):
            q.ack(ids[0], attempt=1, ran=bad)
        with pytest.raises(walq.ArgumentError, match=r"^ran"):
            q.fail(ids[0], "x", attempt=1, ran=bad)
        with pytest.raises(walq.ArgumentError, match=r"^ran"):
            q.release(ids[0], attempt=1, ran=bad)
    assert q.status(ids[0]) == "running"
    assert q.ack_many(ids[:2], attempts=[1, 1], ran=[walq.Ran(1.0, 0.5, 7)] * 2) == []
    assert q.fail(ids[2], "x", permanent=True, attempt=1, ran=walq.Ran(2.0, 0.1, 8)) == "dead"
    q.release(ids[3], attempt=1, ran=walq.Ran(3.0, 0.0, 0))
    assert [q.status(j) for j in ids] == ["done", "done", "dead", "pending"]
    job = q.claim()
    assert job is not None and job.id == ids[3]
    q.ack(job.id, attempt=job.attempt, result={"r": 1}, ran=walq.Ran(4.0, 0.2, 9))
    assert q.status(ids[3]) == "done"
