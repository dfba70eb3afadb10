"""`walq fsck`: check every segment and record; `--repair`: cut the damage out.

fsck only reads; repair takes the queue's lock and keeps every original it
changes in cut/.
"""

from __future__ import annotations

import contextlib
import posixpath
import time

import attrs

from walq.core import events as ev
from walq.core import format as fmt
from walq.core import framing
from walq.core.ledger import Ledger, Lost
from walq.directory import checkpoint as checkpoints
from walq.directory.fs import FileSystem, OsFileSystem, own_dir, queue_dir_owner
from walq.directory.log import CUT_DIR
from walq.directory.queue import LOCK_FILE
from walq.errors import LockedError
from walq.ops.owner import owner_running
from walq.ops.scan import Progress, SegmentScan, iter_scans, missing, scan_dir


def account(scans: list[SegmentScan]) -> Lost:
    """Which job ids the damage in `scans` (the log, in order) took (walq.core.ledger)."""
    ledger = Ledger()
    spans: list[tuple[int, int]] = []
    for scan in scans:
        spans.append((scan.first, scan.seq))
        for lo, _ in fmt.missing_segments(spans)[-1:]:
            ledger.damage((lo, 0))
        if scan.header_error is not None:
            ledger.damage((scan.seq, 0))
        for gap in scan.gaps:
            ledger.damage((scan.seq, gap.start))
        for rec in scan.records:
            try:
                event = ev.decode(rec.rtype, rec.body)
            except ev.BadEvent:
                ledger.damage((scan.seq, rec.offset))
                continue
            ledger.event((scan.seq, rec.offset), event)
    return ledger.result()


@attrs.frozen
class FsckReport:
    """What fsck found: counts, and every problem with its file and offset."""

    segments: int
    records: int
    problems: list[str]
    warnings: list[str]
    # Which jobs the damage took, or could not be accounted for (None when clean).
    lost: Lost | None = None
    # The checkpoint: what it covers and whether an open would use it (None: there is none).
    checkpoint: str | None = None

    @property
    def clean(self) -> bool:
        return not self.problems


def fsck(
    path: str, fs: FileSystem | None = None, *, progress: Progress | None = None
) -> FsckReport:
    """Check every segment and every record's event body; change nothing."""
    fs = fs or OsFileSystem()
    scans = (
        scan_dir(path, fs) if progress is None else list(iter_scans(path, fs, progress=progress))
    )
    problems: list[str] = []
    warnings: list[str] = []
    records = 0
    for scan in scans:
        if scan.header_error:
            problems.append(f"{scan.path}: offset 0: segment header: {scan.header_error}")
            if not scan.rebuilt:
                continue
        for gap in scan.gaps:
            problems.append(
                f"{scan.path}: offset {gap.start}: "
                f"{gap.end - gap.start} damaged bytes ({gap.reason})"
            )
        if scan.tail is not None:
            warnings.append(
                f"{scan.path}: offset {scan.tail.start}: torn or unfinished tail of "
                f"{scan.tail.end - scan.tail.start} bytes ({scan.tail.reason}); "
                "an owner writing now, or a crash: cut (and kept in cut/) on the next open"
            )
        for rec in scan.records:
            records += 1
            try:
                ev.decode(rec.rtype, rec.body)
            except ev.BadEvent as exc:
                problems.append(f"{scan.path}: offset {rec.offset}: undecodable record: {exc}")
    problems += missing(path, [(scan.first, scan.seq) for scan in scans])
    lost = account(scans) if problems else None
    names = fs.listdir(path)
    for name in names:
        if name.endswith(".tmp"):
            warnings.append(
                f"{posixpath.join(path, name)}: an unfinished segment or compaction "
                "(deleted on the next open)"
            )
    return FsckReport(len(scans), records, problems, warnings, lost, checkpoint_note(fs, path))


def checkpoint_note(fs: FileSystem, path: str) -> str | None:
    """One line on the checkpoint: what it covers, and whether an open would start from it.

    A checkpoint an open would ignore is not damage: the whole log is replayed
    instead, and the owner writes a new one.
    """
    head, why = checkpoints.check(fs, path)
    if head is None and why is None:
        return None
    where = checkpoints.path_of(path)
    if head is not None:
        when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(head.written))
        covers = (
            f"{where}: written {when}, covers the log to segment {head.seq} "
            f"offset {head.offset} ({head.jobs} live jobs)"
        )
        if why is None:
            return f"{covers}; agrees with the log: open starts from it"
        return f"{covers}; ignored on open ({why}): the whole log is replayed; safe to delete"
    return f"{why}; ignored on open (the whole log is replayed); safe to delete"


