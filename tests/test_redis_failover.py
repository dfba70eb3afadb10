"""A failover under load, on the Sentinel deployment of .ci/redis.sh (WALQ_REDIS_SENTINEL_URL).

Two owner processes claim and ack while this process enqueues; the primary is
killed (SIGKILL) and Sentinel promotes the replica. With min_replicas=1, every
enqueue that returned an id is run and done, no job that was acked runs again,
and both owners carry on after the failover without a restart. The killed
server is started again from its own config file (Sentinel makes it a replica).
A second test makes the loss that min_replicas prevents certain (the replica cut off
before the primary dies) and shows it with and without the option.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import sentinel
from tests.test_contract import REDIS_REQUIRED, REDIS_SKIPS
from walq.errors import BackendError, DurabilityWarning

ROOT = Path(__file__).resolve().parent.parent
SKIP = REDIS_SKIPS["redis-sentinel"] is not None and not REDIS_REQUIRED

pytestmark = [
    pytest.mark.redis,
    pytest.mark.skipif(SKIP, reason=REDIS_SKIPS["redis-sentinel"] or ""),
]

# An owner: claims and acks until the stop file appears, logging each step as a
# JSON line: ["run", id, attempt, payload, pid], ["ack", id, attempt, pid, t].
OWNER = """
import json, os, sys, time
from walq.errors import BackendError, DurabilityWarning, StateError
from walq.redisq.queue import RedisQueue

url, log, stop = sys.argv[1:4]
q = RedisQueue.open(url, min_replicas=1, replica_timeout=2.0)
with open(log, "a", buffering=1) as f:
    while not os.path.exists(stop):
        try:
            job = q.claim(lease=3.0, timeout=0.5)
        except BackendError as exc:
            f.write(json.dumps(["err", str(exc)]) + "\\n")
            time.sleep(0.05)
            continue
        if job is None:
            continue
        f.write(json.dumps(["run", job.id, job.attempt, job.payload, os.getpid()]) + "\\n")
        try:
            q.ack(job.id, attempt=job.attempt)
        except (BackendError, StateError) as exc:
            f.write(json.dumps(["ackerr", job.id, job.attempt, str(exc)]) + "\\n")
            continue
        f.write(json.dumps(["ack", job.id, job.attempt, os.getpid(), time.time()]) + "\\n")
