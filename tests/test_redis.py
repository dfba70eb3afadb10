"""The Redis queue beyond the shared contract: rescues across processes and hosts,
stale results after a rescue, workers sharing one server, durability checks, the
CLI's functions. Needs a redis-server at WALQ_REDIS_URL (bash .ci/redis.sh start);
skipped with the reason otherwise. (The contract itself: tests/test_contract.py.)
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import walq
from tests import worker_tasks
from tests.test_contract import REDIS_SKIP, SKIP_REDIS, need_redis, redis_url
from walq import backends
from walq.core.retry import Backoff
from walq.core.state import JobInfo

pytestmark = [
    pytest.mark.redis,
    pytest.mark.skipif(SKIP_REDIS, reason=REDIS_SKIP or ""),
]


@pytest.fixture(autouse=True)
def _redis_required() -> None:
    need_redis()


ROOT = Path(__file__).resolve().parent.parent

# A Worker on the Redis queue, in its own process: argv url, result file, lease (0:
# the default), processes, prefetch, the handlers' kind ("def" or "async def").
WORKER_SCRIPT = """
import json, os, sys
from walq.redisq.queue import RedisQueue
from walq.worker.pool import Worker
from tests import worker_tasks

url, out, lease = sys.argv[1], sys.argv[2], float(sys.argv[3])
processes, prefetch = int(sys.argv[4]), int(sys.argv[5])
q = RedisQueue.open(url)
w = Worker(q, worker_tasks.REGISTRIES[sys.argv[6]], processes=processes, prefetch=prefetch,
           shutdown_grace=10.0, kill_grace=1.0, lease=lease or None)
code = w.run()
q.close()
with open(out, "w") as f:
    json.dump({"pid": os.getpid(), "code": code, "counters": w.counters}, f)
"""


@pytest.fixture
def url() -> Iterator[str]:
    """A queue URL with a fresh prefix, its keys deleted afterwards."""
    import redis

    base = redis_url()
    assert base is not None
    prefix = f"walqtest-{uuid.uuid4().hex[:12]}"
    sep = "&" if "?" in base else "?"
    yield f"{base}{sep}prefix={prefix}"
    client = redis.Redis.from_url(base)
    names = list(client.scan_iter(match=f"{{{prefix}}}:*", count=1000))
    if names:
        client.delete(*names)
    client.close()


def open_q(url: str, **kw: Any) -> Any:
    from walq.redisq.queue import RedisQueue

    return RedisQueue.open(url, **kw)


def start_worker(
    url: str, result: Path, lease: float = 0.0, processes: int = 2, prefetch: int = 1,
    kind: str = "def",
) -> subprocess.Popen[str]:  # fmt: skip
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    options = (lease, processes, prefetch, kind)
    return subprocess.Popen(
        [sys.executable, "-c", WORKER_SCRIPT, url, str(result), *map(str, options)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def wait_for(predicate: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError("timed out waiting")


def ledger(path: Path) -> list[list[str]]:
    return [line.split() for line in path.read_text().splitlines()] if path.exists() else []


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def stop(proc: subprocess.Popen[str], sig: int = signal.SIGTERM, timeout: float = 30) -> str:
    """Signal a process this test started, and reap it; its output."""
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate(timeout=10)
    return out


def check_counts(url: str) -> None:
    """The counts in P:n and P:tn agree with the jobs' hashes and the indexes."""
    import redis

    from walq.redisq.url import key_prefix, parse_url

    target = parse_url(url)
    client_url, prefix = target.client_url, key_prefix(target.prefix)
    c = redis.Redis.from_url(client_url, decode_responses=True)
    try:
        states: dict[str, int] = {}
        per_task: dict[str, int] = {}
        for name in c.scan_iter(match=f"{prefix}:j:*", count=1000):
            s, t = c.hmget(name, "s", "t")
            assert isinstance(s, str) and isinstance(t, str), (name, s, t)  # decode_responses
            s = "pending" if s == "reserved" else s
            states[s] = states.get(s, 0) + 1
            per_task[f"{s}:{t}"] = per_task.get(f"{s}:{t}", 0) + 1
        counts = {k: int(v) for k, v in c.hgetall(f"{prefix}:n").items()}
        for state in ("pending", "scheduled", "running", "dead"):
            assert counts.get(state, 0) == states.get(state, 0), (state, counts, states)
        tn = {k: int(v) for k, v in c.hgetall(f"{prefix}:tn").items() if int(v)}
        assert tn == per_task
        ready = sum(c.zcard(f"{prefix}:r:{t!s}") for t in c.smembers(f"{prefix}:rt"))
        assert ready + c.zcard(f"{prefix}:res") == states.get("pending", 0)
        assert c.zcard(f"{prefix}:sch") == states.get("scheduled", 0)
        assert c.zcard(f"{prefix}:run") == states.get("running", 0)
        assert c.zcard(f"{prefix}:dead") == states.get("dead", 0)
        live = sum(int(c.hget(n, "sz") or 0) for n in c.scan_iter(match=f"{prefix}:j:*"))
        assert counts.get("bytes", 0) == live
    finally:
        c.close()


