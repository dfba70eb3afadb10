"""Segments removed from under the queue, and damaged segment headers, are damage: never silent.

Segments are consecutive and the log starts at segment 1 (docs/FORMAT.md), so a
removed sealed segment -- the first one, one in the middle, or the compacted one
that starts the log -- is reported by open, fsck and stats; recovery="skip"
counts it and goes on; fsck --repair accepts the loss by compacting.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import walq
from walq.core import format as fmt
from walq.ops import repair as ops_repair
from walq.ops import stats as ops_stats

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
    report = ops_repair.fsck(qdir)
    assert not report.clean and gone.name in report.problems[0]
    assert any(gone.name in d for d in ops_stats.directory_stats(qdir)["damage"])

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
    assert not ops_repair.fsck(qdir).clean


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
    assert ops_repair.fsck(qdir).clean
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
    assert ops_repair.fsck(qdir).clean
    with open_queue(qdir) as q:
        assert q.stats()["pending"] == 25


# -- damaged headers: rebuilt from the file name -------------------------------------------


def break_header(seg: Path) -> None:
    data = bytearray(seg.read_bytes())
    data[0:8] = b"garbage!"  # bad magic: what an editor or a stray write leaves
    seg.write_bytes(bytes(data))


@pytest.mark.parametrize("which", ["compacted first", "middle"])
def test_a_damaged_header_is_rebuilt_by_repair_and_read_past_by_skip(qdir: str, which: str) -> None:
    """Strict open refuses; skip reads every job behind it; --repair rebuilds it: nothing lost."""
    ids = fill(qdir, 40, compact_after=12)
    segs = segments(qdir)
    seg = segs[0] if which == "compacted first" else segs[2]
    break_header(seg)

    with pytest.raises(walq.CorruptionError, match="bad magic"):
        open_queue(qdir)
    with open_queue(qdir, recovery="skip") as q:
        assert q.stats()["damaged"] == 1
        assert q.stats()["pending"] == len(ids)  # the records behind the header were read
    report = ops_repair.fsck(qdir)
    assert any("rebuilt from the file name" in p for p in report.problems)

    repaired = ops_repair.repair(qdir)
    assert any("rebuilt from the file name" in line for line in repaired), repaired
    assert ops_repair.fsck(qdir).clean
    with open_queue(qdir) as q:
        assert q.stats()["pending"] == len(ids)
        assert sorted(j.id for j in (q.claim() for _ in ids) if j) == ids


def test_a_header_naming_another_segment_is_left_out_by_skip_and_moved_aside_by_repair(
    qdir: str,
) -> None:
    """A copy of segment 2 named as segment 3 cannot be rebuilt: skip leaves it out, repair
    sets it aside."""
    fill(qdir, 40)
    segs = segments(qdir)
    segs[2].write_bytes(segs[1].read_bytes())
    with pytest.raises(walq.CorruptionError, match="header says segment 2"):
        open_queue(qdir)
    with open_queue(qdir, recovery="skip") as q:
        assert q.stats()["damaged"] == 1
        assert q.stats()["lost"] is not None
    repaired = ops_repair.repair(qdir)
    assert any("moved to" in line and "cut" in line for line in repaired), repaired
    assert (Path(qdir) / "cut" / (segs[2].name + ".damaged")).exists()
    assert ops_repair.fsck(qdir).clean
    open_queue(qdir).close()


# -- repair and skip say which jobs they lost ----------------------------------------------


def truncate_sealed(qdir: str) -> tuple[list[int], range]:
    """400 jobs in two segments; the first (sealed) cut to a third: ids 129..385 go."""
    with walq.Queue.open(qdir, segment_size=64 << 10, compaction=False, serve=False) as q:
        ids = q.enqueue_many([("t", {"i": i, "pad": "x" * 100}) for i in range(400)])
    seg = segments(qdir)[0]
    data = seg.read_bytes()
    seg.write_bytes(data[: len(data) // 3])
    return ids, range(129, 386)


def test_repair_of_a_truncated_sealed_segment_lists_the_jobs_it_lost(qdir: str) -> None:
    """Not just "removed 1 damaged range (103 bytes)": the 257 job ids that went with it."""
    ids, gone = truncate_sealed(qdir)
    result = walq_cli("fsck", "--repair", "--json", qdir)
    out = json.loads(result.stdout.splitlines()[-1])
    assert out["lost"]["unaccounted"] == [[gone[0], gone[-1]]]
    assert any(f"{len(gone)} job ids not accounted for" in r for r in out["repaired"])
    assert any(f"{gone[0]}..{gone[-1]}" in r for r in out["repaired"])
    text = walq_cli("fsck", qdir + "/../q")  # clean now: nothing more to say
    assert text.returncode == 0
    with open_queue(qdir) as q:
        assert q.stats()["pending"] == len(ids) - len(gone)


def test_fsck_and_a_skip_open_list_the_lost_jobs_too(qdir: str) -> None:
    """The same accounting from fsck (text and --json) and from Queue.open(recovery="skip")."""
    _, gone = truncate_sealed(qdir)
    text = walq_cli("fsck", qdir)
    assert text.returncode == 1
    assert f"LOST    {len(gone)} job ids not accounted for" in text.stdout
    assert f"{gone[0]}..{gone[-1]}" in text.stdout
    with open_queue(qdir, recovery="skip") as q:
        lost = q.stats()["lost"]
    assert lost["unaccounted"] == [[gone[0], gone[-1]]]
    assert lost["maybe_stale"] == [[1, gone[0] - 1]]


def test_a_missing_segment_whose_ids_follow_the_last_enqueue_says_they_are_unknown(
    qdir: str,
) -> None:
    """Events survive for jobs whose enqueue is gone: those are lost; later ids are unknown."""
    with walq.Queue.open(qdir, segment_size=SMALL, compaction=False, serve=False) as q:
        ids = [q.enqueue("t", {"i": i, "pad": "x" * 400}) for i in range(20)]
        claimed = [q.claim() for _ in range(3)]
        q._log.seal()
        for job in claimed:
            assert job is not None
            q.ack(job.id)
    segs = segments(qdir)
    segs[-2].unlink()  # the last sealed segment: the newest enqueues
    report = ops_repair.fsck(qdir)
    assert report.lost is not None
    lines = " ".join(report.lost.lines())
    assert "cannot be accounted for" in lines
    assert report.lost.unknown_above is not None and report.lost.unknown_above < ids[-1]


def test_walq_worker_takes_recovery_skip(qdir: str, tmp_path: Path) -> None:
    """`walq worker --recovery skip` runs a damaged queue; without it, it exits 1 (damage)."""
    ledger = tmp_path / "ledger"
    with walq.Queue.open(qdir, segment_size=SMALL, compaction=False, serve=False) as q:
        for _ in range(30):
            q.enqueue("ok", {"ledger": str(ledger), "pad": "x" * 400})
    segments(qdir)[1].unlink()
    root = str(Path(__file__).resolve().parent.parent)
    cmd = [sys.executable, "-m", "walq", "worker", qdir, "--tasks", "tests.worker_tasks:tasks",
           "--processes", "1", "--log-level", "WARNING", "--shutdown-grace", "1"]  # fmt: skip
    strict = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=120, check=False)
    assert strict.returncode == 1, strict.stderr
    assert "missing" in strict.stderr and len(strict.stderr.strip().splitlines()) == 1

    proc = subprocess.Popen(
        [*cmd, "--recovery", "skip"], cwd=root, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if ledger.exists() and len(ledger.read_text().splitlines()) >= 20:
                break
            time.sleep(0.1)
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    ran = {int(line.split()[0]) for line in ledger.read_text().splitlines()}
    assert len(ran) >= 20
    assert "job ids not accounted for" in err
