"""Segments removed from under the queue, and damaged segment headers, are damage: never silent.

Segments are consecutive and the log starts at segment 1 (docs/FORMAT.md), so a
removed sealed segment -- the first one, one in the middle, or the compacted one
that starts the log -- is reported by open, fsck and stats; recovery="skip"
counts it and goes on; fsck --repair accepts the loss by compacting.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import walq
from walq import inspect as insp
from walq.core import format as fmt

SMALL = 4096


def segments(qdir: str) -> list[Path]:
    return sorted(Path(qdir).glob("*.wal"))


def fill(qdir: str, n: int, *, compact_after: int | None = None) -> list[int]:
    """n jobs of ~400 bytes in 4 KiB segments (about 9 per segment)."""
    ids = []
    with walq.Queue.open(qdir, segment_size=SMALL, compaction=False, serve=False) as q:
        for i in range(n):
            ids.append(q.enqueue("t", {"i": i, "pad": "x" * 400}))
            if compact_after is not None and i == compact_after:
                q.compact()
    return ids


def open_queue(qdir: str, **kw: object) -> walq.Queue:
    return walq.Queue.open(qdir, segment_size=SMALL, compaction=False, serve=False, **kw)  # type: ignore[arg-type]


def walq_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "walq", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize("which", ["first", "middle"])
def test_a_removed_sealed_segment_is_damage_everywhere(qdir: str, which: str) -> None:
    """Removing one of 5 segments: open, fsck and stats say which file; skip counts it."""
    ids = fill(qdir, 30)
    segs = segments(qdir)
    assert len(segs) >= 4
    gone = segs[0] if which == "first" else segs[1]
    gone.unlink()

    with pytest.raises(walq.CorruptionError, match=gone.name) as err:
        open_queue(qdir)
    assert err.value.path == str(gone)
    report = insp.fsck(qdir)
    assert not report.clean and gone.name in report.problems[0]
    assert any(gone.name in d for d in insp.stats(qdir)["damage"])

    fsck = walq_cli("fsck", qdir)
    assert fsck.returncode == 1 and gone.name in fsck.stdout

    with open_queue(qdir, recovery="skip") as q:
        stats = q.stats()
        assert stats["damaged"] == 1
        survivors = stats["pending"]
    assert 0 < survivors < len(ids)


def test_removing_the_compacted_segment_that_starts_the_log_is_noticed(qdir: str) -> None:
    """After a compaction the log starts at segment N (covering from 1): removing N shows."""
    fill(qdir, 30, compact_after=20)
    segs = segments(qdir)
    head = fmt.SegmentHeader.decode(segs[0].read_bytes()[:40], str(segs[0]))
    assert head.first == 1 < head.seq  # the compacted one
    segs[0].unlink()
    with pytest.raises(walq.CorruptionError, match="missing"):
        open_queue(qdir)
    assert not insp.fsck(qdir).clean


def test_repair_accepts_the_loss_and_the_queue_opens_strictly_again(qdir: str) -> None:
    """fsck --repair compacts the log from segment 1 again: fsck clean, strict open works."""
    fill(qdir, 30)
    segments(qdir)[1].unlink()
    with open_queue(qdir, recovery="skip") as q:
        survivors = q.stats()["pending"]
    repair = walq_cli("fsck", "--repair", "--json", qdir)
    assert repair.returncode == 1, repair.stderr  # damage was found, and mended
    out = json.loads(repair.stdout.splitlines()[-1])
    assert out["clean_after_repair"] is True
    assert any("accepted as lost" in line for line in out["repaired"])
    assert insp.fsck(qdir).clean
    with open_queue(qdir) as q:
        assert q.stats()["pending"] == survivors
        q.enqueue("t", {"after": "repair"})
    with open_queue(qdir) as q:
        assert q.stats()["pending"] == survivors + 1


def test_a_skip_open_then_compaction_heals_a_missing_first_segment(qdir: str) -> None:
    """The owner that skipped the loss compacts from segment 1: the next strict open works."""
    fill(qdir, 30)
    segments(qdir)[0].unlink()
    with open_queue(qdir, recovery="skip") as q:
        n = q.stats()["pending"]
        q.compact(seal=True)
    with open_queue(qdir) as q:
        assert q.stats()["pending"] == n


def test_an_intact_queue_with_many_compactions_stays_clean(qdir: str) -> None:
    """The rule holds for what walq itself writes: compactions, rolls, reopenings."""
    with walq.Queue.open(qdir, segment_size=SMALL, serve=False) as q:
        for _ in range(5):
            for i in range(25):
                q.enqueue("t", {"i": i, "pad": "y" * 300})
            for _ in range(20):
                job = q.claim()
                assert job is not None
                q.ack(job.id)
            q.compact()
    assert insp.fsck(qdir).clean
    with open_queue(qdir) as q:
        assert q.stats()["pending"] == 25
