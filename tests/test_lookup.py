"""Looking up one job from its own records (walq.ops.lookup) agrees with a whole replay."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

import walq
from walq.ops import dump as ops_dump
from walq.ops import live, lookup

SMALL = 4096

KEYS = ("status", "task", "attempts", "max_attempts", "priority", "key", "error")


def busy_queue(qdir: str, *, compact: bool) -> int:
    """Jobs in every state over many small segments (a compaction in the middle); next id."""
    rng = random.Random(7)
    with walq.Queue.open(qdir, segment_size=SMALL, compaction=False) as q:
        for round_ in range(3):
            ids = q.enqueue_many(
                [("mail", {"i": i, "pad": "x" * rng.randrange(40)}) for i in range(120)]
            )
            q.enqueue("mail", {"k": round_}, key=f"key:{round_}")
            q.enqueue("later", 1, delay=3600)
            jobs = q.claim_many(80)
            q.ack_many([j.id for j in jobs[:50]], attempts=[j.attempt for j in jobs[:50]])
            for j in jobs[50:60]:
                q.fail(j.id, f"boom {j.id}", permanent=True)
            for j in jobs[60:70]:
                q.fail(j.id, "retry", delay=0)
            for j in jobs[70:75]:
                q.release(j.id)
            # Flow records: an ack with a result and follow-up jobs, and a dependent.
            for j in jobs[75:77]:
                q.ack(j.id, result={"done": j.id}, enqueue=[("next", {"after": j.id})])
            q.enqueue("fan-in", {"r": round_}, after=[ids[0], ids[1]])
            q.cancel(ids[-1])
            dead = [d.id for d in q.dead_jobs()]
            q.requeue(dead[0])
            q.purge([dead[1]])
            if compact and round_ == 1:
                q.compact(seal=True)
        next_id = q.stats()["next_id"]
        running = q.claim_many(3)
        assert running
        # Close without acking: the running jobs are in the log as running.
    return int(next_id)


@pytest.mark.parametrize("compact", [False, True], ids=["plain", "compacted"])
def test_every_job_looks_the_same_from_its_records_as_from_a_replay(
    tmp_path: Path, compact: bool
) -> None:
    qdir = str(tmp_path / "q")
    next_id = busy_queue(qdir, compact=compact)
    assert len(list(Path(qdir).glob("*.wal"))) >= 5
    for jid in range(1, next_id + 2):
        try:
            want = live.replayed_job_status(qdir, jid)
        except walq.UnknownJobError as exc:
            with pytest.raises(walq.UnknownJobError, match=str(exc)):
                live.files_job_status(qdir, jid)
            continue
        got = live.files_job_status(qdir, jid)
        assert {k: got.get(k) for k in KEYS} == {k: want.get(k) for k in KEYS}, jid


def strip(row: dict[str, object]) -> dict[str, object]:
    return {k: v for k, v in row.items() if k != "tasks"}


def test_dump_of_one_job_matches_the_filtered_dump(tmp_path: Path) -> None:
    qdir = str(tmp_path / "q")
    next_id = busy_queue(qdir, compact=True)
    seen = 0
    for jid in (1, next_id // 2, next_id - 1):
        slow = list(ops_dump.dump(qdir, ops_dump.DumpFilter(job=jid)))
        fast = list(ops_dump.dump_job(qdir, jid))
        seen += len(fast)
        # The same rows; only a record of many jobs names the others' tasks in the full dump.
        assert [strip(r) for r in fast] == [strip(r) for r in slow], jid
        assert [r.get("task") for r in fast if "job" in r] == [
            r.get("task") for r in slow if "job" in r
        ]
    assert seen >= 4


def test_a_large_record_around_the_id_is_found(tmp_path: Path) -> None:
    """An ack of many jobs: the record holding the id starts far before it."""
    qdir = str(tmp_path / "q")
    with walq.Queue.open(qdir, compaction=False) as q:
        ids = q.enqueue_many([("t", i) for i in range(20_000)])
        jobs = q.claim_many(20_000)
        q.ack_many([j.id for j in jobs], attempts=[j.attempt for j in jobs])
    recs = lookup.job_records(qdir, ids[-1])
    assert [r.rtype for _, r in recs] == [1, 2, 3]  # enqueue, claim, ack
    assert live.files_job_status(qdir, ids[-1])["status"] == "done"
