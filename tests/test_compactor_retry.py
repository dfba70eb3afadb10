"""A failing background compaction (a full disk) is retried with backoff and shown until it works.

One ENOSPC used to stop the compactor thread for good, and the spare-segment
preparation with it: segments then grew without bound, and the only sign was
one log line. Now the failure is in `stats()["compactor"]`, in the metrics and
in `walq stats` (through the worker's status), and the compactor recovers by
itself once the disk has room again.
"""

from __future__ import annotations

import errno
import random
import time
from collections.abc import Callable

import pytest
from click.testing import CliRunner

import walq
from walq import metrics
from walq.cli.app import main as cli
from walq.directory import compactor
from walq.directory.compactor import Policy
from walq.ops import stats as ops_stats
from walq.testing.faultfs import SimFileSystem

QDIR = "/q"
PAYLOAD = {"pad": "p" * 600}


def wait_for(cond: Callable[[], bool], what: str, seconds: float = 60.0) -> None:
    deadline = time.monotonic() + seconds
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def open_sim(fs: SimFileSystem) -> walq.Queue:
    return walq.Queue.open(
        QDIR,
        fs=fs,
        segment_size=4096,
        serve=False,
        min_free_bytes=0,
        compaction=Policy(garbage_ratio=0.5, max_sealed=3, interval=0.05),
        rng=random.Random(0),
    )


def churn(q: walq.Queue, n: int) -> None:
    """Enqueue and ack jobs: sealed segments full of garbage, so compaction is due."""
    for _ in range(n):
        q.enqueue("t", PAYLOAD)
        job = q.claim()
        assert job is not None
        q.ack(job.id)


class FullDisk:
    """A seam: the compacted segment's final write fails with ENOSPC while `full`."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.full = True
        self.fired = 0
        finish = compactor._Writer.finish

        def failing_finish(writer: compactor._Writer) -> None:
            if self.full:
                self.fired += 1
                raise OSError(errno.ENOSPC, "No space left on device")
            finish(writer)

        monkeypatch.setattr(compactor._Writer, "finish", failing_finish)


def test_enospc_in_compaction_is_retried_shown_and_recovered_from(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fs = SimFileSystem()
    q = open_sim(fs)
    try:
        full = FullDisk(monkeypatch)
        churn(q, 40)
        wait_for(lambda: q.stats()["compactor"] is not None, "the failure to show")
        health = q.stats()["compactor"]
        assert health["state"] == "failing"
        assert health["text"].startswith("failing since ")
        assert "No space left on device" in health["text"] or "28" in health["error"]
        again = q.compactor_health()
        assert again is not None and (again == health or again["since"] == health["since"])
        fams = {f.name: f for f in metrics.families(q.stats())}
        assert fams["walq_compactor_failing"].samples[0][1] == 1.0
        # It keeps trying (with backoff): a second failure is counted, not the end of it.
        wait_for(lambda: full.fired >= 2, "a retry")
        grown = q.stats()["segments"]
        assert grown > 3

        full.full = False  # space was freed
        wait_for(lambda: q.stats()["compactor"] is None, "the compactor to recover")
        wait_for(lambda: q.stats()["segments"] < grown, "a compaction")
        fams = {f.name: f for f in metrics.families(q.stats())}
        assert fams["walq_compactor_failing"].samples[0][1] == 0.0
        churn(q, 40)  # and it goes on compacting
        wait_for(lambda: q.stats()["segments"] <= 5, "compaction to keep up")
        assert q.stats()["compactor"] is None
    finally:
        q.close()


def test_a_failing_spare_segment_shows_too_and_recovers() -> None:
    """The spare segment's preparation shares the thread: its failures are shown the same way."""
    fs = SimFileSystem()
    q = open_sim(fs)
    try:
        fs.inject("pwrite", errno.ENOSPC, path=".spare", times=None)
        for _ in range(4):
            q.enqueue("t", PAYLOAD)  # past half of the active segment: a spare is wanted
        wait_for(lambda: q.stats()["compactor"] is not None, "the failure to show")
        assert "preparing segment" in q.stats()["compactor"]["error"]
        fs.clear_faults()
        wait_for(lambda: q.stats()["compactor"] is None, "recovery")
    finally:
        q.close()


def test_walq_stats_shows_a_failing_compactor_from_the_worker_status(qdir: str) -> None:
    """`walq stats` reads it from the worker's status file: one line saying since when and why."""
    tasks = walq.Tasks()

    @tasks.task()
    def noop(payload: object, job: walq.Job) -> None:
        pass

    with walq.Queue.open(qdir, compaction=False) as q:  # no thread to clear it meanwhile
        q._compactor._failed(OSError(errno.ENOSPC, "No space left on device"))
        worker = walq.Worker(q, tasks, processes=1)
        assert worker.status()["compactor"] == q.compactor_health()
        worker._write_status()
        result = CliRunner().invoke(cli, ["stats", qdir])
        line = [x for x in result.output.splitlines() if x.startswith("compactor")]
        assert line and "failing since" in line[0] and "No space left" in line[0], result.output
        assert ops_stats.directory_stats(qdir)["compactor"]["failures"] == 1
