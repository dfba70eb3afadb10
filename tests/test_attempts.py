"""The attempt record (type 16): how each finished attempt ran, kept in the job's history.

Written by the owner in the same append as the outcome it describes; replay
ignores it, a compaction drops it, the tools show it (docs/FORMAT.md).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

import walq
from tests import worker_tasks
from tests.procs import start_worker, wait_for
from walq import Ran
from walq.core import events as ev
from walq.core import format as fmt
from walq.core.state import Loc, Now, QueueState
from walq.ops.dump import dump_job
from walq.ops.stats import read as read_stats
from walq.ui.history import attempts, with_reports

ROOT = Path(__file__).resolve().parent.parent


def rows_of(qdir: str, jid: int) -> list[dict[str, Any]]:
    return list(dump_job(qdir, jid, payload=False))


def test_an_attempt_record_round_trips() -> None:
    """Every field comes back as written; a body that does not fill its count is BadEvent."""
    e = ev.Attempt(host="höst-1", owner=77, items=((5, 2, 1.7e9, 0.25, 123), (9, 1, 1.8e9, 3.5, 0)))
    body = e.encode()
    assert ev.decode(fmt.ATTEMPT, body) == e
    assert fmt.TYPE_NAMES[fmt.ATTEMPT] == "attempt" and 13 <= fmt.ATTEMPT <= 19
    assert len(body) == 10 + len("höst-1".encode()) + 2 * 32  # head, host, 32 bytes a job
    with pytest.raises(ev.BadEvent):
        ev.decode(fmt.ATTEMPT, body[:-1])
    with pytest.raises(ev.BadEvent):
        ev.decode(fmt.ATTEMPT, body + b"\0")


def test_replay_ignores_an_attempt_record() -> None:
    """Applying one changes no job: the state is the same with or without it."""
    now = Now(wall=1000.0, mono=50.0)
    states = []
    for with_attempt in (False, True):
        s = QueueState()
        s.apply(ev.Enqueue(id=1, task="t", payload=b"{}", created=1.0), Loc(1, 40, 50), now)
        s.apply(ev.Claim(items=((1, 1),)), Loc(1, 90, 30), now)
        if with_attempt:
            s.apply(
                ev.Attempt(host="h", owner=1, items=((1, 1, 9.0, 1.0, 5),)), Loc(1, 120, 60), now
            )
        states.append((s.status(1), s.info(1).attempts, s.next_id))
    assert states[0] == states[1] == ("running", 1, 2)


def test_ack_fail_and_release_write_it_only_when_given_how_the_attempt_ran(qdir: str) -> None:
    """The worker passes `ran`; a program's own ack or fail writes nothing extra. The queue
    reopens the same, a compaction drops the records, and fsck calls the log clean."""
    with walq.Queue.open(qdir) as q:
        a, b, c, d, plain = (q.enqueue("t", {"n": i}) for i in range(5))
        jobs = q.claim_many(5)
        assert [j.id for j in jobs] == [a, b, c, d, plain]
        q.ack_many([a, b], attempts=[1, 1], ran=[Ran(100.0, 0.5, 41), Ran(101.0, 0.25, 42)])
        q.fail(c, "boom", attempt=1, delay=60, ran=Ran(102.0, 1.5, 43))
        q.release(d, attempt=1, ran=Ran(103.0, 0.0, 0))
        q.ack(plain, attempt=1)
        q.claim_many(1)  # d again: attempt 1, uncharged
        q.ack(d, result={"ok": True}, ran=Ran(104.0, 2.0, 44))  # a finish record
        statuses = {j: q.status(j) for j in (a, b, c, d, plain)}
    kinds = {j: [r["type"] for r in rows_of(qdir, j)] for j in (a, c, d, plain)}
    assert kinds[a] == ["enqueue", "claim", "ack", "attempt"]
    assert kinds[c] == ["enqueue", "claim", "fail", "attempt"]
    assert kinds[d] == ["enqueue", "claim", "release", "attempt", "claim", "finish", "attempt"]
    assert kinds[plain] == ["enqueue", "claim", "ack"]
    row = rows_of(qdir, c)[-1]
    assert (row["job"], row["attempt"], row["pid"], row["seconds"]) == (c, 1, 43, 1.5)
    assert row["started"] == 102.0 and row["owner"] == os.getpid() and row["host"]
    with walq.Queue.open(qdir, segment_size=4096, compaction=False) as q:  # replayed
        assert {j: q.status(j) for j in (a, b, c, d, plain)} == statuses
        q.enqueue_many([("filler", {"pad": "x" * 200}) for _ in range(40)])  # seals segments
        q.compact()
        assert {j: q.status(j) for j in (a, b, c, d, plain)} == statuses
    assert [r["type"] for r in rows_of(qdir, c)] == ["job"]  # c is scheduled: kept as a job
    assert rows_of(qdir, a) == []  # done: dropped with its history
    fsck = [sys.executable, "-m", "walq", "fsck", qdir]
    assert subprocess.run(fsck, cwd=ROOT, capture_output=True, check=False).returncode == 0


def test_history_takes_worker_and_time_from_the_record_and_old_logs_still_work() -> None:
    """Rows with an attempt record give each attempt its worker, process and time; a log
    written before the record existed gives the same steps, left to the workers' reports."""
    old = [
        {"type": "enqueue", "seq": 1, "offset": 40, "job": 7, "task": "t", "created": 5.0},
        {"type": "claim", "seq": 1, "offset": 90, "jobs": [3, 7], "attempts": [1, 1]},
        {"type": "fail", "seq": 1, "offset": 120, "job": 7, "attempt": 1, "dead": False,
         "due": 9.0, "error": "ValueError: x"},
        {"type": "claim", "seq": 1, "offset": 200, "job": 7, "attempt": 2},
        {"type": "ack", "seq": 1, "offset": 230, "jobs": [7]},
    ]  # fmt: skip
    new = [
        *old[:3],
        {"type": "attempt", "seq": 1, "offset": 160, "jobs": [7], "attempts": [1],
         "starts": [6.0], "durations": [0.5], "pids": [11], "host": "h", "owner": 10},
        *old[3:],
        {"type": "attempt", "seq": 1, "offset": 260, "jobs": [4, 7], "attempts": [1, 2],
         "starts": [7.0, 8.0], "durations": [0.1, 0.25], "pids": [12, 13], "host": "h",
         "owner": 10},
    ]  # fmt: skip
    before, after = attempts(7, old), attempts(7, new)
    shape = [(s["kind"], s.get("attempt"), s.get("outcome")) for s in before]
    assert shape == [("created", None, None), ("attempt", 1, "failed"), ("attempt", 2, "acked")]
    assert [(s["kind"], s.get("attempt"), s.get("outcome")) for s in after] == shape
    assert not any("reported" in s for s in before)
    got = [s["reported"] for s in after if s["kind"] == "attempt"]
    assert [(r["process"], r["seconds"], r["started"], r["worker"]) for r in got] == [
        (11, 0.5, 6.0, 10), (13, 0.25, 8.0, 10)
    ]  # fmt: skip
    # A worker's report of an attempt the log describes does not replace the log's.
    with_reports(after, [{"attempt": 2, "process": 99, "seconds": 9.0, "ended": 1.0}])
    assert after[2]["reported"]["process"] == 13
    with_reports(before, [{"attempt": 2, "process": 99, "seconds": 9.0, "ended": 1.0}])
    assert before[2]["reported"]["process"] == 99


