"""The operator's tools as plain functions: dump, follow, stats, dead jobs, fsck, repair.

Reading takes no lock and changes nothing, so it works beside a running owner
and on a queue with no owner: the owner's newest segment may end in a record
it is still writing, which is reported as the tail, never as damage. A
compaction that runs while a reader reads is detected (a compacted segment
that replaces segments the reader has already read) and the read is retried.

The administrative operations (requeue, purge, compact, repair) take the
queue's lock, so no owner may be running; `walq.cli.app` only parses and prints.
"""

from __future__ import annotations

import contextlib
import json
import os
import posixpath
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol

import attrs

from walq.core import events as ev
from walq.core import format as fmt
from walq.core import framing
from walq.core.ledger import Ledger, Lost
from walq.core.state import DEAD, PENDING, RUNNING, Loc, Now, QueueState
from walq.core.text import excerpt
from walq.directory.fs import FileSystem, OsFileSystem, open_fd, own_dir, queue_dir_owner
from walq.directory.log import CUT_DIR
from walq.directory.queue import LOCK_FILE, STATUS_FILE
from walq.errors import (
    ArgumentError,
    CorruptionError,
    LockedError,
    NotAQueueError,
    StateError,
)
from walq.producers import spool
from walq.producers.spool import SPOOL_DIR, live_entries, set_aside_files

SNIPPET = 32  # bytes of a damaged range shown as hex
PREVIEW = 60  # characters of a payload shown by dump
STATUS_FRESH = 30.0  # seconds: an older worker status is stale
RACE_RETRIES = 5
STATES = ("pending", "scheduled", "running", "dead")

Progress = Callable[[int, int], None]
# Replays a segment's leading valid records itself (the owner's fused fast
# path, QueueState.load): (buf, seq) -> where it stopped; the scan goes on from there.
Loader = Callable[[bytes, int], int]

# -- the directory ------------------------------------------------------------------


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
    # A compacted segment that replaces segments this read had already yielded:
    # a compaction ran while reading (the reader should start again).
    raced: bool = False
    # The header is damaged (header_error) but was rebuilt from the file name,
    # and the records after it were read as usual.
    rebuilt: bool = False


def segment_seqs(path: str, fs: FileSystem | None = None) -> list[int]:
    """The segment sequence numbers in queue directory `path`; NotAQueueError if not one."""
    fs = fs or OsFileSystem()
    if not fs.is_dir(path):
        raise NotAQueueError(f"{path}: no such directory")
    names = fs.listdir(path)
    seqs = sorted(s for s in (fmt.parse_segment_name(n) for n in names) if s is not None)
    if not seqs and LOCK_FILE not in names and SPOOL_DIR not in names:
        raise NotAQueueError(f"{path}: not a walq queue (no segment files)")
    return seqs


def check_queue_dir(path: str, fs: FileSystem | None = None) -> None:
    """NotAQueueError unless `path` is a queue directory or an empty one (a queue to be)."""
    fs = fs or OsFileSystem()
    if fs.is_dir(path) and not fs.listdir(path):
        return
    segment_seqs(path, fs)


def iter_scans(
    path: str,
    fs: FileSystem | None = None,
    *,
    progress: Progress | None = None,
    load: Loader | None = None,
) -> Iterator[SegmentScan]:
    """Every live segment of the queue in `path`, scanned, in log order, one at a time.

    Segments that a compacted segment supersedes (leftovers of a crashed
    compaction) are skipped; a segment removed since the directory was listed
    (by a compaction) is skipped too. With `load`, each segment's leading run
    of valid records goes to it instead of into the scan's `records`.
    """
    fs = fs or OsFileSystem()
    seqs = segment_seqs(path, fs)
    firsts = {seq: _peek_first(fs, path, seq) for seq in seqs}
    spans = [(first, seq) for seq, first in firsts.items() if first is not None and first < seq]
    todo = [s for s in seqs if firsts[s] is not None and not any(a <= s < b for a, b in spans)]
    seen: list[int] = []
    for i, seq in enumerate(todo):
        scan = _scan_segment(fs, path, seq, newest=i == len(todo) - 1, oldest=i == 0, load=load)
        if progress is not None:
            progress(i + 1, len(todo))
        if scan is None:
            continue
        if scan.first < seq and any(scan.first <= s < seq for s in seen):
            scan = attrs.evolve(scan, raced=True)
        seen.append(seq)
        yield scan


def missing(path: str, spans: list[tuple[int, int]]) -> list[str]:
    """A line per range of segments missing from a log whose live segments cover `spans`."""
    return [
        f"{posixpath.join(path, fmt.segment_name(lo))}: offset 0: {fmt.describe_missing(lo, hi)}"
        for lo, hi in fmt.missing_segments(spans)
    ]


def scan_dir(path: str, fs: FileSystem | None = None) -> list[SegmentScan]:
    """Every live segment of the queue in `path`, scanned; NotAQueueError if none."""
    for _ in range(RACE_RETRIES):
        scans = list(iter_scans(path, fs))
        if not any(s.raced for s in scans):
            return scans
    # Compactions keep racing the reader: keep the newest view of each range.
    covered = [(s.first, s.seq) for s in scans if s.first < s.seq]
    return [s for s in scans if not any(a <= s.seq < b for a, b in covered)]