@pytest.mark.parametrize("kind", list(worker_tasks.REGISTRIES))
def test_killed_worker_process_job_is_rescued(url: str, tmp_path: Path, kind: str) -> None:
    """kill -9 of a Worker mid-job: its lease expires and the job runs again, attempt 2."""
    notes = tmp_path / "ledger"
    with open_q(url) as q:
        jid = q.enqueue("sleeps", {"ledger": str(notes), "seconds": 60})
        proc = start_worker(url, tmp_path / "result", lease=2.0, kind=kind)
        try:
            wait_for(lambda: ledger(notes), timeout=30)
            assert q.status(jid) == "running"
            os.kill(proc.pid, signal.SIGKILL)
            stop(proc)
        finally:
            stop(proc, signal.SIGKILL)
        lines = ledger(notes)
        assert all(x[0] == str(jid) and x[3] == "start" for x in lines)
        for x in lines:
            wait_for(lambda x=x: not alive(int(x[2])), timeout=10)  # children died with it
        job = q.claim(timeout=10, lease=30)
        # Attempt 2, unless a slow start made the Worker's own lease lapse once already.
        assert job is not None and job.id == jid
        assert job.attempt > max(int(x[1]) for x in lines)
        assert q.stats()["expired"] >= 1
        q.ack(job.id, attempt=job.attempt)


@pytest.mark.parametrize("kind", list(worker_tasks.REGISTRIES))
def test_two_workers_never_run_the_same_attempt_twice(url: str, tmp_path: Path, kind: str) -> None:
    """Two Worker processes on one queue: every job runs, no (job, attempt) runs twice
    (plain handlers, or coroutines many at once on each worker process)."""
    notes = tmp_path / "ledger"
    n = 300
    with open_q(url) as q:
        ids = q.enqueue_many([("sleeps", {"ledger": str(notes), "seconds": 0.02})] * n)
        results = [tmp_path / "result-a", tmp_path / "result-b"]
        procs = [start_worker(url, r, kind=kind) for r in results]
        try:
            wait_for(lambda: q.stats()["unfinished"] == 0, timeout=120)
        finally:
            outs = [stop(p) for p in procs]
        assert [p.returncode for p in procs] == [0, 0], outs
        starts = [(int(x[0]), int(x[1])) for x in ledger(notes) if x[3] == "start"]
        assert len(starts) == len(set(starts)) == n  # each job once, no attempt twice
        assert sorted(j for j, _ in starts) == ids
        counters = [json.loads(r.read_text())["counters"] for r in results]
        assert sum(c["ok"] for c in counters) == n
        if kind == "def":  # (one event loop may run them all before the other host starts)
            assert all(c["ok"] > 0 for c in counters), counters  # both shared the work
        assert all(c["stale"] == 0 for c in counters)
        assert q.stats()["done"] == n
    check_counts(url)


def overlaps(lines: list[list[str]]) -> list[tuple[int, list[str]]]:
    """Runs of one job that overlapped in time, from a ledger of `ID ATTEMPT PID start|end`."""
    found: list[tuple[int, list[str]]] = []
    running: dict[tuple[str, str, str], bool] = {}
    for x in lines:
        jid, key = int(x[0]), (x[0], x[1], x[2])
        if x[3] == "start":
            if any(k[0] == x[0] for k in running):
                found.append((jid, x))
            running[key] = True
        elif x[3] == "end":
            running.pop(key, None)
    return found


