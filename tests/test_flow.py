"""Results, follow-up jobs and dependencies through the worker pool and from other processes.

The queue calls themselves are in the contract suite (tests/test_contract.py,
TestFlow), on both backends; here the worker sends a handler's return value
and its job.enqueue() calls with the ack, and walq.connect() reads results.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import walq
from tests import worker_tasks
from tests.test_worker import run_until_done
from walq import Worker
from walq.ops import live, lookup


@pytest.fixture
def q(tmp_path: Path) -> Iterator[walq.Queue]:
    queue = walq.Queue.open(str(tmp_path / "q"))
    yield queue
    queue.close()


@pytest.mark.parametrize("kind", ["def", "async def"])
def test_a_chain_and_a_fan_in_through_the_worker(q: walq.Queue, kind: str) -> None:
    """Return values are results; job.enqueue() follow-ups run; a fan-in reads its parents."""
    a = q.enqueue("double", {"n": 1, "then": "double"})
    b = q.enqueue("double", {"n": 10})
    c = q.enqueue("total", None, after=[a, b])
    assert q.status(c) == "waiting"
    tasks = worker_tasks.REGISTRIES[kind]
    assert run_until_done(q, Worker(q, tasks, processes=2)) == 0
    assert q.result(a) == {"n": 2} and q.result(b) == {"n": 20}
    assert q.result(c) == 22
    follow = c + 1  # the follow-up job a's handler enqueued: committed with a's ack
    assert q.status(follow) == "done" and q.result(follow) == {"n": 4}


@pytest.mark.parametrize("kind", ["def", "async def"])
def test_a_result_that_is_not_json_fails_the_job_for_good(q: walq.Queue, kind: str) -> None:
    """A handler returning something neither JSON nor bytes is dead at once (one attempt),
    its error's first line naming the job, the task and the type; no follow-up job exists."""
    jid = q.enqueue("returns_a_set", {"then": "double"})
    run_until_done(q, Worker(q, worker_tasks.REGISTRIES[kind], processes=1))
    first = (
        f"[exception] attempt 1: walq.core.retry.Permanent: job {jid} (task 'returns_a_set'): "
        "its result is a set, neither JSON nor bytes "
        "(Object of type set is not JSON serializable): a result cannot be stored, "
        "so the job fails for good"
    )
    (dead,) = q.dead_jobs()
    assert dead.attempts == 1 and dead.error.splitlines()[0] == first
    with pytest.raises(walq.JobFailed, match="neither JSON nor bytes"):
        q.result(jid)
    assert q.jobs() == [q.jobs(state="dead")[0]]  # its follow-up job was never added


def test_a_result_over_the_queues_limit_fails_the_job(tmp_path: Path) -> None:
    """A result over max_result_bytes is refused at the ack: the job is dead, not done,
    with one line naming job, task and sizes; q.ack(result=too_big) raises the same."""
    with walq.Queue.open(str(tmp_path / "q"), max_result_bytes=8) as q:
        jid = q.enqueue("double", {"n": 10**12})
        run_until_done(q, Worker(q, worker_tasks.tasks, processes=1))
        (dead,) = q.dead_jobs()
        assert dead.error == (
            f"[result] attempt 1: job {jid} (task 'double'): its result of 19 bytes exceeds "
            "max_result_bytes (8 bytes): a result cannot be stored, so the job fails for good"
        )
        with pytest.raises(walq.JobFailed, match="max_result_bytes"):
            q.result(jid)
        other = q.enqueue("t", 1)
        job = q.claim()
        assert job is not None and job.id == other
        with pytest.raises(walq.PayloadError, match=f"^job {other}: its result of 10 bytes"):
            q.ack(job.id, result="x" * 8)
        assert q.status(other) == "running"  # refused: the job is still the handler's


