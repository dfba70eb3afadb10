"""Read-only inspection (dump, fsck) and offline repair of a queue directory.

Reading takes no lock and changes nothing, so it works beside a running
owner: the owner's newest segment may end in a half-written record, which is
reported as the tail, not as damage. Repair needs the lock (no owner running).
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterator
from typing import Any

import attrs

from walq.core import events as ev
from walq.core import format as fmt
from walq.core import framing
from walq.errors import CorruptionError, NotAQueueError
from walq.fs import FileSystem, OsFileSystem
from walq.log import CUT_DIR
from walq.queue import LOCK_FILE


@attrs.frozen
class SegmentScan:
    """One segment file as a reader found it."""

    path: str
    seq: int
    first: int
    size: int
    records: list[framing.Record]
    gaps: list[framing.Gap]
    tail: framing.Gap | None
    end: int
    header_error: str | None = None
    snippets: dict[int, bytes] = attrs.field(factory=dict)  # first bytes of each damaged range


def scan_dir(path: str, fs: FileSystem | None = None) -> list[SegmentScan]:
    """Every live segment of the queue in `path`, scanned; NotAQueueError if none."""
    fs = fs or OsFileSystem()
    if not fs.is_dir(path):
        raise NotAQueueError(f"{path}: no such directory")
    names = fs.listdir(path)
    seqs = sorted(s for s in (fmt.parse_segment_name(n) for n in names) if s is not None)
    if not seqs and LOCK_FILE not in names:
        raise NotAQueueError(f"{path}: not a walq queue (no segment files)")
    scans: list[SegmentScan] = []
    for i, seq in enumerate(seqs):
        seg_path = posixpath.join(path, fmt.segment_name(seq))
        try:
            f = fs.open(seg_path)
        except FileNotFoundError:
            continue  # removed by a compaction since we listed the directory
        try:
            data = f.pread(f.size(), 0)
        finally:
            f.close()
        try:
            header = fmt.SegmentHeader.decode(data, seg_path)
        except CorruptionError as exc:
            bad = framing.Gap(0, len(data), exc.reason)
            scans.append(
                SegmentScan(
                    seg_path,
                    seq,
                    seq,
                    len(data),
                    [],
                    [bad],
                    None,
                    0,
                    exc.reason,
                    {0: data[:16]},
                )
            )
            continue
        newest = i == len(seqs) - 1
        scan = framing.classify(data, fmt.SEGMENT_HEADER_SIZE, newest=newest)
        snippets = {g.start: data[g.start : g.start + 16] for g in scan.gaps}
        if scan.tail is not None:
            snippets[scan.tail.start] = data[scan.tail.start : scan.tail.start + 16]
        scans.append(
            SegmentScan(
                seg_path,
                seq,
                header.first,
                len(data),
                scan.records,
                scan.gaps,
                scan.tail,
                scan.end,
                None,
                snippets,
            )
        )
    # Drop segments superseded by a compacted one (a compaction in progress or crashed).
    covered = {s for scan in scans for s in range(scan.first, scan.seq)}
    return [s for s in scans if s.seq not in covered]


def _preview(data: bytes, limit: int = 60) -> str:
    text = data[:limit].decode("utf-8", "replace")
    return text + ("..." if len(data) > limit else "")


def describe(rtype: int, body: bytes) -> dict[str, Any]:
    """The fields of one record's event, for dump (payload as a short preview)."""
    try:
        e = ev.decode(rtype, body)
    except ev.BadEvent as exc:
        return {"error": str(exc)}
    out: dict[str, Any] = {}
    if isinstance(e, ev.Enqueue | ev.Job):
        out.update(job=e.id, task=e.task, key=e.key, priority=e.priority)
        if e.max_attempts:
            out["max_attempts"] = e.max_attempts
        if e.due:
            out["due"] = e.due
        if isinstance(e, ev.Job):
            out.update(state=ev_state_name(e.state), attempt=e.attempts)
            if e.error:
                out["error"] = e.error
        kind = "bytes" if e.kind == ev.PAYLOAD_BYTES else "json"
        out["payload"] = e.payload[:40].hex() if e.kind == ev.PAYLOAD_BYTES else _preview(e.payload)
        out["payload_kind"] = kind
        out["payload_bytes"] = len(e.payload)
    elif isinstance(e, ev.Claim | ev.Release):
        out["jobs"] = [i for i, _ in e.items]
        out["attempts"] = [a for _, a in e.items]
        if len(e.items) == 1:
            out["job"], out["attempt"] = e.items[0]
    elif isinstance(e, ev.Fail):
        out.update(job=e.id, attempt=e.attempt, dead=e.dead, error=e.error)
        if not e.dead:
            out["due"] = e.due
    elif isinstance(e, ev.Meta):
        out.update(next_id=e.next_id, tombstones=len(e.tombstones))
    else:
        out["jobs"] = list(e.ids)
        if len(e.ids) == 1:
            out["job"] = e.ids[0]
    return out