def test_a_real_worker_leaves_each_attempt_with_its_process_and_duration(
    qdir: str, tmp_path: Path
) -> None:
    """Outside in: `python -m walq worker` runs jobs (one failing, then succeeding; one
    failing for good), is stopped with SIGTERM, and the log tells each attempt's story."""
    ledger = tmp_path / "ledger"
    with walq.Queue.open(qdir) as q:
        ok = q.enqueue("ok", {"ledger": str(ledger)})
        again = q.enqueue("asks_for_delay", {"ledger": str(ledger)})  # fails, then succeeds
        bad = q.enqueue("raises", {"n": 1})  # fails twice: dead
        more = q.enqueue_many([("ok", {"ledger": str(ledger)}) for _ in range(3)])
    proc = start_worker(qdir, worker_tasks.SPECS["def"], ROOT, "--processes", "1")
    started = time.time()
    try:

        def settled() -> bool:
            st = read_stats(qdir)
            return st.jobs["pending"] + st.jobs["scheduled"] + st.jobs["running"] == 0

        wait_for(settled, timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)  # as a service manager stops it
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    ran_in = {int(line.split()[2]) for line in ledger.read_text().splitlines()}
    expected = {ok: ["acked"], again: ["failed", "acked"], bad: ["failed", "dead"]}
    expected.update({j: ["acked"] for j in more})
    for jid, outcomes in expected.items():
        steps = [s for s in attempts(jid, rows_of(qdir, jid)) if s["kind"] == "attempt"]
        for s in steps:  # a job the worker took ahead and handed back unstarted (a policy's)
            if s["outcome"] == "released":
                assert s["reported"]["process"] is None and s["reported"]["seconds"] == 0.0
        steps = [s for s in steps if s["outcome"] != "released"]
        assert [s["outcome"] for s in steps] == outcomes, (jid, steps)
        assert [s["attempt"] for s in steps] == list(range(1, len(outcomes) + 1))
        for s in steps:
            rep = s["reported"]
            assert rep["source"] == "log" and rep["worker"] == proc.pid and rep["host"]
            assert rep["process"] and rep["process"] != proc.pid
            assert 0.0 <= rep["seconds"] < 60
            assert started - 5 <= rep["started"] <= rep["ended"] <= time.time() + 5
    for jid in (ok, again):  # the ones that wrote a ledger line: the process that ran them
        rep = [s for s in attempts(jid, rows_of(qdir, jid)) if s["kind"] == "attempt"][-1]
        assert rep["reported"]["process"] in ran_in
    shown = subprocess.run(
        [sys.executable, "-m", "walq", "status", qdir, str(again)],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert "attempts (from the log)" in shown
    assert shown.count(f"worker {proc.pid} on ") == 2 and "process " in shown, shown
