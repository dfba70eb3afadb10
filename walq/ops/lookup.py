"""One job's records in a queue directory, found without replaying the log.

A job's records all lie in the segment holding its enqueue record and the
segments after it, and enqueue ids grow with the log: each segment's first
enqueue (or compacted job) id, read from its first records, says where to
start. In each segment from there on, the job's id as the 8 bytes every
record stores it as is searched for at C speed; a segment without them is
skipped unread record by record, and around each hit the record holding it
is found by resynchronising a little before it (the same CRC-checked resync
recovery uses) and walking forward. Read-only, without the lock, beside an
owner or none; a compaction racing the read is detected and the read retried.
"""

from __future__ import annotations

import posixpath
import struct
from collections.abc import Iterator

import attrs

from walq.core import events as ev
from walq.core import format as fmt
from walq.core import framing
from walq.core.state import RUNNING, Loc, QueueState
from walq.directory.fs import FileSystem, OsFileSystem
from walq.errors import CorruptionError, NotAQueueError
from walq.ops.replay import now_clock
from walq.ops.scan import RACE_RETRIES, segment_seqs

HEAD = 64 << 10  # bytes read from a segment's start to find its first job id
WINDOWS = (4 << 10, 64 << 10, 1 << 20)  # how far before a hit to resynchronise, tried in turn
SEEK_SPAN = 64 << 10  # a seek stops when the job's record lies within this many bytes
WALK = 1 << 20  # a hit this close after a record found is reached by walking from it
_ID = struct.Struct("<Q")
# Records whose body starts with the job id (enqueue, job, fail): a hit 16 bytes in.
_ID_FIRST = frozenset({fmt.ENQUEUE, fmt.JOB, fmt.FAIL})


@attrs.frozen
class _Segment:
    seq: int
    first: int  # the first segment it covers (a compacted one: 1)
    first_id: int | None  # its first enqueue or job record's id (None: none in its head)


class _Raced(Exception):
    """A segment changed under the read (a compaction): read again."""


class Unsure(Exception):
    """The records alone cannot tell whether the job ever existed: replay the log instead.

    (No record names it and no segment starts past its id: it may have been
    compacted away, which only the compacted segment's meta record says.)
    """


def job_records(
    path: str, job_id: int, fs: FileSystem | None = None
) -> list[tuple[int, framing.Record]]:
    """Every valid record that names job `job_id`, as (segment seq, record), in log order.

    A compacted segment's meta record is included when it names the job
    (cancelled or purged before the compaction).
    """
    return _job_records(path, job_id, fs or OsFileSystem())[1]


def _job_records(
    path: str, job_id: int, fs: FileSystem
) -> tuple[list[_Segment], list[tuple[int, framing.Record]]]:
    if not 0 <= job_id < 1 << 64:  # no record can name it (ids are u64 in the log)
        return _segments(path, fs), []
    for _ in range(RACE_RETRIES):
        segments = _segments(path, fs)
        try:
            return segments, list(_records(path, job_id, fs, segments))
        except _Raced:
            continue
    raise NotAQueueError(f"{path}: compactions kept changing the log while it was read; retry")


def _segments(path: str, fs: FileSystem) -> list[_Segment]:
    """The live segments in log order, with the first job id each holds."""
    out: list[_Segment] = []
    for seq in segment_seqs(path, fs):
        seg_path = posixpath.join(path, fmt.segment_name(seq))
        try:
            f = fs.open(seg_path)
        except FileNotFoundError:
            continue  # removed by a compaction since the listing
        try:
            head = f.pread(HEAD, 0)
        finally:
            f.close()
        try:
            header = fmt.SegmentHeader.decode(head, seg_path)
        except CorruptionError:
            header = fmt.SegmentHeader(seq=seq, first=seq)
        out.append(_Segment(seq, header.first, _first_id(head)))
    # A compacted segment supersedes the segments it covers (leftovers of a crash).
    spans = [(s.first, s.seq) for s in out if s.first < s.seq]
    return [s for s in out if not any(a <= s.seq < b for a, b in spans)]


def _first_id(head: bytes) -> int | None:
    pos = fmt.SEGMENT_HEADER_SIZE
    while True:
        item = framing.decode(head, pos)
        if not isinstance(item, framing.Record):
            return None
        if item.rtype in (fmt.ENQUEUE, fmt.JOB) and len(item.body) >= _ID.size:
            return int(_ID.unpack_from(item.body)[0])
        pos = item.end