def repair(path: str, fs: FileSystem | None = None) -> list[str]:
    """Rewrite damaged segments without their damaged ranges; keep the originals aside.

    Takes the queue's lock, so no owner may be running. Returns what it did.
    """
    fs = fs or OsFileSystem()
    try:
        lock = fs.lock(posixpath.join(path, LOCK_FILE), 0.0)
    except LockedError:
        raise owner_running(path) from None
    try:
        done: list[str] = []
        scans = scan_dir(path, fs)
        loss = account(scans)
        for scan in scans:
            bad_bodies = [r for r in scan.records if not _decodes(r)]
            if not scan.gaps and not bad_bodies and not scan.header_error:
                continue
            aside = _set_aside(fs, path, scan.path)
            if scan.header_error and not scan.rebuilt:
                # Not this queue's segment (a copy of another) or not a segment at all.
                fs.remove(scan.path)
                fs.sync_dir(path)
                done.append(
                    f"{scan.path}: segment header: {scan.header_error}; "
                    f"moved to {aside} (restore the real segment if you have it)"
                )
                continue
            keep = [r for r in scan.records if _decodes(r)]
            _rewrite(fs, path, scan, keep)
            lost = len(scan.records) - len(keep)
            header = f"header {scan.header_error}; " if scan.rebuilt else ""
            done.append(
                f"{scan.path}: {header}removed {len(scan.gaps)} damaged ranges and {lost} bad "
                f"records; original kept as {aside}"
            )
        sizes = [scan.size for scan in scans]
    finally:
        lock.release()
    done += [f"{path}: {line}" for line in loss.lines()]
    gone = fmt.missing_segments([(scan.first, scan.seq) for scan in scan_dir(path, fs)])
    if not gone:
        return done
    # Segments are missing. Their loss is accepted by a compaction of everything,
    # which starts the log again from segment 1 (docs/FORMAT.md).
    from walq.directory.queue import Queue  # noqa: PLC0415 - the read-only tools never need it

    size = max(4096, min(32 << 20, max(sizes, default=0)))
    q = Queue.open(path, recovery="skip", compaction=False, serve=False, segment_size=size, fs=fs)
    try:
        q.compact(seal=True)
    finally:
        q.close()
    done += [
        f"{path}: {fmt.describe_missing(lo, hi)}: accepted as lost (the log was compacted)"
        for lo, hi in gone
    ]
    return done


def _set_aside(fs: FileSystem, directory: str, path: str) -> str:
    """Copy a damaged segment into cut/ (fsynced) before it is changed; return the copy's path."""
    aside_dir = posixpath.join(directory, CUT_DIR)
    own_dir(fs, aside_dir, queue_dir_owner(fs, directory), create=True)
    aside = posixpath.join(aside_dir, posixpath.basename(path) + ".damaged")
    _copy(fs, path, aside)
    fs.sync_dir(aside_dir)
    return aside


def _decodes(rec: framing.Record) -> bool:
    try:
        ev.decode(rec.rtype, rec.body)
    except ev.BadEvent:
        return False
    return True


def _copy(fs: FileSystem, src: str, dst: str) -> None:
    with contextlib.closing(fs.open(src)) as f:
        data = f.pread(f.size(), 0)
    _write_new(fs, dst, data)


def _write_new(fs: FileSystem, path: str, data: bytes) -> None:
    """Make `path` a new file holding `data`, fsynced (any file there before is replaced)."""
    if fs.exists(path):
        fs.remove(path)
    with contextlib.closing(fs.open(path, create=True)) as out:
        out.pwrite(data, 0)
        out.sync()


def _rewrite(fs: FileSystem, directory: str, scan: SegmentScan, keep: list[framing.Record]) -> None:
    """Replace a segment by one holding only `keep` (temp file, fsync, rename, fsync dir)."""
    header = fmt.SegmentHeader(scan.seq, scan.first)
    parts = [header.encode()]
    offset = fmt.SEGMENT_HEADER_SIZE
    for rec in keep:
        # The whole new file is fsynced before it is renamed into place, so each
        # record may claim everything before it as synced.
        data = framing.encode(rec.rtype, rec.body, offset)
        parts.append(data)
        offset += len(data)
    tmp = scan.path + ".tmp"
    _write_new(fs, tmp, b"".join(parts))
    fs.rename(tmp, scan.path)
    fs.sync_dir(directory)