def lease_of(url: str, jid: int) -> float:
    """Seconds left on a running job's lease, read from the server."""
    import redis

    from walq.redisq.url import key_prefix, parse_url

    target = parse_url(url)
    client_url, prefix = target.client_url, key_prefix(target.prefix)
    c = redis.Redis.from_url(client_url)
    try:
        now_s, now_us = c.time()
        score = c.zscore(f"{prefix}:run", jid)
        assert score is not None
        return (score - (now_s * 1000 + now_us // 1000)) / 1000.0
    finally:
        c.close()


def test_a_heartbeat_keeps_a_long_job_leased(url: str, tmp_path: Path) -> None:
    """A job four times longer than the Worker's lease runs once: its lease is renewed."""
    notes = tmp_path / "ledger"
    with open_q(url) as q:
        jid = q.enqueue("sleeps", {"ledger": str(notes), "seconds": 6})
        proc = start_worker(url, tmp_path / "result", lease=1.5)
        try:
            wait_for(lambda: q.status(jid) == "done", timeout=60)
        finally:
            out = stop(proc)
        assert proc.returncode == 0, out
        starts = [x for x in ledger(notes) if x[3] == "start"]
        assert [(int(x[0]), int(x[1])) for x in starts] == [(jid, 1)], starts
        counters = json.loads((tmp_path / "result").read_text())["counters"]
        assert counters["ok"] == 1 and counters["lease_lost"] == 0 and counters["stale"] == 0
        assert q.stats()["expired"] == 0


def test_a_dead_hosts_job_is_back_within_about_one_lease(url: str, tmp_path: Path) -> None:
    """The default lease is short (not the longest timeout + 30 s): kill -9, rescued soon."""
    from walq.worker.heartbeat import DEFAULT_LEASE

    notes = tmp_path / "ledger"
    with open_q(url) as q:
        # Its timeout is 30 s: a lease of the longest timeout + 2 kill graces + 30 s was 62 s.
        jid = q.enqueue("sleeps", {"ledger": str(notes), "seconds": 25})
        proc = start_worker(url, tmp_path / "result")
        try:
            wait_for(lambda: ledger(notes), timeout=30)
            assert lease_of(url, jid) <= DEFAULT_LEASE + 1
            os.kill(proc.pid, signal.SIGKILL)
            killed = time.monotonic()
            stop(proc)
        finally:
            stop(proc, signal.SIGKILL)
        job = q.claim(timeout=4 * DEFAULT_LEASE, lease=30)
        back = time.monotonic() - killed
        assert job is not None and job.id == jid and job.attempt == 2
        assert back < 2 * DEFAULT_LEASE + 5, back
        q.ack(job.id)


def test_prefetched_jobs_keep_their_leases_until_they_run(url: str, tmp_path: Path) -> None:
    """Two hosts, jobs longer than half the lease, prefetch 8: no job runs on both at once."""
    notes = tmp_path / "ledger"
    n = 16
    with open_q(url) as q:
        q.enqueue_many([("sleeps", {"ledger": str(notes), "seconds": 1.0})] * n)
        results = [tmp_path / "result-a", tmp_path / "result-b"]
        procs = [start_worker(url, r, lease=2.0, processes=2, prefetch=8) for r in results]
        try:
            wait_for(lambda: q.stats()["unfinished"] == 0, timeout=120)
        finally:
            outs = [stop(p) for p in procs]
        assert [p.returncode for p in procs] == [0, 0], outs
        lines = ledger(notes)
        assert overlaps(lines) == []
        starts = [int(x[0]) for x in lines if x[3] == "start"]
        assert len(starts) == len(set(starts)) == n  # each ran once: no lease ran out
        for r in results:
            counters = json.loads(r.read_text())["counters"]
            assert counters["lease_lost"] == 0 and counters["stale"] == 0, counters
        assert q.stats()["expired"] == 0


def test_a_lost_lease_is_counted_and_logged(url: str, tmp_path: Path) -> None:
    """The owner stalls past its lease and the job is rescued: the heartbeat says so once."""
    notes = tmp_path / "ledger"
    with open_q(url) as q:
        jid = q.enqueue("sleeps", {"ledger": str(notes), "seconds": 5})
        proc = start_worker(url, tmp_path / "result", lease=1.0, processes=1)
        try:
            wait_for(lambda: ledger(notes), timeout=30)
            os.kill(proc.pid, signal.SIGSTOP)  # the handler's process runs on
            try:
                rescued = q.claim(timeout=30, lease=60)
                assert rescued is not None and rescued.id == jid and rescued.attempt == 2
                q.ack(jid)
            finally:
                os.kill(proc.pid, signal.SIGCONT)
            wait_for(lambda: [x for x in ledger(notes) if x[3] == "end"], timeout=30)
            time.sleep(1.0)  # a heartbeat or two after the handler ended
        finally:
            out = stop(proc)
        assert proc.returncode == 0, out
        counters = json.loads((tmp_path / "result").read_text())["counters"]
        assert counters["lease_lost"] == 1 and counters["stale"] == 1, counters
        assert counters["ok"] == 0, counters  # attempt 1's result was dropped
        assert out.count("lease lost") == counters["lease_lost"], out


def test_a_worker_rides_out_a_server_restart(tmp_path: Path) -> None:
    """kill -9 of redis-server mid-job: handlers run on, results are reported once it is back."""
    from tools.torture_redis import RedisServer

    server = RedisServer(tmp_path / "redis")
    server.start()
    url = f"{server.url}?prefix=restart"
    notes = tmp_path / "ledger"
    try:
        with open_q(url) as q:
            ids = q.enqueue_many([("sleeps", {"ledger": str(notes), "seconds": 4.0})] * 2)
        proc = start_worker(url, tmp_path / "result", lease=10.0, processes=2)
        try:
            # Both handlers started (a busy host may start the second process late).
            wait_for(lambda: sum(x[3] == "start" for x in ledger(notes)) >= 2, timeout=60)
            server.kill()
            wait_for(lambda: len(ledger(notes)) >= 4, timeout=30)  # both ended, server down
            time.sleep(1.0)  # the worker meets the outage: retries, backs off
            assert proc.poll() is None
            server.start()
            with open_q(url) as q:
                wait_for(lambda: all(q.status(j) == "done" for j in ids), timeout=60)
                later = q.enqueue("sleeps", {"ledger": str(notes), "seconds": 0.1})
                wait_for(lambda: q.status(later) == "done", timeout=60)
        finally:
            out = stop(proc)
        assert proc.returncode == 0, out
        counters = json.loads((tmp_path / "result").read_text())["counters"]
        assert counters["ok"] == 3 and counters["stale"] == 0 and counters["lease_lost"] == 0
        starts = [(int(x[0]), int(x[1])) for x in ledger(notes) if x[3] == "start"]
        assert sorted(starts) == [(jid, 1) for jid in [*ids, later]]
        # The outage is logged once when it starts and once when it ends.
        assert out.count("connection lost") == 1 and out.count("connection back") == 1, out
        assert out.count("event listener:") <= 1, out
    finally:
        server.stop()


def test_stale_ack_after_rescue_is_refused(url: str) -> None:
    """Host A's lease expires, host B gets the job: A can no longer ack, fail or release it."""
    with open_q(url) as a, open_q(url) as b:
        jid = a.enqueue("t", 1)
        mine = a.claim(lease=0.3)
        assert mine is not None
        time.sleep(0.4)
        theirs = b.claim(lease=30)  # the claim rescues the expired lease first
        assert theirs is not None and theirs.id == jid and theirs.attempt == 2
        steps: tuple[Callable[[], object], ...] = (
            lambda: a.ack(jid, attempt=mine.attempt),
            lambda: a.fail(jid, "late", attempt=mine.attempt),
            lambda: a.release(jid, attempt=mine.attempt),
            lambda: a.extend(jid, 10, attempt=mine.attempt),
        )
        for step in steps:
            with pytest.raises(walq.LeaseLost):
                step()
        assert a.ack_many([jid], attempts=[mine.attempt], strict=False)[0][0] == jid
        assert b.status(jid) == "running"
        b.ack(jid, attempt=theirs.attempt)
        with pytest.raises(walq.LeaseLost):
            a.fail(jid, "later still", attempt=mine.attempt)
        time.sleep(0.1)
        b.stats()  # a reaper pass
        assert a.status(jid) == "done" and b.claim() is None


def test_a_stale_holder_without_attempt_cannot_finish_the_rescuers_job(url: str) -> None:
    """A's lease expires, B claims attempt 2: A's ack() (no attempt=) is refused, not applied."""
    with open_q(url) as a, open_q(url) as b, open_q(url) as admin:
        jid = a.enqueue("t", 1)
        assert a.claim(lease=0.3) is not None
        time.sleep(0.4)
        theirs = b.claim(lease=30)
        assert theirs is not None and theirs.id == jid and theirs.attempt == 2
        for who in (a, admin):  # a stale claim, and a handle that never claimed it
            steps: tuple[Callable[[], object], ...] = (
                functools.partial(who.ack, jid),
                functools.partial(who.fail, jid, "late"),
                functools.partial(who.release, jid),
                functools.partial(who.extend, jid, 10),
            )
            for step in steps:
                with pytest.raises(walq.LeaseLost, match=f"job {jid}"):
                    step()
            assert who.ack_many([jid], strict=False)[0][0] == jid
        assert b.status(jid) == "running"
        b.extend(jid, 30)  # the rescuer's own claim, found without attempt=
        b.ack(jid)
        assert admin.status(jid) == "done"
        # Administrative calls act without a claim.
        other = admin.enqueue("t", 2)
        assert a.claim(lease=30) is not None
        assert admin.cancel(other) is True


def test_a_stale_claim_cannot_finish_a_requeued_job_with_the_same_attempt_number(
    url: str,
) -> None:
    """Requeue resets attempts, so attempt numbers repeat; the claim token tells them apart."""
    with open_q(url) as a, open_q(url) as b:
        jid = a.enqueue("t", 1)
        old = a.claim(lease=0.2)
        assert old is not None and old.attempt == 1
        time.sleep(0.3)
        second = b.claim(lease=30)
        assert second is not None
        b.fail(jid, "gave up", permanent=True, attempt=second.attempt)
        b.requeue(jid)
        new = b.claim(lease=30)
        assert new is not None and new.attempt == 1  # the same number as `old`
        with pytest.raises(walq.LeaseLost, match="claimed again"):
            a.ack(jid, attempt=old.attempt)
        b.ack(jid, attempt=new.attempt)
        assert b.status(jid) == "done"


def test_rescue_never_flips_a_finished_job_back(url: str) -> None:
    """Acks racing lease expiry and a busy reaper: an acked job stays done."""
    with open_q(url) as q, open_q(url) as reaper:
        stop_reaping = threading.Event()

        def reap() -> None:
            while not stop_reaping.is_set():
                reaper.stats()

        t = threading.Thread(target=reap)
        t.start()
        try:
            acked = lost = 0
            for i in range(150):
                jid = q.enqueue("t", i)
                job = q.claim(lease=0.005)
                assert job is not None
                time.sleep(0.005 * (i % 3) / 2)
                try:
                    q.ack(jid, attempt=job.attempt)
                except walq.LeaseLost:
                    lost += 1
                    assert q.status(jid) in ("pending", "running")
                    q.cancel(jid)
                else:
                    acked += 1
                    assert q.status(jid) == "done"
        finally:
            stop_reaping.set()
            t.join(10)
        st = q.stats()
        assert st["unfinished"] == 0 and st["done"] == acked and acked + lost == 150
    check_counts(url)


def test_cancel_on_one_host_reaches_the_worker_holding_the_job(url: str) -> None:
    """cancel_listeners of the claiming process hear of a cancel made elsewhere."""
    with open_q(url) as holder, open_q(url) as admin:
        heard: list[int] = []
        got = threading.Event()

        def listener(jid: int) -> None:
            heard.append(jid)
            got.set()

        holder.cancel_listeners.append(listener)
        jid = admin.enqueue("t", 1)
        job = holder.claim(lease=30)
        assert job is not None
        assert admin.cancel(jid)
        assert got.wait(5) and heard == [jid]


def test_many_claimers_take_each_job_once(url: str) -> None:
    """Eight handles claiming at once (some through accept) never share a job."""
    with open_q(url) as q:
        ids = q.enqueue_many([("t", i) for i in range(400)])
    taken: list[int] = []
    lock = threading.Lock()

    def claimer(k: int) -> None:
        with open_q(url) as mine:
            while True:
                if k % 2:
                    jobs = mine.claim_many(7, lease=30, accept=lambda info: True)
                else:
                    jobs = mine.claim_many(5, lease=30)
                if not jobs:
                    return
                mine.ack_many([j.id for j in jobs], attempts=[j.attempt for j in jobs])
                with lock:
                    taken.extend(j.id for j in jobs)

    threads = [threading.Thread(target=claimer, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(taken) == ids
    check_counts(url)


def test_counts_stay_true_through_every_transition(url: str) -> None:
    """A mixed workload (keys, delays, fails, releases, cancels, requeues, purges,
    expiries, deferrals) leaves the counts equal to a recount of the jobs."""
    import random

    rng = random.Random(7)
    with open_q(url) as q:
        for i in range(300):
            op = rng.random()
            if op < 0.35:
                q.enqueue(rng.choice("abc"), i, key=rng.choice([None, "k1", "k2"]),
                          delay=rng.choice([0, 0, 0.01]), priority=rng.randint(-2, 2))  # fmt: skip
                continue
            accept = None
            if op < 0.45:

                def accept(info: Any) -> bool | float:
                    return rng.choice([True, False, time.monotonic() + 0.01])

            jobs = q.claim_many(rng.randint(1, 3), lease=rng.choice([0.005, 30]), accept=accept)
            for job in jobs:
                what = rng.random()
                with contextlib.suppress(walq.StateError):
                    if what < 0.4:
                        q.ack(job.id, attempt=job.attempt)
                    elif what < 0.6:
                        q.fail(job.id, "x", attempt=job.attempt, delay=rng.choice([0, 0.01]),
                               permanent=rng.random() < 0.3)  # fmt: skip
                    elif what < 0.7:
                        q.release(job.id, attempt=job.attempt)
                    elif what < 0.8:
                        q.cancel(job.id)
            if rng.random() < 0.1:
                dead = q.dead_jobs()
                if dead:
                    q.requeue(dead[0].id)
                q.purge()
            if i % 50 == 0:
                q.stats()
                check_counts(url)
        time.sleep(0.05)
        q.stats()
    check_counts(url)


def test_durable_server_is_recognised(url: str) -> None:
    """The CI server (appendonly yes, appendfsync always) opens without a warning."""
    import warnings

    from walq.errors import DurabilityWarning

    with warnings.catch_warnings():
        warnings.simplefilter("error", DurabilityWarning)
        with open_q(url, require_durable=True) as q:
            assert q.durable is True
            assert q.persistence["appendfsync"] == "always"


@pytest.fixture
def weak_server() -> Iterator[str]:
    """A throwaway redis-server without AOF, on a free loopback port (this test's own)."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed here")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    workdir = tempfile.mkdtemp(prefix="walq-weak-redis.")
    proc = subprocess.Popen(
        [binary, "--bind", "127.0.0.1", "--port", str(port), "--dir", workdir,
         "--appendonly", "no", "--save", ""],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        import redis

        client = redis.Redis(host="127.0.0.1", port=port, socket_connect_timeout=1)
        wait_for(lambda: _pings(client), timeout=10)
        client.close()
        yield f"redis://127.0.0.1:{port}/0?prefix=weak"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        shutil.rmtree(workdir, ignore_errors=True)


def _pings(client: Any) -> bool:
    import redis

    try:
        return bool(client.ping())
    except redis.RedisError:
        return False


def test_weak_persistence_warns_or_refuses(weak_server: str) -> None:
    """appendonly no: a DurabilityWarning, or DurabilityError when durability is required."""
    from walq.errors import DurabilityError, DurabilityWarning
    from walq.redisq.queue import RedisQueue

    with (
        pytest.warns(DurabilityWarning, match="appendonly is 'no'"),
        RedisQueue.open(weak_server) as q,
    ):
        assert q.durable is False
        q.enqueue("t", 1)
    with pytest.raises(DurabilityError, match="appendfsync always"):
        RedisQueue.open(weak_server, require_durable=True)
    with pytest.raises(DurabilityError):
        RedisQueue.open(weak_server + "&require_durable=1")


def test_url_options(url: str) -> None:
    """The password never shows; file-only options are accepted, unknown ones refused."""
    from walq.redisq.queue import RedisQueue
    from walq.redisq.url import parse_url

    t = parse_url(
        "redis://:s3cret@127.0.0.1:6390/2?prefix=jobs&require_durable=yes&socket_keepalive=1"
    )
    client_url, prefix, durable, shown = t.client_url, t.prefix, t.require_durable, t.shown
    assert prefix == "jobs" and durable is True and "s3cret" not in shown
    assert shown == "redis://127.0.0.1:6390/2?prefix=jobs"
    assert "s3cret" in client_url and "socket_keepalive=1" in client_url
    assert "prefix" not in client_url
    with pytest.raises(walq.ArgumentError, match="prefix"):
        parse_url("redis://127.0.0.1/0?prefix=")
    with RedisQueue.open(url, sync="always", segment_size=1 << 20, lock_timeout=1.0) as q:
        assert "prefix=walqtest-" in q.path
    with pytest.raises(walq.ArgumentError, match="bogus"):
        RedisQueue.open(url, bogus=1)


def test_next_due_in_moves_what_is_already_due(url: str) -> None:
    """An overdue job or lease is moved, so next_due_in points to the future, not 0."""
    with open_q(url) as a, open_q(url) as b:
        a.enqueue("t", 1, delay=0.05)
        a.enqueue("t", 2)
        assert b.claim(lease=0.05) is not None
        later = a.enqueue("t", 3, delay=30)
        time.sleep(0.1)
        due = a.next_due_in()
        assert due is not None and 29 < due <= 30
        assert a.stats()["pending"] == 2 and a.status(later) == "scheduled"


@pytest.mark.skipif(not hasattr(walq, "RedisQueue"), reason="Queue.open dispatch not wired yet")
def test_queue_open_dispatches_a_redis_url(url: str) -> None:
    """walq.Queue.open(redis://...) gives a RedisQueue with the options passed through."""
    q = walq.Queue.open(url, max_pending=3, sync="always")
    try:
        assert isinstance(q, walq.RedisQueue) and q.max_pending == 3
    finally:
        q.close()


def test_claim_many_with_accept_and_a_task_filter(url: str) -> None:
    """tasks= and accept= together: only those tasks are offered to accept."""
    with open_q(url) as q:
        q.enqueue("a", 1)
        b = q.enqueue("b", 2)
        asked: list[str] = []

        def accept(info: JobInfo) -> bool:
            asked.append(info.task)
            return True

        jobs = q.claim_many(5, tasks=["b"], accept=accept)
        assert [j.id for j in jobs] == [b] and asked == ["b"]
        assert q.stats()["pending"] == 1


def test_a_payload_damaged_on_the_server_is_dead_lettered_not_delivered(url: str) -> None:
    """A job hash overwritten with bad JSON (a foreign write) is dead, never handed out."""
    import redis

    from walq.redisq.url import key_prefix, parse_url

    target = parse_url(url)
    client_url, prefix = target.client_url, key_prefix(target.prefix)
    with open_q(url) as q:
        bad = q.enqueue("t", {"ok": True})
        good = q.enqueue("t", 2)
        c = redis.Redis.from_url(client_url)
        c.hset(f"{prefix}:j:{bad}", "p", b"{not json")
        c.close()
        job = q.claim()
        assert job is not None and job.id == good
        assert q.status(bad) == "dead"
        (dead,) = q.dead_jobs()
        assert dead.payload == b"{not json" and "not valid JSON" in dead.error


def test_missing_redis_py_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without redis-py: MissingDependency, an ImportError naming the extra to install."""
    from walq.redisq.queue import RedisQueue

    monkeypatch.setitem(sys.modules, "redis", None)
    with pytest.raises(ImportError, match=r"walq\[redis\]") as info:
        RedisQueue.open("redis://127.0.0.1:1/0")
    assert isinstance(info.value, walq.WalqError)


def test_cli_functions(url: str) -> None:
    """What `walq stats|dead|enqueue URL` call: read-only stats, dead jobs, enqueue."""
    from walq.ops import dead as ops_dead
    from walq.redisq import admin as redisq

    with pytest.raises(walq.NotAQueueError):
        redisq.inspect_stats(url)  # nothing there yet, and nothing created
    jid = redisq.enqueue(url, "t", {"a": 1}, key="k")
    assert redisq.enqueue(url, "t", {"a": 2}, key="k") == jid
    with open_q(url) as q:
        job = q.claim(lease=0.2)
        assert job is not None
        q.record_worker_status({"pid": 1234, "processes": 2, "counters": {"ok": 5}})
        blob = q.enqueue("b", b"\x01\x02")
        q.claim(tasks=["b"])
        q.fail(blob, "Traceback ...\nValueError: no", permanent=True)
    time.sleep(0.3)
    st = redisq.inspect_stats(url)
    assert (st["running"], st["dead"], st["expired_leases"]) == (1, 1, 1)  # not moved
    assert st["durable"] is True and st["workers"][0]["pid"] == 1234
    assert st["workers"][0]["counters"] == {"ok": 5} and st["due_now"] == 0
    (dead,) = ops_dead.dead_jobs(url)
    assert (dead.id, dead.payload_kind, dead.payload) == (blob, "bytes", b"\x01\x02")
    assert dead.summary()["error"] == "Traceback ..."
    with pytest.raises(walq.StateError):
        ops_dead.dead_jobs(url, ids=[jid])
    assert redisq.requeue(url, [blob]) == [blob]
    with open_q(url) as q:
        assert q.status(blob) == "pending"
        q.claim(tasks=["b"])
        q.fail(blob, "again", permanent=True)
    assert redisq.purge(url) == 1
    assert backends.is_url(url) and not backends.is_url("/var/lib/q")


def test_cli_enqueue_takes_after_run_at_and_unique_for(url: str) -> None:
    """`walq enqueue URL TASK --after ID --run-at TIME --unique-for S`: the server's enqueue,
    checked the same way; a bad value is one line naming it."""
    from click.testing import CliRunner

    from walq.cli.app import main

    def cli(*args: str) -> Any:
        return CliRunner().invoke(main, ["enqueue", url, *args], catch_exceptions=False)

    with open_q(url) as q:
        parent = q.enqueue("p", 1)
        dep = cli("d", "--after", str(parent), "--key", "dk", "--unique-for", "60")
        later = cli("l", "--run-at", "2036-01-01T00:00:00+00:00")
        assert dep.exit_code == 0 and later.exit_code == 0, (dep.stderr, later.stderr)
        assert q.status(int(dep.stdout)) == "waiting"
        assert q.status(int(later.stdout)) == "scheduled"
        bad = cli("x", "--run-at", "2036-01-01T00:00:00")
        assert bad.exit_code == 2 and bad.stderr.count("\n") == 1 and "naive" in bad.stderr
        bad = cli("x", "--after", "999999")
        assert bad.exit_code == 2 and "job 999999 does not exist" in bad.stderr


@pytest.mark.parametrize("delay", [1e308, 10 * 365 * 86400.0 + 1, float("nan")])
def test_a_delay_out_of_bounds_is_refused_as_on_the_file_queue(url: str, delay: float) -> None:
    with walq.Queue.open(url) as q:
        with pytest.raises(walq.ArgumentError, match="delay"):
            q.enqueue("t", b"", delay=delay)
        with pytest.raises(walq.ArgumentError, match="delay"):
            q.enqueue_many([("t", b"", {"delay": delay})])
        q.enqueue("t", b"")
        job = q.claim()
        assert job is not None
        with pytest.raises(walq.ArgumentError, match="delay"):
            q.fail(job.id, "e", delay=delay)
        assert q.status(job.id) == "running" and q.stats()["unfinished"] == 1


def test_every_script_compiles_on_the_server_and_is_registered(url: str) -> None:
    """SCRIPT LOAD compiles each script as the queue runs it; a wrong ARGV count is refused."""
    import redis

    from walq.redisq import lua
    from walq.redisq.url import parse_url

    client = redis.Redis.from_url(parse_url(url).client_url)
    try:
        for name in lua.SCRIPTS:
            client.script_load(lua.source(name))  # a syntax error raises ResponseError
    finally:
        client.close()
    with open_q(url) as q:
        assert set(q._scripts) == set(lua.SCRIPTS)
        with pytest.raises(AssertionError, match="script ack called with 1 arguments"):
            q._run("ack")


class _Fixed(random.Random):
    """random() always `u`: the drawn fraction of a backoff delay."""

    def __init__(self, u: float) -> None:
        super().__init__()
        self.u = u

    def random(self) -> float:
        return self.u


def _retry_delays(
    url: str, backoff: Backoff | None, attempts: int, u: float
) -> list[tuple[float, float, float]]:
    """Fail one job `attempts` times without a delay: per attempt, (expected, low, high)
    seconds, where the scheduled delay is known to lie in [low, high] (server time)."""
    import redis

    from walq.redisq.url import key_prefix, parse_url

    target = parse_url(url)
    client_url, prefix = target.client_url, key_prefix(target.prefix)
    c = redis.Redis.from_url(client_url)

    def now() -> float:
        s, us = c.time()
        return s + us / 1e6

    out: list[tuple[float, float, float]] = []
    try:
        with open_q(url, rng=_Fixed(u)) as q:
            if backoff is not None:
                q._backoff = backoff
            jid = q.enqueue("t", None, max_attempts=attempts + 1)
            for attempt in range(1, attempts + 1):
                job = q.claim()
                assert job is not None and (job.id, job.attempt) == (jid, attempt)
                before = now()
                assert q.fail(jid, "boom") == "scheduled"
                after = now()
                expected = u * (backoff or Backoff()).ceiling(attempt)
                raw = c.hget(f"{prefix}:j:{jid}", "due")
                if raw is None:  # no delay: pending again at once
                    out.append((expected, 0.0, 0.0))
                    continue
                due = int(raw) / 1000.0
                out.append((expected, due - after - 0.001, due - before + 0.001))
                c.zadd(f"{prefix}:sch", {str(jid): 0})  # due now: the next claim takes it
    finally:
        c.close()
    return out


@pytest.mark.parametrize("u", [0.0, 0.5, 0.999])
def test_the_default_retry_delay_is_backoffs(url: str, u: float) -> None:
    """fail() without a delay: u * min(cap, base * 2^attempt), as walq.core.retry.Backoff."""
    for expected, low, high in _retry_delays(url, None, 4, u):
        assert low <= expected <= high
        assert 0.0 <= expected <= Backoff().ceiling(4)


def test_the_retry_delay_follows_backoffs_parameters(url: str) -> None:
    """The script applies the base and cap it is given, not constants of its own."""
    backoff = Backoff(base=0.125, cap=0.75)
    delays = _retry_delays(url, backoff, 4, 0.5)
    for expected, low, high in delays:
        assert low <= expected <= high
    assert [e for e, _, _ in delays] == [0.125, 0.25, 0.375, 0.375]