def _records(
    path: str, job_id: int, fs: FileSystem, segments: list[_Segment]
) -> Iterator[tuple[int, framing.Record]]:
    # The last segment whose first id is at most the job's: its enqueue is there or later.
    start = 0
    for i, seg in enumerate(segments):
        if seg.first_id is not None and seg.first_id <= job_id:
            start = i
        elif seg.first_id is not None:
            break
    if segments and segments[0].first_id is not None and segments[0].first_id > job_id:
        # Older than every job in the log: it finished before a compaction, which
        # remembers it in its meta record only if it was cancelled or purged.
        if segments[0].first < segments[0].seq:
            meta = _meta_record(_read(path, segments[0], fs))
            if meta is not None and _names(meta, job_id):
                yield segments[0].seq, meta
        return
    pattern = _ID.pack(job_id)
    for i, seg in enumerate(segments[start:]):
        data = _read(path, seg, fs)
        origin = fmt.SEGMENT_HEADER_SIZE
        if i == 0:  # the job's own record is in this segment, if anywhere: seek to it
            origin = _seek(data, job_id)
        found = _find(data, pattern, job_id, origin)
        if (
            i == 0
            and origin > fmt.SEGMENT_HEADER_SIZE
            and not any(r.rtype in (fmt.ENQUEUE, fmt.JOB) for r in found)
        ):
            found = _find(data, pattern, job_id, fmt.SEGMENT_HEADER_SIZE)  # a seek gone astray
        for rec in found:
            yield seg.seq, rec


def _read(path: str, seg: _Segment, fs: FileSystem) -> bytes:
    seg_path = posixpath.join(path, fmt.segment_name(seg.seq))
    try:
        f = fs.open(seg_path)
    except FileNotFoundError:
        raise _Raced from None
    try:
        data = f.pread(f.size(), 0)
    finally:
        f.close()
    try:
        header = fmt.SegmentHeader.decode(data, seg_path)
    except CorruptionError:
        header = fmt.SegmentHeader(seq=seg.seq, first=seg.seq)
    if header.first != seg.first:
        raise _Raced  # rewritten by a compaction since it was listed
    return data


def _find(data: bytes, pattern: bytes, job_id: int, origin: int) -> list[framing.Record]:
    """The records of `data` from `origin` on that name the job, in offset order."""
    # Search for the id's significant bytes: a needle ending in a zero byte would
    # crawl through zeroed (preallocated) space; the rest of the id is checked per hit.
    needle = pattern.rstrip(b"\0")
    if len(needle) < 3:
        needle = pattern
    found: dict[int, framing.Record] = {}
    walked = -1  # the end of the last record found: the next one is walked to from there
    hit = data.find(needle, origin)
    while hit >= 0:
        rec = None
        if data[hit : hit + _ID.size] == pattern:
            if 0 <= walked <= hit and hit - walked <= WALK:
                rec = _walk(data, walked, hit)
            if rec is None:
                rec = _record_at(data, hit)
            if rec is not None:
                walked = rec.end
                if _names(rec, job_id):
                    found[rec.offset] = rec
        hit = data.find(needle, hit + 1 if rec is None else max(rec.end, hit + 1))
    return [found[offset] for offset in sorted(found)]


_META_TYPE = bytes([fmt.META, 0, 0, 0])  # a meta record header's type, flags and reserved bytes


def _meta_record(data: bytes) -> framing.Record | None:
    """A compacted segment's meta record: searched for from the end, where it was written."""
    end = len(data)
    while True:
        at = data.rfind(_META_TYPE, fmt.SEGMENT_HEADER_SIZE + 8, end)
        if at < 0:
            return None
        rec = framing.decode(data, at - 8)
        if isinstance(rec, framing.Record) and rec.rtype == fmt.META:
            return rec
        end = at + len(_META_TYPE) - 1


def _walk(data: bytes, pos: int, hit: int) -> framing.Record | None:
    """The record holding offset `hit`, walking record by record from boundary `pos`."""
    while pos <= hit:
        rec = framing.decode(data, pos)
        if not isinstance(rec, framing.Record):
            return None
        if rec.end > hit:
            return rec
        pos = rec.end
    return None


def _seek(data: bytes, job_id: int) -> int:
    """An offset of `data` at or before the job's enqueue (or compacted job) record.

    Their ids grow along a segment: a binary search over offsets, each probe
    resynchronising to the next valid record and reading on to an enqueue or
    job record's id. A probe that finds none (zeroed space) looks earlier.
    """
    lo, hi = fmt.SEGMENT_HEADER_SIZE, len(data)
    while hi - lo > SEEK_SPAN:
        mid = (lo + hi) // 2
        probe = _id_after(data, mid)
        if probe is not None and probe[1] < job_id:
            lo = probe[0]
        else:
            hi = mid
    return lo