def test_connect_reads_results_through_the_owner_and_from_the_files(tmp_path: Path) -> None:
    """walq.connect(DIR).result() asks a running owner, or reads the files when none runs."""
    path = str(tmp_path / "q")
    with walq.Queue.open(path) as q, walq.connect(path) as producer:
        jid = q.enqueue("t", 1)
        with pytest.raises(walq.ResultTimeout, match="pending"):
            producer.result(jid, timeout=0.1)
        job = q.claim()
        assert job is not None
        q.ack(job.id, result=b"\x00\xffdone")
        assert producer.result(jid, timeout=10) == b"\x00\xffdone"
        bad = q.enqueue("t", 1, max_attempts=1)
        dep = q.enqueue("t", 1, after=[bad])
        failed = q.claim()
        assert failed is not None
        q.fail(failed.id, "it broke")
        with pytest.raises(walq.JobFailed, match="it broke"):
            producer.result(bad)
        with pytest.raises(walq.UnknownJobError):
            producer.result(10**9)
    with walq.connect(path) as producer:  # no owner: the files answer
        assert producer.result(jid, timeout=0) == b"\x00\xffdone"
        with pytest.raises(walq.JobCancelled, match=f"job {bad} .* is dead"):
            producer.result(dep)
        with pytest.raises(walq.JobFailed, match="it broke"):
            producer.result(bad, timeout=0)


def test_the_documented_example_runs(tmp_path: Path) -> None:
    """docs/examples/flow.py (a fan-in and a chain, docs/FLOW.md) runs and prints its results."""
    import subprocess
    import sys

    example = Path(__file__).resolve().parent.parent / "docs" / "examples" / "flow.py"
    out = subprocess.run(
        [sys.executable, str(example), str(tmp_path / "q")],
        capture_output=True, text=True, timeout=300, check=True,
    ).stdout  # fmt: skip
    assert "merge is waiting" in out
    assert "merge -> 6000" in out and "publish -> published 6000 bytes" in out


def test_an_open_from_a_checkpoint_keeps_results_and_waits(tmp_path: Path) -> None:
    """The checkpoint carries kept results, jobs' parents and causes (a flow record)."""
    path = str(tmp_path / "q")
    with walq.Queue.open(path, compaction=False, checkpoint=False) as q:
        a, b = q.enqueue("a", 1), q.enqueue("b", 2)
        c = q.enqueue("c", 3, after=[a, b])
        d = q.enqueue("d", 4, after=[b])
        job = q.claim(tasks=["a"])
        assert job is not None
        q.ack(job.id, result={"a": 1})
        q.write_checkpoint()
        after_checkpoint = q.enqueue("e", 5, after=[c])
    with walq.Queue.open(path, compaction=False, checkpoint=False) as q:
        assert q.checkpoint_opened is not None  # the open started from the checkpoint
        assert q.result(a, timeout=0) == {"a": 1}
        assert [q.status(i) for i in (c, d, after_checkpoint)] == ["waiting"] * 3
        job = q.claim(tasks=["b"])
        assert job is not None
        q.fail(job.id, "boom", permanent=True)
        assert q.status(d) == "cancelled" and q.status(c) == "cancelled"
        with pytest.raises(walq.JobCancelled, match=f"job {b} .* is dead"):
            q.result(d)


def test_a_dependents_cause_survives_compaction(tmp_path: Path) -> None:
    """A dependent cancelled with its dead parent keeps the cause through a compaction:
    in result() and in status (the owner's and the files'), and after a reopen."""
    path = str(tmp_path / "q")
    with walq.Queue.open(path, compaction=False, checkpoint=False) as q:
        parent = q.enqueue("p", 1, max_attempts=1)
        dep = q.enqueue("d", 2, after=[parent])
        job = q.claim()
        assert job is not None
        q.fail(job.id, "it broke")
        cause = f"job {parent} it was enqueued after is dead"
        assert q.job_detail(dep) == {"id": dep, "status": "cancelled", "cause": cause}
        q.compact(seal=True)
        with pytest.raises(walq.JobCancelled, match=cause):
            q.result(dep)
        assert q.job_detail(dep)["cause"] == cause
    with walq.Queue.open(path, compaction=False, checkpoint=False) as q:
        assert q.checkpoint_opened is None  # a replay of the compacted segment
        with pytest.raises(walq.JobCancelled, match=cause):
            q.result(dep)
        assert q.job_detail(dep)["cause"] == cause
    assert live.job_status(path, dep)["cause"] == cause  # no owner: read from the files
    assert lookup.job_state(path, dep)["cause"] == cause  # its records, without a replay
    with walq.connect(path) as producer, pytest.raises(walq.JobCancelled, match=cause):
        producer.result(dep)
    out = subprocess.run([sys.executable, "-m", "walq", "status", path, str(dep)],
                         capture_output=True, text=True, timeout=60, check=True).stdout  # fmt: skip
    assert f"cause     {cause}" in out