q.close()
"""


@pytest.fixture
def url() -> Iterator[str]:
    with sentinel.fresh_queue_url() as u:
        yield u


def _replicas_up(host: str, port: int) -> bool:
    return len(sentinel.replicas(host, port)) >= 1


def _lines(paths: list[Path]) -> list[list[Any]]:
    out: list[list[Any]] = []
    for p in paths:
        if p.exists():
            for line in p.read_text().splitlines():
                if line.strip():
                    out.append(json.loads(line))
    return out


def test_a_failover_under_load_loses_no_acknowledged_job_and_reruns_no_acked_one(
    url: str, tmp_path: Path
) -> None:

    from walq.redisq.queue import RedisQueue

    sentinels, service = sentinel.sentinels()
    host, port = sentinel.primary(sentinels, service)
    sentinel.wait(lambda: _replicas_up(host, port), 60.0, "the primary has a replica in sync")
    old = sentinel.server(host, port)
    pid, config = old.pid, old.config
    assert config, "the primary runs from a config file (.ci/redis.sh)"

    stop = tmp_path / "stop"
    logs = [tmp_path / "owner1.log", tmp_path / "owner2.log"]
    owners = [
        subprocess.Popen(
            [sys.executable, "-c", OWNER, url, str(log), str(stop)],
            cwd=ROOT,
            stderr=subprocess.PIPE,
            text=True,
        )
        for log in logs
    ]
    enqueued: list[tuple[int, int]] = []  # (job id, payload) of each enqueue that returned
    unknown: list[int] = []  # payloads whose enqueue raised (outcome unknown)
    done_producing = threading.Event()
    restarted = False
    q = RedisQueue.open(url, min_replicas=1, replica_timeout=2.0)
    try:

        def produce() -> None:
            i = 0
            while not done_producing.is_set():
                i += 1
                try:
                    enqueued.append((q.enqueue("t", i), i))
                except BackendError:
                    unknown.append(i)
                time.sleep(0.01)

        producer = threading.Thread(target=produce, daemon=True)
        producer.start()
        sentinel.wait(lambda: len(_acks(logs)) >= 20, 60.0, "owners ack jobs before the failover")
        os.kill(pid, signal.SIGKILL)
        killed_at = time.time()
        sentinel.wait(
            lambda: sentinel.primary(sentinels, service) != (host, port), 60.0, "Sentinel promotes"
        )
        new_host, new_port = sentinel.primary(sentinels, service)
        subprocess.run(["redis-server", config], check=True, capture_output=True)
        restarted = True
        sentinel.wait(lambda: _replicas_up(new_host, new_port), 60.0, "the old primary rejoins")
        # Both owners carry on: each acks a job enqueued after the failover.
        n_before = len(enqueued)
        sentinel.wait(
            lambda: (
                {
                    a[3]
                    for a in _acks(logs)
                    if a[4] > killed_at and a[1] > _id_at(enqueued, n_before)
                }
                == {p.pid for p in owners}
            ),
            60.0,
            "both owners ack jobs after the failover",
        )
        done_producing.set()
        producer.join(timeout=60.0)
        ids = {jid for jid, _ in enqueued}
        # An ack whose reply was lost may have been made: done is the server's word.
        sentinel.wait(lambda: q.stats()["unfinished"] == 0, 90.0, "every job is finished")
        statuses = {jid: q.status(jid) for jid in ids}
    finally:
        done_producing.set()
        stop.write_text("")
        for p in owners:
            try:
                p.wait(timeout=60.0)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        q.close()
        if not restarted:
            subprocess.run(["redis-server", config], check=False, capture_output=True)
    for p in owners:
        assert p.returncode == 0, p.stderr.read() if p.stderr else ""

    events = _lines(logs)
    runs = [e for e in events if e[0] == "run"]
    payload_of = dict(enqueued)
    # No acknowledged enqueue is lost, nor its id given to another job.
    for e in runs:
        if e[1] in payload_of:
            assert e[3] == payload_of[e[1]], f"job {e[1]} ran with another payload: {e}"
    assert all(s == "done" for s in statuses.values()), statuses
    assert ids <= {e[1] for e in runs}
    # No acked job runs again: its attempts after the ack's are none.
    acked_attempt: dict[int, int] = {}
    for e in events:
        if e[0] == "ack":
            assert e[1] not in acked_attempt, f"job {e[1]} acked twice"
            acked_attempt[e[1]] = e[2]
    for e in runs:
        if e[1] in acked_attempt:
            assert e[2] <= acked_attempt[e[1]], f"job {e[1]} ran again after its ack: {e}"
    assert len(enqueued) > 20 and len(acked_attempt) > 20


def test_a_failover_loses_an_enqueue_no_replica_saw_unless_min_replicas_refused_to_ack_it(
    url: str,
) -> None:
    """The loss that min_replicas prevents, made certain: the replica is stopped and cut
    off, one queue enqueues without min_replicas and one with it, the primary is killed
    and the replica promoted. The enqueue acknowledged without WAIT is gone; the one with
    min_replicas=1 was never acknowledged (its WAIT failed, and the caller was told)."""
    from walq.errors import UnknownJobError
    from walq.redisq.queue import RedisQueue

    sentinels, service = sentinel.sentinels()
    host, port = sentinel.primary(sentinels, service)
    sentinel.wait(lambda: _replicas_up(host, port), 60.0, "the primary has a replica in sync")
    old = sentinel.server(host, port)
    replica = sentinel.server(*sentinel.replicas(host, port)[0])
    assert old.config, "the primary runs from a config file (.ci/redis.sh)"
    with pytest.warns(DurabilityWarning, match="behind Sentinel without min_replicas"):
        plain = RedisQueue.open(url)
    waiting = RedisQueue.open(url, min_replicas=1, replica_timeout=1.0)
    kept = plain.enqueue("t", "seen by the replica")
    sentinel.wait(lambda: waiting.stats()["pending"] == 1, 10.0, "the first job is there")
    restarted = False
    os.kill(replica.pid, signal.SIGSTOP)
    try:
        import redis

        direct = redis.Redis(host=host, port=port, socket_timeout=2.0)
        direct.client_kill_filter(_type="replica")
        direct.close()
        sentinel.wait(lambda: not sentinel.replicas(host, port), 30.0, "the replica is cut off")
        lost = plain.enqueue("t", "acknowledged without WAIT")
        with pytest.raises(BackendError, match=r"0 of 1 replicas confirmed it"):
            waiting.enqueue("t", "refused: no replica confirmed it")
        os.kill(old.pid, signal.SIGKILL)
    finally:
        os.kill(replica.pid, signal.SIGCONT)
    try:
        sentinel.wait(
            lambda: sentinel.primary(sentinels, service) == (replica.host, replica.port),
            90.0,
            "Sentinel promotes the replica",
        )
        subprocess.run(["redis-server", old.config], check=True, capture_output=True)
        restarted = True
        sentinel.wait(lambda: _replicas_up(replica.host, replica.port), 60.0, "old primary rejoins")
        after = RedisQueue.open(url, min_replicas=1)
        try:
            assert after.status(kept) == "pending"
            with pytest.raises(UnknownJobError):
                after.status(lost)
            assert after.stats()["pending"] == 1
        finally:
            after.close()
    finally:
        plain.close()
        waiting.close()
        if not restarted:
            subprocess.run(["redis-server", old.config], check=False, capture_output=True)


def _acks(logs: list[Path]) -> list[list[Any]]:
    return [e for e in _lines(logs) if e[0] == "ack"]


def _id_at(enqueued: list[tuple[int, int]], n: int) -> int:
    """The id of the n-th acknowledged enqueue (0 if none yet)."""
    return enqueued[n - 1][0] if n else 0