def _id_after(data: bytes, at: int) -> tuple[int, int] | None:
    """(offset, id) of the first enqueue or job record after offset `at`, looking a little way."""
    window = data[at : at + SEEK_SPAN]
    rec: framing.Decoded | None = framing.resync(window, 0, origin=at)
    while isinstance(rec, framing.Record):
        if rec.rtype in (fmt.ENQUEUE, fmt.JOB) and len(rec.body) >= _ID.size:
            return at + rec.offset, int(_ID.unpack_from(rec.body)[0])
        rec = framing.decode(window, rec.end, origin=at)
    return None


def _record_at(data: bytes, hit: int) -> framing.Record | None:
    """The valid record whose bytes hold offset `hit`, or None if none does."""
    head = hit - fmt.RECORD_HEADER_SIZE
    if head >= fmt.SEGMENT_HEADER_SIZE:
        rec = framing.decode(data, head)
        if isinstance(rec, framing.Record) and rec.rtype in _ID_FIRST:
            return rec
    for window in (*WINDOWS, hit):
        pos = max(fmt.SEGMENT_HEADER_SIZE, hit - window)
        if pos > fmt.SEGMENT_HEADER_SIZE:
            first = framing.resync(data, pos - 1)
            if first is None or first.offset > hit:
                continue
            pos = first.offset
        while pos <= hit:
            rec = framing.decode(data, pos)
            if not isinstance(rec, framing.Record):
                break
            if rec.end > hit:
                return rec
            pos = rec.end
        if pos == fmt.SEGMENT_HEADER_SIZE or window == hit:
            break
    return None


def _names(rec: framing.Record, job_id: int) -> bool:
    """Whether record `rec` is about job `job_id` (not a payload's bytes that look like it)."""
    try:
        e = ev.decode(rec.rtype, rec.body)
    except ev.BadEvent:
        return False
    return job_id in _ids_of(e)


def _ids_of(e: ev.Event) -> set[int]:
    if isinstance(e, ev.Enqueue | ev.Job | ev.Fail | ev.Keep):
        return {e.id}
    if isinstance(e, ev.Unique):
        return {jid for jid, _ in e.items}
    if isinstance(e, ev.Claim | ev.Release):
        return {jid for jid, _ in e.items}
    if isinstance(e, ev.Meta):
        return {jid for jid, _ in e.tombstones}
    if isinstance(e, ev.Pause | ev.Resume | ev.Schedule):
        return set()
    if isinstance(e, ev.After):  # a dependent job's enqueue
        return {e.job.id}
    if isinstance(e, ev.Finish):  # an ack, and the follow-up jobs it commits
        return {e.id} | set().union(*(_ids_of(child) for child in e.children))
    if isinstance(e, ev.Flow):  # a checkpoint's kept results and waiting jobs
        return {r[0] for r in e.results} | {w[0] for w in e.waits}
    return set(e.ids)


def job_state(
    path: str, job_id: int, fs: FileSystem | None = None, *, owner_running: bool | None = None
) -> dict[str, object]:
    """One job's detail (QueueBackend.job_detail's keys) from its records alone.

    As a replay would see it: with no owner running, a running job is pending
    again with its attempt counted. UnknownJobError if no such job exists;
    Unsure if only a replay can tell.
    """
    fs = fs or OsFileSystem()
    now = now_clock()
    segments, records = _job_records(path, job_id, fs)
    state = QueueState()
    error = None
    for seq, rec in records:
        e = ev.decode(rec.rtype, rec.body)
        if isinstance(e, ev.After) and e.job.id == job_id:
            # A dependent's fate follows its parents' (a dead parent cancels it),
            # which its own records do not say: only a replay can tell.
            raise Unsure(job_id)
        state.apply(e, Loc(seq, rec.offset, rec.end - rec.offset), now)
        if isinstance(e, ev.Fail | ev.Job) and e.error:
            error = e.error
        elif isinstance(e, ev.Requeue):
            error = None
    # Ids below the first job id of any segment were enqueued (and finished, if not found).
    firsts = [s.first_id for s in segments if s.first_id is not None]
    if any(f > job_id for f in firsts):
        state.next_id = max(state.next_id, job_id + 1)
    elif not records:
        raise Unsure(job_id)
    running = job_id in state and state.info(job_id).state == RUNNING
    state.finish_replay(now)
    out: dict[str, object] = {"id": job_id, "status": state.status(job_id)}
    if job_id not in state:
        return out
    info = state.info(job_id)
    out.update(
        status="running" if running and owner_running is not False else out["status"],
        task=info.task,
        attempts=info.attempts,
        max_attempts=info.max_attempts,
        priority=info.priority,
        key=state.key_of(job_id),
        error=error if out["status"] == "dead" else None,
    )
    return out
