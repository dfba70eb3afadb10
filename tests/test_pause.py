"""A paused task on a queue directory: a log record that survives replay, compaction and restart."""

from __future__ import annotations

from pathlib import Path

import walq
from walq.core import events as ev
from walq.core import format as fmt
from walq.ops import dump as ops_dump


def test_pause_and_resume_records_round_trip() -> None:
    for e in (ev.Pause(task="mail"), ev.Resume(task="mäil")):
        assert ev.decode(e.rtype, e.encode()) == e


def test_a_pause_survives_compaction_and_restart(tmp_path: Path) -> None:
    qdir = str(tmp_path / "q")
    with walq.Queue.open(qdir, segment_size=4096, compaction=False) as q:
        q.pause("mail")
        for i in range(200):  # several segments: the pause record is in a sealed one
            q.enqueue("mail", {"i": i, "pad": "x" * 50})
        q.enqueue("resize", 1)
        result = q.compact(seal=True)
        assert result.segments_in > 1
    with walq.Queue.open(qdir, compaction=False) as q:
        assert q.paused() == ["mail"]
        job = q.claim()
        assert job is not None and job.task == "resize"
        q.ack(job.id)
        assert q.claim() is None
        assert q.stats()["pending"] == 200
        q.resume("mail")
        q.compact(seal=True)
    with walq.Queue.open(qdir, compaction=False) as q:
        assert q.paused() == []
        job = q.claim()
        assert job is not None and job.task == "mail"


def test_dump_names_the_paused_task(tmp_path: Path) -> None:
    qdir = str(tmp_path / "q")
    with walq.Queue.open(qdir) as q:
        q.pause("mail")
        q.resume("mail")
    rows = [r for r in ops_dump.dump(qdir) if r.get("type") in ("pause", "resume")]
    assert [(r["type"], r["task"]) for r in rows] == [("pause", "mail"), ("resume", "mail")]
    assert fmt.TYPE_NAMES[fmt.PAUSE] == "pause"
