"""`walq dump`: a queue directory's records (and its spool) as rows, with filters.

A row is a plain dict (what `walq dump --json` prints); damage and torn
tails are rows too, in their place in the log.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterator
from typing import Any

import attrs

from walq.core import events as ev
from walq.core import format as fmt
from walq.core import framing
from walq.core.text import excerpt
from walq.directory.fs import FileSystem, OsFileSystem
from walq.errors import ArgumentError
from walq.ops.scan import SegmentScan, iter_scans, list_names
from walq.producers import spool
from walq.producers.spool import SPOOL_DIR, live_entries

PREVIEW = 60  # characters of a payload shown by dump


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
    return _describe(e, full=full)


def _describe(e: ev.Event, *, full: bool) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if isinstance(e, ev.After):
        out.update(_describe(e.job, full=full), after=list(e.parents))
        if e.policy == ev.AFTER_ALWAYS:
            out["after_policy"] = "always"
    elif isinstance(e, ev.Finish):
        out.update(job=e.id, result_bytes=len(e.result))
        if e.result_kind != ev.RESULT_NONE:
            out["keep_until"] = e.keep_until
        if e.children:
            out["follow"] = [_describe(c, full=full) for c in e.children]
    elif isinstance(e, ev.Enqueue | ev.Job):
        out.update(job=e.id, task=e.task, key=e.key, priority=e.priority)
        given = {"max_attempts": e.max_attempts, "due": e.due, "created": e.created}
        out.update((name, value) for name, value in given.items() if value)
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
    elif isinstance(e, ev.Schedule):
        out.update(schedule=e.name, last=e.last, spec=e.spec)
    elif isinstance(e, ev.Unique):
        out.update(jobs=[i for i, _ in e.items], unique_for=[s for _, s in e.items])
    elif isinstance(e, ev.Keep):
        out.update(job=e.id, key=e.key, until=e.until)
    elif isinstance(e, ev.Pause | ev.Resume):
        out["task"] = e.task
    elif isinstance(e, ev.Flow):
        out.update(results=len(e.results), waits=len(e.waits))
    elif isinstance(e, ev.Attempt):
        # How attempts ran (written with their outcome): one job's as scalars, many as lists.
        out.update(host=e.host, owner=e.owner, jobs=[i[0] for i in e.items])
        out.update(attempts=[i[1] for i in e.items], starts=[round(i[2], 3) for i in e.items])
        out.update(durations=[round(i[3], 4) for i in e.items], pids=[i[4] for i in e.items])
        if len(e.items) == 1:
            jid, attempt, started, seconds, pid = e.items[0]
            out.update(job=jid, attempt=attempt, started=round(started, 3))
            out.update(seconds=round(seconds, 4), pid=pid)
    else:
        out["jobs"] = list(e.ids)
        if len(e.ids) == 1:
            out["job"] = e.ids[0]
    return out


def ev_state_name(state: int) -> str:
    """The name of a job state code."""
    return {ev.PENDING: "pending", ev.DEAD: "dead", ev.WAITING: "waiting"}.get(state, str(state))


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
            if rec.rtype == fmt.ATTEMPT and not any(tasks):
                pass  # after the ack it describes: the tasks are in the rows before
            elif len(tasks) == 1:
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
    for entry in live_entries(list_names(fs, directory)):
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


def dump_job(
    path: str,
    job_id: int,
    *,
    payload: bool = True,
    full: bool = False,
    fs: FileSystem | None = None,
) -> Iterator[dict[str, Any]]:
    """The rows about job `job_id`, found without reading every record (walq.ops.lookup).

    The same rows as `dump(path, DumpFilter(job=job_id))` but for damage
    elsewhere in the log, which only a full read shows (`walq fsck`).
    """
    from walq.ops import lookup  # noqa: PLC0415 - lookup reads through walq.ops.replay

    dumper = Dumper(payload=payload, full=full)
    flt = DumpFilter(job=job_id)
    for seq, rec in lookup.job_records(path, job_id, fs):
        row = dumper.record_row(seq, rec)
        if flt.matches(row):
            yield row


@attrs.frozen
class LogEnd:
    """Where a reader found the valid log to end: segment `seq` (covering from `first`)."""

    seq: int
    offset: int
    first: int