def _peek_first(fs: FileSystem, path: str, seq: int) -> int | None:
    """The `first` field of segment `seq`'s header (seq if damaged); None if it is gone."""
    seg_path = posixpath.join(path, fmt.segment_name(seq))
    try:
        f = fs.open(seg_path)
    except FileNotFoundError:
        return None
    except CorruptionError:  # not a segment file (a link): _scan_segment reports it
        return seq
    try:
        data = f.pread(fmt.SEGMENT_HEADER_SIZE, 0)
    finally:
        f.close()
    try:
        header = fmt.SegmentHeader.decode(data, seg_path)
    except CorruptionError:
        return seq
    # A valid header naming another segment (a copied file) covers nothing.
    return header.first if header.seq == seq else seq


def _scan_segment(
    fs: FileSystem,
    path: str,
    seq: int,
    *,
    newest: bool,
    oldest: bool = False,
    load: Loader | None = None,
) -> SegmentScan | None:
    seg_path = posixpath.join(path, fmt.segment_name(seq))
    try:
        f = fs.open(seg_path)
    except FileNotFoundError:
        return None  # removed by a compaction since the directory was listed
    except CorruptionError as exc:  # a link or a non-file: never followed, reported as damage
        return SegmentScan(seg_path, seq, seq, 0, [], [framing.Gap(0, 0, exc.reason)], None, 0,
                           exc.reason)  # fmt: skip
    try:
        data = f.pread(f.size(), 0)
    finally:
        f.close()
    header_error = None
    header_snippet = b""
    try:
        header = fmt.SegmentHeader.decode(data, seg_path)
        if header.seq != seq:
            raise CorruptionError(seg_path, 0, f"header says segment {header.seq}")
    except CorruptionError as exc:
        if not fmt.rebuildable(exc.reason, len(data), seq):
            bad = framing.Gap(0, len(data), exc.reason)
            return SegmentScan(
                seg_path, seq, seq, len(data), [], [bad], None, 0, exc.reason, {0: data[:SNIPPET]}
            )
        header = fmt.SegmentHeader.rebuild(seq, oldest=oldest, first_type=fmt.first_type(data))
        header_error = f"{exc.reason}; {header.describe()}"
        header_snippet = data[:SNIPPET]
    start = fmt.SEGMENT_HEADER_SIZE if load is None else load(data, seq)
    if load is not None and framing.all_zero(data, start):
        scan = framing.Scan([], [], None, start)  # the common case: nothing left to classify
    else:
        scan = framing.classify(data, start, newest=newest)
    ranges = [*scan.gaps, *([scan.tail] if scan.tail is not None else [])]
    snippets = {g.start: data[g.start : min(g.end, g.start + SNIPPET)] for g in ranges}
    if header_error is not None:
        snippets[0] = header_snippet
    return SegmentScan(
        seg_path,
        seq,
        header.first,
        len(data),
        scan.records,
        scan.gaps,
        scan.tail,
        scan.end,
        header_error,
        snippets,
        rebuilt=header_error is not None,
    )


# -- dump -----------------------------------------------------------------------------

Position = tuple[int, int]  # (segment sequence number, byte offset)

ROW_TYPES = (*fmt.TYPE_NAMES.values(), "damage", "torn-tail", "notice", "spooled")


def parse_position(text: str) -> Position:
    """SEG:OFFSET (SEG a sequence number, or a segment file name) as a Position."""
    seg, sep, off = text.strip().partition(":")
    try:
        offset = int(off, 0) if sep else 0
        seq = fmt.parse_segment_name(seg if seg.endswith(".wal") else seg + ".wal")
        if seq is None:
            seq = int(seg, 10)
    except ValueError:
        raise ArgumentError(
            f"{excerpt(text)} is not a position: use SEG:OFFSET, e.g. 3:4096"
        ) from None
    if seq < 0 or offset < 0:
        raise ArgumentError(f"{excerpt(text)} is not a position: numbers must be non-negative")
    return seq, offset


def _preview(data: bytes, limit: int | None) -> str:
    if limit is None:
        return data.decode("utf-8", "replace")
    text = data[:limit].decode("utf-8", "replace")
    return text + ("..." if len(data) > limit else "")