def ev_state_name(state: int) -> str:
    """The name of a job state code."""
    return {ev.PENDING: "pending", ev.DEAD: "dead"}.get(state, str(state))


def dump_rows(scans: list[SegmentScan], *, payload: bool = True) -> Iterator[dict[str, Any]]:
    """One dict per record, and one per damaged range, in log order."""
    for scan in scans:
        name = posixpath.basename(scan.path)
        items: list[tuple[int, dict[str, Any]]] = []
        for rec in scan.records:
            row = {
                "segment": name,
                "offset": rec.offset,
                "type": fmt.TYPE_NAMES.get(rec.rtype, str(rec.rtype)),
                "size": rec.end - rec.offset,
                **describe(rec.rtype, rec.body),
            }
            if not payload:
                row.pop("payload", None)
            items.append((rec.offset, row))
        for gap, kind in [(g, "damage") for g in scan.gaps] + (
            [(scan.tail, "torn-tail")] if scan.tail else []
        ):
            raw = scan.snippets.get(gap.start, b"")[: max(gap.end - gap.start, 0)]
            items.append(
                (
                    gap.start,
                    {
                        "segment": name,
                        "offset": gap.start,
                        "type": kind,
                        "length": gap.end - gap.start,
                        "reason": gap.reason,
                        "hex": raw.hex(),
                    },
                )
            )
        for _, row in sorted(items, key=lambda x: x[0]):
            yield row


@attrs.frozen
class FsckReport:
    """What fsck found: counts, and every problem with its file and offset."""

    segments: int
    records: int
    problems: list[str]
    warnings: list[str]

    @property
    def clean(self) -> bool:
        return not self.problems


def fsck(path: str, fs: FileSystem | None = None) -> FsckReport:
    """Check every segment and every record's event body; change nothing."""
    scans = scan_dir(path, fs)
    problems: list[str] = []
    warnings: list[str] = []
    records = 0
    for scan in scans:
        if scan.header_error:
            problems.append(f"{scan.path}: offset 0: {scan.header_error}")
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
                "it is cut when the queue is next opened"
            )
        for rec in scan.records:
            records += 1
            try:
                ev.decode(rec.rtype, rec.body)
            except ev.BadEvent as exc:
                problems.append(f"{scan.path}: offset {rec.offset}: {exc}")
    return FsckReport(len(scans), records, problems, warnings)


def repair(path: str, fs: FileSystem | None = None) -> list[str]:
    """Rewrite damaged segments without their damaged ranges; keep the originals aside.

    Takes the queue's lock, so no owner may be running. Returns what it did.
    """
    fs = fs or OsFileSystem()
    lock = fs.lock(posixpath.join(path, LOCK_FILE), 0.0)
    try:
        done: list[str] = []
        for scan in scan_dir(path, fs):
            bad_bodies = [r for r in scan.records if not _decodes(r)]
            if not scan.gaps and not bad_bodies and not scan.header_error:
                continue
            if scan.header_error:
                done.append(f"{scan.path}: header damaged; segment left as is (restore it)")
                continue
            aside_dir = posixpath.join(path, CUT_DIR)
            if not fs.is_dir(aside_dir):
                fs.makedirs(aside_dir)
                fs.sync_dir(path)
            aside = posixpath.join(aside_dir, posixpath.basename(scan.path) + ".damaged")
            _copy(fs, scan.path, aside)
            fs.sync_dir(aside_dir)
            keep = [r for r in scan.records if _decodes(r)]
            _rewrite(fs, path, scan, keep)
            lost = len(scan.records) - len(keep)
            done.append(
                f"{scan.path}: removed {len(scan.gaps)} damaged ranges and {lost} bad records; "
                f"original kept as {aside}"
            )
        return done
    finally:
        lock.release()


def _decodes(rec: framing.Record) -> bool:
    try:
        ev.decode(rec.rtype, rec.body)
    except ev.BadEvent:
        return False
    return True


def _copy(fs: FileSystem, src: str, dst: str) -> None:
    f = fs.open(src)
    try:
        data = f.pread(f.size(), 0)
    finally:
        f.close()
    if fs.exists(dst):
        fs.remove(dst)
    out = fs.open(dst, create=True)
    try:
        out.pwrite(data, 0)
        out.sync()
    finally:
        out.close()


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
    if fs.exists(tmp):
        fs.remove(tmp)
    f = fs.open(tmp, create=True)
    try:
        f.pwrite(b"".join(parts), 0)
        f.sync()
    finally:
        f.close()
    fs.rename(tmp, scan.path)
    fs.sync_dir(directory)
