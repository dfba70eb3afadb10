"""Recovery on open: torn tails are cut, other damage is reported, failed fsyncs stop writes."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

import walq
from walq.cli.app import main
from walq.core import format as fmt
from walq.directory.fs import File, OsFileSystem
from walq.ops import repair as ops_repair


def segments(qdir: str) -> list[Path]:
    return sorted(Path(qdir).glob("*.wal"))


def record_offsets(path: Path) -> list[int]:
    from walq.core import framing

    data = path.read_bytes()
    return [r.offset for r in framing.records(data, fmt.SEGMENT_HEADER_SIZE)]


def fill(qdir: str, n: int, **kw: object) -> list[int]:
    with walq.Queue.open(qdir, segment_size=kw.pop("segment_size", 1 << 20), **kw) as q:  # type: ignore[arg-type]
        return q.enqueue_many([("t", {"i": i}) for i in range(n)])


def pending_ids(qdir: str, **kw: object) -> list[int]:
    with walq.Queue.open(qdir, segment_size=1 << 20, **kw) as q:  # type: ignore[arg-type]
        return sorted(j.id for j in (q.claim() for _ in range(q.stats()["pending"])) if j)


def test_tail_truncated_at_every_byte_of_the_last_record(qdir: str) -> None:
    """Cut the last record at any byte: open succeeds with every earlier job intact."""
    ids = fill(qdir, 4)
    (seg,) = segments(qdir)
    original = seg.read_bytes()
    last = record_offsets(seg)[-1]
    end = len(original.rstrip(b"\x00"))
    for cut in range(last, end):
        seg.write_bytes(original[:cut] + bytes(len(original) - cut))
        assert pending_ids(qdir) == ids[:-1], cut
        # the open cut the tail and zeroed it: a second open finds a clean log
        assert ops_repair.fsck(qdir).clean


def test_tail_truncated_file_shorter_than_preallocation(qdir: str) -> None:
    """A segment file cut short (no zero padding at all) opens with the earlier jobs."""
    ids = fill(qdir, 3)
    (seg,) = segments(qdir)
    data = seg.read_bytes()
    last = record_offsets(seg)[-1]
    seg.write_bytes(data[: last + 5])
    assert pending_ids(qdir) == ids[:-1]


def test_garbage_appended_is_cut_and_kept_aside(qdir: str) -> None:
    """Garbage after the last record is cut on open, logged, and saved in cut/."""
    ids = fill(qdir, 3)
    (seg,) = segments(qdir)
    data = bytearray(seg.read_bytes())
    end = len(bytes(data).rstrip(b"\x00"))
    data[end : end + 7] = b"garbage"
    seg.write_bytes(bytes(data))
    with walq.Queue.open(qdir, segment_size=1 << 20) as q:
        assert q.stats()["torn_tails_cut"] == 1
        assert q.stats()["pending"] == 3
    kept = list(Path(qdir, "cut").iterdir())
    assert len(kept) == 1 and kept[0].read_bytes() == b"garbage"
    assert pending_ids(qdir) == ids


def test_bit_flip_in_a_sealed_segment_is_corruption_naming_the_file(qdir: str) -> None:
    """Damage before the tail stops open with CorruptionError(file, offset); fsck exits 1."""
    fill(qdir, 100, segment_size=4096)
    first = segments(qdir)[0]
    offset = record_offsets(first)[2]
    data = bytearray(first.read_bytes())
    data[offset + 20] ^= 0x01
    first.write_bytes(bytes(data))
    with pytest.raises(walq.CorruptionError) as info:
        walq.Queue.open(qdir, segment_size=4096)
    assert info.value.path.endswith(first.name) and info.value.offset == offset
    assert first.name in str(info.value)
    result = CliRunner().invoke(main, ["fsck", qdir])
    assert result.exit_code == 1
    assert f"{first.name}: offset {offset}" in result.output


def test_recovery_skip_skips_the_damaged_record_and_counts_it(qdir: str) -> None:
    """recovery="skip" opens a damaged queue, losing only the damaged record."""
    ids = fill(qdir, 100, segment_size=4096)
    first = segments(qdir)[0]
    offset = record_offsets(first)[2]
    data = bytearray(first.read_bytes())
    data[offset + 20] ^= 0x01
    first.write_bytes(bytes(data))
    with walq.Queue.open(qdir, segment_size=4096, recovery="skip") as q:
        assert q.stats()["damaged"] == 1
        assert q.stats()["pending"] == 99
    assert pending_ids_skip(qdir) == [i for i in ids if i != ids[2]]


def pending_ids_skip(qdir: str) -> list[int]:
    with walq.Queue.open(qdir, segment_size=4096, recovery="skip") as q:
        return sorted(j.id for j in (q.claim() for _ in range(q.stats()["pending"])) if j)


def test_fsck_repair_makes_a_damaged_queue_open_strictly(qdir: str) -> None:
    """fsck --repair removes the damage, keeps the original aside, and strict open works."""
    fill(qdir, 100, segment_size=4096)
    first = segments(qdir)[0]
    offset = record_offsets(first)[1]
    data = bytearray(first.read_bytes())
    data[offset + 18] ^= 0xFF
    first.write_bytes(bytes(data))
    result = CliRunner().invoke(main, ["fsck", "--repair", qdir])
    assert result.exit_code == 1 and "repaired" in result.output
    assert (Path(qdir) / "cut" / (first.name + ".damaged")).read_bytes() == bytes(data)
    with walq.Queue.open(qdir, segment_size=4096) as q:
        assert q.stats()["pending"] == 99
    assert CliRunner().invoke(main, ["fsck", qdir]).exit_code == 0


def test_bad_segment_header_is_corruption(qdir: str) -> None:
    """A foreign write over a segment header is CorruptionError at offset 0."""
    fill(qdir, 3)
    (seg,) = segments(qdir)
    data = bytearray(seg.read_bytes())
    data[3] = ord("X")
    seg.write_bytes(bytes(data))
    with pytest.raises(walq.CorruptionError, match="offset 0: bad magic"):
        walq.Queue.open(qdir)


def test_leftover_temp_files_are_removed_on_open(qdir: str) -> None:
    """A half-built segment (*.tmp) from a crash is deleted on open."""
    fill(qdir, 2)
    Path(qdir, "0000000000000002.wal.tmp").write_bytes(b"half")
    with walq.Queue.open(qdir) as q:
        assert q.stats()["pending"] == 2
    assert not list(Path(qdir).glob("*.tmp"))


class FlakyFile:
    """A real file whose sync fails when the file system says so."""

    def __init__(self, inner: File, fs: FlakyFS) -> None:
        self._inner = inner
        self._fs = fs
        self.path = inner.path

    def sync(self) -> None:
        if self._fs.fail_sync:
            self._fs.failures += 1
            raise OSError(errno.EIO, "Input/output error", self.path)
        self._inner.sync()

    def __getattr__(self, name: str) -> object:
        return getattr(self._inner, name)


class FlakyFS(OsFileSystem):
    """The real file system, except that fsyncs fail once `fail_sync` is set."""

    fail_sync = False
    failures = 0

    def open(self, path: str, *, write: bool = False, create: bool = False) -> File:
        return FlakyFile(super().open(path, write=write, create=create), self)  # type: ignore[return-value]


def test_failed_fsync_stops_writes_and_reopen_keeps_returned_jobs(qdir: str) -> None:
    """After an fsync error the queue refuses writes, never retrying; reopen keeps returned jobs."""
    fs = FlakyFS()
    q = walq.Queue.open(qdir, fs=fs)
    returned = [q.enqueue("t", i) for i in range(5)]
    fs.fail_sync = True
    with pytest.raises(walq.LogFailedError, match=r"fsync of .*\.wal failed"):
        q.enqueue("t", "lost?")
    assert fs.failures == 1
    with pytest.raises(walq.LogFailedError):
        q.enqueue("t", "refused")
    with pytest.raises(walq.LogFailedError):
        q.claim()
    assert fs.failures == 1  # the failed fsync was never retried
    q.close()
    fs.fail_sync = False
    with walq.Queue.open(qdir) as q2:
        got = [q2.claim() for _ in range(q2.stats()["pending"])]
        ids = [j.id for j in got if j]
    assert set(returned) <= set(ids)


def test_queue_files_are_private(qdir: str) -> None:
    """Segment and lock files are created mode 0600."""
    fill(qdir, 1)
    for p in Path(qdir).iterdir():
        if p.is_file():
            assert os.stat(p).st_mode & 0o077 == 0, p