def payload_fields(kind: int, payload: bytes, *, full: bool = False) -> dict[str, Any]:
    """A payload as dump shows it: a preview (hex for bytes) unless `full`, its kind and size."""
    if kind == ev.PAYLOAD_BYTES:
        cut = not full and len(payload) > PREVIEW // 2
        text = payload[: PREVIEW // 2 if cut else None].hex() + ("..." if cut else "")
    else:
        text = _preview(payload, None if full else PREVIEW)
    return {
        "payload": text,
        "payload_kind": "bytes" if kind == ev.PAYLOAD_BYTES else "json",
        "payload_bytes": len(payload),
    }


def describe(rtype: int, body: bytes, *, full: bool = False) -> dict[str, Any]:
    """The fields of one record's event, for dump (payload as a preview unless `full`)."""
    try:
        e = ev.decode(rtype, body)
    except ev.BadEvent as exc:
        return {"error": f"undecodable body: {exc}"}
    out: dict[str, Any] = {}
    if isinstance(e, ev.Enqueue | ev.Job):
        out.update(job=e.id, task=e.task, key=e.key, priority=e.priority)
        if e.max_attempts:
            out["max_attempts"] = e.max_attempts
        if e.due:
            out["due"] = e.due
        if e.created:
            out["created"] = e.created
        if isinstance(e, ev.Job):
            out.update(state=ev_state_name(e.state), attempt=e.attempts)
            if e.error:
                out["error"] = e.error
        elif e.origin:
            out["origin"] = e.origin
        out.update(payload_fields(e.kind, e.payload, full=full))
    elif isinstance(e, ev.Claim | ev.Release):
        # A claim starts attempt N; a release hands the job back with N attempts counted.
        one, many = ("attempt", "attempts") if isinstance(e, ev.Claim) else ("counted", "counts")
        out["jobs"] = [i for i, _ in e.items]
        out[many] = [a for _, a in e.items]
        if len(e.items) == 1:
            out["job"], out[one] = e.items[0]
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


class Dumper:
    """Turns records into dump rows, remembering each job's task for the events after it."""

    def __init__(self, *, payload: bool = True, full: bool = False) -> None:
        self.payload = payload
        self.full = full
        self.task_of: dict[int, str] = {}
        self.end: LogEnd | None = None  # where the valid log ended, after `rows`

    def rows(
        self, path: str, flt: DumpFilter | None = None, fs: FileSystem | None = None
    ) -> Iterator[dict[str, Any]]:
        """The rows of the queue in `path` that pass `flt`, reading one segment at a time."""
        flt = flt or DumpFilter()
        lo, hi = flt.segments()
        spans: list[tuple[int, int]] = []
        for scan in iter_scans(path, fs):
            end = scan.end if scan.header_error is None or scan.rebuilt else scan.size
            self.end = LogEnd(scan.seq, end, scan.first)
            spans.append((scan.first, scan.seq))
            gone = fmt.missing_segments(spans)
            if gone and gone[-1][1] == scan.first - 1:  # just before this segment
                lo, hi = gone[-1]
                yield damage_row(lo, framing.Gap(0, 0, fmt.describe_missing(lo, hi)), "damage", b"")
            if (lo is not None and scan.seq < lo) or (hi is not None and scan.seq > hi):
                for rec in scan.records:  # still learn the jobs' tasks for later rows
                    if rec.rtype in (fmt.ENQUEUE, fmt.JOB):
                        self.record_row(scan.seq, rec)
                continue
            for row in self.scan_rows(scan):
                if flt.matches(row):
                    yield row

    def record_row(self, seq: int, rec: framing.Record) -> dict[str, Any]:
        """The row of one valid record of segment `seq`."""
        row: dict[str, Any] = {
            "segment": fmt.segment_name(seq),
            "seq": seq,
            "offset": rec.offset,
            "type": fmt.TYPE_NAMES.get(rec.rtype, str(rec.rtype)),
            "size": rec.end - rec.offset,
            **describe(rec.rtype, rec.body, full=self.full),
        }
        if "task" in row and "job" in row:
            self.task_of[row["job"]] = row["task"]
        elif "jobs" in row:
            tasks = [self.task_of.get(j) for j in row["jobs"]]
            if len(tasks) == 1:
                row["task"] = tasks[0]
            else:
                row["tasks"] = tasks
        elif "job" in row:
            row["task"] = self.task_of.get(row["job"])
        if rec.rtype in (fmt.ACK, fmt.CANCEL, fmt.PURGE):
            for jid in row.get("jobs", ()):
                self.task_of.pop(jid, None)  # finished: no event names it again
        if not self.payload:
            row.pop("payload", None)
        return row

    def scan_rows(self, scan: SegmentScan) -> Iterator[dict[str, Any]]:
        """Every record and damaged range of one segment, in offset order."""
        items: list[tuple[int, dict[str, Any]]] = []
        if scan.raced:
            items.append((-1, notice_row(scan.seq, 0, _raced_text(scan))))
        items += [(r.offset, self.record_row(scan.seq, r)) for r in scan.records]
        ranges = [(g, "damage") for g in scan.gaps]
        if scan.rebuilt:
            header = framing.Gap(0, fmt.SEGMENT_HEADER_SIZE, scan.header_error or "")
            ranges.append((header, "damage"))
        if scan.tail is not None:
            ranges.append((scan.tail, "torn-tail"))
        for gap, kind in ranges:
            raw = scan.snippets.get(gap.start, b"")
            items.append((gap.start, damage_row(scan.seq, gap, kind, raw)))
        for _, row in sorted(items, key=lambda x: x[0]):
            yield row


def damage_row(seq: int, gap: framing.Gap, kind: str, raw: bytes) -> dict[str, Any]:
    """The row of a damaged range (kind "damage") or an unfinished tail ("torn-tail")."""
    return {
        "segment": fmt.segment_name(seq),
        "seq": seq,
        "offset": gap.start,
        "type": kind,
        "length": gap.end - gap.start,
        "reason": gap.reason,
        "hex": raw.hex(),
    }


def notice_row(seq: int, offset: int, text: str) -> dict[str, Any]:
    """A row that is not a record: something the reader saw happen (a compaction)."""
    return {
        "segment": fmt.segment_name(seq),
        "seq": seq,
        "offset": offset,
        "type": "notice",
        "text": text,
    }


def _raced_text(scan: SegmentScan) -> str:
    return (
        f"segments {scan.first}..{scan.seq} were compacted while being read: "
        f"segment {scan.seq} now holds the live jobs of all of them"
    )


@attrs.frozen
class DumpFilter:
    """Which dump rows to show; damage and notices pass every filter but the range."""

    job: int | None = None
    task: str | None = None
    types: frozenset[str] = frozenset()
    start: Position | None = None  # inclusive
    end: Position | None = None  # exclusive

    def __attrs_post_init__(self) -> None:
        unknown = self.types - set(ROW_TYPES)
        if unknown:
            raise ArgumentError(
                f"unknown record type {', '.join(sorted(unknown))}: one of {', '.join(ROW_TYPES)}"
            )

    def matches(self, row: dict[str, Any]) -> bool:
        """Whether `row` passes the filter."""
        if row["type"] == "spooled":  # not in the log yet: no position, no job id
            if self.start is not None or self.end is not None:
                return False
        else:
            at = (row["seq"], row["offset"])
            if self.start is not None and at < self.start:
                return False
            if self.end is not None and at >= self.end:
                return False
        if row["type"] in ("damage", "torn-tail", "notice"):
            return True  # damage is always shown; only the range hides it
        if self.types and row["type"] not in self.types:
            return False
        jobs = row.get("jobs") or ([row["job"]] if "job" in row else [])
        if self.job is not None and self.job not in jobs:
            return False
        if self.task is not None:
            tasks = row.get("tasks") or [row.get("task")]
            return self.task in tasks
        return True

    def segments(self) -> tuple[int | None, int | None]:
        """The first and last segment the range can touch (None: unbounded)."""
        return (
            None if self.start is None else self.start[0],
            None if self.end is None else self.end[0],
        )


def spooled_rows(
    path: str, *, payload: bool = True, full: bool = False, fs: FileSystem | None = None
) -> Iterator[dict[str, Any]]:
    """One row per job waiting in the spool of `path`, oldest first (read-only).

    Producers leave jobs there while an owner cannot be reached; they have no
    id until an owner ingests them, and their ENQUEUE records then carry the
    same `origin`. A file ingested while this reads is skipped.
    """
    fs = fs or OsFileSystem()
    directory = posixpath.join(path, SPOOL_DIR)
    for entry in live_entries(_names(fs, directory)):
        try:
            request = spool.read(fs, posixpath.join(directory, entry.name))
        except FileNotFoundError:
            continue  # ingested meanwhile: its jobs are in the log now
        for index, item in enumerate(request.items):
            row: dict[str, Any] = {
                "type": "spooled",
                "file": entry.name,
                "origin": spool.origin(entry.stem, index),
                "task": item.task,
                "key": item.key,
                "priority": item.priority,
                "created": request.wall,
            }
            if item.delay:
                row["delay"] = item.delay
            if item.max_attempts:
                row["max_attempts"] = item.max_attempts
            if payload:
                row.update(payload_fields(item.kind, item.data, full=full))
            yield row


def dump(
    path: str,
    flt: DumpFilter | None = None,
    *,
    payload: bool = True,
    full: bool = False,
    fs: FileSystem | None = None,
) -> Iterator[dict[str, Any]]:
    """The rows of the queue in `path` that pass `flt`, in log order (see Dumper)."""
    return Dumper(payload=payload, full=full).rows(path, flt, fs)


# -- follow ---------------------------------------------------------------------------


@attrs.frozen
class LogEnd:
    """Where a reader found the valid log to end: segment `seq` (covering from `first`)."""

    seq: int
    offset: int
    first: int


class _Readable(Protocol):
    def pread(self, size: int, offset: int) -> bytes: ...
    def size(self) -> int: ...
    def close(self) -> None: ...


class _Empty:
    """Stands for a segment whose header is damaged: it reads as empty."""

    def pread(self, size: int, offset: int) -> bytes:
        return b""

    def size(self) -> int:
        return 0

    def close(self) -> None:
        pass


def follow(
    path: str,
    start: LogEnd | None,
    *,
    dumper: Dumper | None = None,
    poll: float = 0.25,
    stop: Callable[[], bool] = lambda: False,
    fs: FileSystem | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> Iterator[dict[str, Any]]:
    """Rows of the records appended to a live queue after `start`, as they appear.

    Only complete, valid records are reported while a segment is being
    written (a half-written record is the writer at work). When a newer
    segment appears, the current one is sealed: what is left of it is read
    once more and any damage in it reported. A segment that a compaction
    rewrote meanwhile is announced and read whole (its `job` records stand for
    the events that were compacted away). Runs until `stop()` is true or the
    caller stops iterating.
    """
    fs = fs or OsFileSystem()
    dumper = dumper or Dumper()
    at = start or LogEnd(0, fmt.SEGMENT_HEADER_SIZE, 0)
    seq, offset, first = at.seq, at.offset, at.first
    f: _Readable | None = None
    try:
        while not stop():
            if f is None:
                opened = _open_from(fs, path, seq, offset, first)
                if opened is None:
                    sleep(poll)
                    continue
                f, seq, offset, notice = opened
                if notice is not None:
                    yield notice
            if any(s > seq for s in segment_seqs(path, fs)):
                # Sealed: the owner wrote all of it before creating the next segment.
                yield from _sealed_rest(seq, offset, f.pread(f.size(), 0), dumper)
                f.close()
                f = None
                seq, offset, first = seq + 1, fmt.SEGMENT_HEADER_SIZE, seq + 1
                continue
            data = f.pread(max(0, f.size() - offset), offset)
            pos = 0
            while True:
                item = framing.decode(data, pos, origin=offset)
                if not isinstance(item, framing.Record):
                    break
                whole = attrs.evolve(item, offset=offset + pos, end=offset + item.end)
                yield dumper.record_row(seq, whole)
                pos = item.end
            offset += pos
            if pos == 0:
                sleep(poll)
    finally:
        if f is not None:
            f.close()


def _open_from(
    fs: FileSystem, path: str, seq: int, offset: int, first: int
) -> tuple[_Readable, int, int, dict[str, Any] | None] | None:
    """Open segment `seq` (or the first one after it) to read from `offset`; None if none yet.

    `first` is the first segment that `seq` covered when it was last read: if
    its header now says otherwise, a compaction rewrote it, and it is read
    whole with a notice (so is a later segment that covers `seq`).
    """
    for s in segment_seqs(path, fs):
        if s < seq:
            continue
        seg_path = posixpath.join(path, fmt.segment_name(s))
        try:
            f = fs.open(seg_path)
        except FileNotFoundError:
            continue
        try:
            header = fmt.SegmentHeader.decode(f.pread(fmt.SEGMENT_HEADER_SIZE, 0), seg_path)
        except CorruptionError as exc:
            f.close()
            return _Empty(), s, 0, notice_row(s, 0, f"segment header damaged ({exc.reason})")
        rewritten = header.first != first if s == seq else header.first <= seq < s
        if s != seq or rewritten:
            offset = fmt.SEGMENT_HEADER_SIZE
        notice = None
        if rewritten:
            notice = notice_row(
                s, 0,
                f"segments {header.first}..{s} were compacted while following: "
                f"segment {s} holds the live jobs of all of them",
            )  # fmt: skip
        return f, s, offset, notice
    return None


def _sealed_rest(seq: int, offset: int, data: bytes, dumper: Dumper) -> Iterator[dict[str, Any]]:
    """The rest of sealed segment `seq` (whole file `data`) from `offset`: records and damage."""
    scan = framing.classify(data, offset, newest=False)
    for rec in scan.records:
        yield dumper.record_row(seq, rec)
    for gap in scan.gaps:
        yield damage_row(seq, gap, "damage", data[gap.start : min(gap.end, gap.start + SNIPPET)])


# -- reading the state without the lock ----------------------------------------------------


@attrs.frozen
class Owner:
    """Whether a process holds the queue's lock: True, False, or None (cannot tell)."""

    running: bool | None
    pid: int | None = None


def owner(path: str) -> Owner:
    """Who holds the queue's lock, found without taking it (Linux: /proc/locks)."""
    lock_path = posixpath.join(path, LOCK_FILE)
    want = set()
    # The owner locks the lock file and the directory (walq.directory.lock): the file may be gone.
    for locked in (lock_path, path):
        try:
            st = os.lstat(locked)  # a link planted as LOCK is not the owner's
        except FileNotFoundError:
            continue
        except OSError:
            return Owner(None)
        want.add(f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}")
    if not want:
        return Owner(False)
    from walq.directory import lock as walq_lock  # noqa: PLC0415 - the registry of this process

    if os.path.realpath(lock_path) in walq_lock._held:
        return Owner(True, os.getpid())
    try:
        with open("/proc/locks") as f:
            lines = f.read().splitlines()
    except OSError:
        return Owner(None)
    for line in lines:
        parts = line.split()
        # "1: FLOCK  ADVISORY  WRITE 1234 fe:00:5678 0 EOF" ("->" marks a waiter)
        if len(parts) >= 6 and "->" not in parts and parts[5] in want:
            with contextlib.suppress(ValueError):
                return Owner(True, int(parts[4]))
            return Owner(True)
    return Owner(False)


def worker_status(path: str, now: float | None = None) -> dict[str, Any] | None:
    """The worker's advisory status file if it is recent and its worker runs; else None."""
    now = time.time() if now is None else now
    try:
        with os.fdopen(open_fd(posixpath.join(path, STATUS_FILE), os.O_RDONLY)) as f:
            status = json.load(f)
    except (OSError, ValueError, CorruptionError):  # advisory: a link planted there is ignored
        return None
    if not isinstance(status, dict) or status.get("stopped"):
        return None
    updated = status.get("updated")
    if not isinstance(updated, int | float) or not 0 <= now - updated <= STATUS_FRESH:
        return None
    status["age"] = max(0.0, now - float(updated))
    return status


@attrs.define
class Replayed:
    """The queue's state rebuilt from its files by a reader."""

    state: QueueState
    seqs: list[int] = attrs.field(factory=list)
    ends: list[int] = attrs.field(factory=list)  # where each segment's valid log ends
    disk_bytes: int = 0
    done_seen: int = 0
    interrupted: int = 0  # running when the owner stopped (no owner now): pending again
    damage: list[str] = attrs.field(factory=list)
    tail_bytes: int = 0
    # Live jobs by state name, over all tasks and per task, as a reader sees them.
    counts: dict[str, int] = attrs.field(factory=lambda: dict.fromkeys(STATES, 0))
    tasks: dict[str, dict[str, int]] = attrs.field(factory=dict)
    running: set[int] = attrs.field(factory=set)  # ids running under a live owner


def replay(
    path: str,
    fs: FileSystem | None = None,
    *,
    now: Now | None = None,
    owner_running: bool | None = None,
    progress: Progress | None = None,
) -> Replayed:
    """Replay the log read-only into a QueueState, as an owner would see it.

    With an owner running (or not known to be absent), running jobs stay
    running; without one they are what the next owner will see: pending,
    their attempt counted (`interrupted` says how many).
    """
    fs = fs or OsFileSystem()
    for _ in range(RACE_RETRIES):
        result = _replay_once(path, fs, now or _now(), owner_running, progress)
        if result is not None:
            return result
    raise NotAQueueError(f"{path}: compactions kept changing the log while it was read; retry")


def _now() -> Now:
    return Now(time.time(), time.monotonic())


def _replay_once(
    path: str, fs: FileSystem, now: Now, owner_running: bool | None, progress: Progress | None
) -> Replayed | None:
    state = QueueState()
    out = Replayed(state)
    spans = []
    apply = state.apply

    def other(seq: int, rtype: int, offset: int, size: int, body: memoryview | bytes) -> None:
        try:
            event = ev.decode(rtype, bytes(body))
        except (ev.BadEvent, UnicodeDecodeError) as exc:
            out.damage.append(f"{fmt.segment_name(seq)}: offset {offset}: {exc}")
            return
        if isinstance(event, ev.Ack):
            out.done_seen += len(event.ids)
        apply(event, Loc(seq, offset, size), now)

    def load(data: bytes, seq: int) -> int:
        # The owner's replay (Queue._replay): enqueues packed straight in, the rest decoded.
        return state.load(data, seq, fmt.SEGMENT_HEADER_SIZE, now, other)[0]

    for scan in iter_scans(path, fs, progress=progress, load=load):
        if scan.raced:
            return None
        out.seqs.append(scan.seq)
        out.ends.append(scan.end)
        out.disk_bytes += scan.size
        spans.append((scan.first, scan.seq))
        name = posixpath.basename(scan.path)
        if scan.rebuilt:
            out.damage.append(f"{name}: offset 0: segment header: {scan.header_error}")
        for gap in scan.gaps:
            out.damage.append(
                f"{name}: offset {gap.start}: {gap.end - gap.start} bytes ({gap.reason})"
            )
        if scan.tail is not None:
            out.tail_bytes += scan.tail.end - scan.tail.start
        for rec in scan.records:
            other(scan.seq, rec.rtype, rec.offset, rec.end - rec.offset, rec.body)
    out.damage += [posixpath.basename(line) for line in missing(path, spans)]
    # finish_replay makes running jobs pending (what the next owner sees), so
    # note them first: under a live owner they are running.
    running = state.ids_in(RUNNING)
    state.finish_replay(now)
    out.counts = dict(attrs.asdict(state.counts))
    out.tasks = {task: dict(attrs.asdict(n)) for task, n in state.task_counts().items()}
    for jid in running:
        if owner_running is False:
            out.interrupted += 1  # pending now, as the next owner will see it
            continue
        out.running.add(jid)
        for counts in (out.counts, out.tasks[state.info(jid).task]):
            counts["pending"] -= 1
            counts["running"] += 1
    return out


def read_record(path: str, loc: Loc, fs: FileSystem | None = None) -> ev.Event | None:
    """The event at `loc`, or None if it is no longer there (a compaction moved it)."""
    fs = fs or OsFileSystem()
    try:
        f = fs.open(posixpath.join(path, fmt.segment_name(loc.seg)))
    except FileNotFoundError:
        return None
    try:
        data = f.pread(loc.size, loc.offset)
    finally:
        f.close()
    rec = framing.decode(data, 0, origin=loc.offset)
    if not isinstance(rec, framing.Record) or rec.end != loc.size:
        return None
    try:
        return ev.decode(rec.rtype, rec.body)
    except ev.BadEvent:
        return None


def stats(
    path: str,
    fs: FileSystem | None = None,
    *,
    now: Now | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """What `walq stats` shows, read without the lock; keys as in Queue.stats() where shared."""
    fs = fs or OsFileSystem()
    now = now or _now()
    who = owner(path)
    for _ in range(RACE_RETRIES):
        r = replay(path, fs, now=now, owner_running=who.running, progress=progress)
        try:
            oldest = _oldest_pending(path, r, fs)
        except _Moved:
            continue
        break
    else:
        raise NotAQueueError(f"{path}: compactions kept changing the log while it was read; retry")
    state = r.state
    c = r.counts
    log_bytes = sum(r.ends)
    records = log_bytes - fmt.SEGMENT_HEADER_SIZE * len(r.seqs)
    sealed_records = sum(r.ends[:-1]) - fmt.SEGMENT_HEADER_SIZE * max(0, len(r.seqs) - 1)
    sealed_live = state.live_bytes_upto(r.seqs[-2]) if len(r.seqs) > 1 else 0
    status = worker_status(path, now.wall)
    out: dict[str, Any] = {
        "path": path,
        "read_at": now.wall,
        "owner": {"running": who.running, "pid": who.pid},
        "pending": c["pending"],
        "scheduled": c["scheduled"],
        "running": c["running"],
        "dead": c["dead"],
        "unfinished": c["pending"] + c["scheduled"] + c["running"],
        "interrupted": r.interrupted,
        "done_in_log": r.done_seen,
        "next_id": state.next_id,
        "tasks": dict(sorted(r.tasks.items())),
        "oldest_pending_job": None,
        "oldest_pending_age": None,
        "next_due_in": None,
        "segments": len(r.seqs),
        "disk_bytes": r.disk_bytes,
        "log_bytes": log_bytes,
        "bytes": state.live_bytes,
        "garbage_bytes": max(0, records - state.live_bytes),
        "garbage_ratio": _ratio(records - state.live_bytes, records),
        "sealed_garbage_ratio": _ratio(sealed_records - sealed_live, sealed_records),
        "damaged": len(r.damage),
        "damage": r.damage,
        "tail_bytes": r.tail_bytes,
        "spooled": len(live_entries(_names(fs, posixpath.join(path, SPOOL_DIR)))),
        "spool_set_aside": set_aside_files(fs, path),
        "cut_files": len(_names(fs, posixpath.join(path, CUT_DIR))),
        "worker": status,
        "breakers": _breakers(status),
        # The owner's background compactor, as its worker last reported it.
        "compactor": status.get("compactor") if status is not None else None,
    }
    if oldest is not None:
        out["oldest_pending_job"], created = oldest
        out["oldest_pending_age"] = max(0.0, now.wall - created) if created else None
    due = state.next_due()
    if due is not None:
        out["next_due_in"] = max(0.0, due - now.mono)
    return out


class _Moved(Exception):
    """A record was not where the replay said: a compaction moved it (read again)."""


def _oldest_pending(path: str, r: Replayed, fs: FileSystem) -> tuple[int, float] | None:
    """(id, created) of the oldest pending job, or None if none is pending."""
    running = r.running
    first = min((j for j in r.state.ids_in(PENDING) if j not in running), default=None)
    if first is None:
        return None
    e = read_record(path, r.state.info(first).loc, fs)
    if not isinstance(e, ev.Enqueue | ev.Job):
        raise _Moved
    return first, e.created


def _ratio(part: int, whole: int) -> float:
    return round(max(0, part) / whole, 4) if whole > 0 else 0.0


def _names(fs: FileSystem, directory: str) -> list[str]:
    return fs.listdir(directory) if fs.is_dir(directory) else []


def _breakers(status: dict[str, Any] | None) -> dict[str, str] | str:
    if status is None:
        return "unknown"
    tasks = status.get("tasks")
    if not isinstance(tasks, dict):
        return "unknown"
    return {
        str(name): str(t.get("breaker", "unknown")) if isinstance(t, dict) else "unknown"
        for name, t in sorted(tasks.items())
    }


# -- dead jobs -------------------------------------------------------------------------------


@attrs.frozen
class DeadInfo:
    """A dead-lettered job as the files hold it, with its last error (and traceback)."""

    id: int
    task: str
    attempts: int
    error: str
    key: str | None
    payload_kind: str
    payload: bytes
    created: float

    def summary(self) -> dict[str, Any]:
        """For `dead list --json`: everything but the payload's bytes."""
        return {
            "id": self.id,
            "task": self.task,
            "attempts": self.attempts,
            "key": self.key,
            "error": self.error.split("\n", 1)[0],
            "created": self.created,
            "payload_kind": self.payload_kind,
            "payload_bytes": len(self.payload),
        }

    def detail(self) -> dict[str, Any]:
        """For `dead show --json`: everything, the payload as JSON or hex."""
        out = self.summary()
        out["error"] = self.error
        out["payload"] = self.payload_text()
        return out

    def payload_text(self) -> str:
        """The payload: its JSON text, or hex for bytes."""
        if self.payload_kind == "bytes":
            return self.payload.hex()
        return self.payload.decode("utf-8", "replace")


def dead_jobs(
    path: str,
    fs: FileSystem | None = None,
    *,
    ids: Iterable[int] | None = None,
    progress: Progress | None = None,
) -> list[DeadInfo]:
    """Every dead job (or those in `ids`: UnknownJobError/StateError if one is not dead)."""
    fs = fs or OsFileSystem()
    for _ in range(RACE_RETRIES):
        r = replay(path, fs, owner_running=owner(path).running, progress=progress)
        if ids is None:
            wanted = r.state.ids_in(DEAD)
        else:
            wanted = list(ids)
            for jid in wanted:
                status = r.state.status(jid)  # UnknownJobError if it never existed
                status = "running" if jid in r.running else status
                if status != "dead":
                    raise StateError(f"job {jid} is {status}, not dead")
        out = [_dead_info(path, r.state, jid, fs) for jid in wanted]
        if all(d is not None for d in out):
            return [d for d in out if d is not None]
    raise NotAQueueError(f"{path}: compactions kept moving the dead jobs while reading; retry")


def _dead_info(path: str, state: QueueState, jid: int, fs: FileSystem) -> DeadInfo | None:
    info = state.info(jid)
    e = read_record(path, info.loc, fs)
    if not isinstance(e, ev.Enqueue | ev.Job):
        return None
    error = ""
    err_loc = state.error_loc(jid)
    if err_loc is not None:
        fail = read_record(path, err_loc, fs)
        if not isinstance(fail, ev.Fail | ev.Job):
            return None
        error = fail.error
    return DeadInfo(
        id=jid,
        task=e.task,
        attempts=info.attempts,
        error=error,
        key=e.key,
        payload_kind="bytes" if e.kind == ev.PAYLOAD_BYTES else "json",
        payload=e.payload,
        created=e.created,
    )


# -- administration (takes the lock) ----------------------------------------------------------


def _open_owned(path: str, fs: FileSystem | None) -> Any:
    """Open the queue in `path` as its owner for one administrative step.

    NotAQueueError if it is not a queue (Queue.open would create one);
    LockedError naming the owner's pid if one runs.
    """
    from walq.directory.queue import Queue  # noqa: PLC0415 - the read-only tools never need it

    segment_seqs(path, fs)
    try:
        return Queue.open(path, compaction=False, fs=fs)
    except LockedError:
        who = owner(path)
        pid = f" (pid {who.pid})" if who.pid else ""
        raise LockedError(f"{path}: an owner is running{pid}") from None


@attrs.frozen
class Enqueued:
    """Where `enqueue` put a job: its id (None while spooled) and the way it went."""

    job: int | None
    route: str  # "owner" (its socket), "direct" (no owner: the lock taken), "spool", "redis"


def enqueue(
    path: str,
    task: str,
    payload: Any = None,
    *,
    key: str | None = None,
    delay: float = 0.0,
    priority: int = 0,
    timeout: float = 60.0,
    create: bool = False,
    fs: FileSystem | None = None,
) -> Enqueued:
    """Add one job durably to the queue in `path` (an existing queue or an empty directory).

    With no owner running, take the lock, open the queue (it replays, and
    ingests the spool) and enqueue directly, so the job is in the log at
    once. With an owner, send it over the owner's socket, waiting up to
    `timeout` seconds for the reply. Only an owner that holds the lock but
    cannot be reached leaves the job in the spool, for it to ingest. A queue
    whose lock this user may not open is left to the producer's way, whose
    error names the socket or spool the user may not use. `create` makes a
    missing directory a new queue.
    """
    from walq.directory.queue import Queue  # noqa: PLC0415
    from walq.producers.client import connect  # noqa: PLC0415 - the read-only tools never need it

    if not (create and not (fs or OsFileSystem()).exists(path)):
        check_queue_dir(path, fs)
    try:
        q = Queue.open(path, compaction=False, create=create, fs=fs)
    except (LockedError, PermissionError):  # an owner runs, or the queue is another user's
        with connect(path, timeout=timeout, fs=fs) as producer:
            jid = producer.enqueue(task, payload, key=key, delay=delay, priority=priority)
        return Enqueued(job=jid, route="spool" if jid is None else "owner")
    with q:
        jid = q.enqueue(task, payload, key=key, delay=delay, priority=priority, sync=True)
    return Enqueued(job=jid, route="direct")


def requeue(path: str, ids: Iterable[int], fs: FileSystem | None = None) -> list[int]:
    """Give dead jobs a fresh start; all or none (UnknownJobError/StateError). Needs the lock."""
    wanted = list(ids)
    with _open_owned(path, fs) as q:
        for jid in wanted:
            status = q.status(jid)
            if status != "dead":
                raise StateError(f"job {jid} is {status}, not dead")
        for jid in wanted:
            q.requeue(jid)
    return wanted


def purge(path: str, ids: Iterable[int] | None = None, fs: FileSystem | None = None) -> int:
    """Delete dead jobs (all of them, or `ids`); return how many. Needs the lock."""
    with _open_owned(path, fs) as q:
        if ids is not None:
            ids = list(ids)
            for jid in ids:
                q.status(jid)  # UnknownJobError for an id that never existed
        return int(q.purge(ids))


@attrs.frozen
class Compacted:
    """What `compact` did: the compaction's own numbers and the files' sizes around it."""

    segments_in: int
    bytes_in: int
    bytes_out: int
    jobs: int
    seconds: float
    disk_before: int
    disk_after: int
    segments_before: int
    segments_after: int


def compact(path: str, progress: Progress | None = None, fs: FileSystem | None = None) -> Compacted:
    """Compact the sealed segments of an owner-less queue. Needs the lock."""
    fs = fs or OsFileSystem()
    with _open_owned(path, fs) as q:
        before = _disk(fs, path)
        result = q.compact(progress=progress)
        after = _disk(fs, path)
    return Compacted(
        segments_in=result.segments_in,
        bytes_in=result.bytes_in,
        bytes_out=result.bytes_out,
        jobs=result.jobs,
        seconds=result.seconds,
        disk_before=before[1],
        disk_after=after[1],
        segments_before=before[0],
        segments_after=after[0],
    )


def _disk(fs: FileSystem, path: str) -> tuple[int, int]:
    """(segments, bytes) of the segment files in `path`."""
    count = total = 0
    for seq in segment_seqs(path, fs):
        with contextlib.suppress(FileNotFoundError):
            f = fs.open(posixpath.join(path, fmt.segment_name(seq)))
            try:
                total += f.size()
                count += 1
            finally:
                f.close()
    return count, total


# -- fsck and repair --------------------------------------------------------------------------


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
    return FsckReport(len(scans), records, problems, warnings, lost)


def repair(path: str, fs: FileSystem | None = None) -> list[str]:
    """Rewrite damaged segments without their damaged ranges; keep the originals aside.

    Takes the queue's lock, so no owner may be running. Returns what it did.
    """
    fs = fs or OsFileSystem()
    try:
        lock = fs.lock(posixpath.join(path, LOCK_FILE), 0.0)
    except LockedError:
        who = owner(path)
        pid = f" (pid {who.pid})" if who.pid else ""
        raise LockedError(f"{path}: an owner is running{pid}") from None
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
