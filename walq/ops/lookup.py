"""One job's records in a queue directory, found without replaying the log.

With a checkpoint (walq.directory.checkpoint), a job's state is read from it
as of its position -- only the shard of the checkpoint's jobs that holds the
job is decoded -- and only the log after that position is searched for the
job's later records. The checkpoint is used for this only if its own
checksums hold, the log's segments are the ones it names with the sizes it
saw (a sealed one unchanged in length, the last one at least as long) and the
job's record is where it says; otherwise (no checkpoint, a damaged or stale
one, a job enqueued after others) the lookup reads the job's records as below,
never an answer from a checkpoint it could not check. (Unlike open, it does
not checksum every byte the checkpoint covers: that is a read of the whole log.
Damage inside those bytes is for `walq fsck` and open to report, as it was
for the records-only lookup, which skips what it cannot read.)

Without one: a job's records all lie in the segment holding its enqueue
record and the segments after it, and enqueue ids grow with the log: each
segment's first enqueue (or compacted job) id, read from its first records,
says where to start. In each segment from there on, the job's id as the 8
bytes every record stores it as is searched for at C speed; around each hit
the record holding it is found by resynchronising a little before it (the
same CRC-checked resync recovery uses) and walking forward.

Either way a segment is read only up to the end of its records, a chunk at a
time, not through a preallocated segment's zeroed space. Read-only, without
the lock, beside an owner or none; a compaction racing the read is detected
and the read retried.
"""

from __future__ import annotations

import logging
import posixpath
import struct
from collections.abc import Iterator
from typing import TypeVar

import attrs

from walq.core import checkpoint as ckpt
from walq.core import events as ev
from walq.core import format as fmt
from walq.core import framing
from walq.core.packed import M32, N_STATES, OFFSET, SEG, SIZE, seq_of
from walq.core.state import DEAD, RUNNING, Loc, Now, QueueState, with_cause
from walq.directory import checkpoint as checkpoints
from walq.directory.fs import File, FileSystem, OsFileSystem
from walq.errors import CorruptionError, NotAQueueError, WalqError
from walq.ops.replay import now_clock
from walq.ops.scan import RACE_RETRIES, read_record, segment_seqs

log = logging.getLogger("walq.lookup")

CHUNK = 256 << 10  # bytes read at a time up to a segment's written end
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
    out = [
        _Segment(seq, header.first, _first_id(head))
        for seq, header, head, _ in _heads(path, fs, HEAD)
    ]
    return _superseded_dropped(out)


def _heads(
    path: str, fs: FileSystem, n: int
) -> Iterator[tuple[int, fmt.SegmentHeader, bytes, int]]:
    """Each segment the directory lists, in log order: its seq, header, first `n` bytes
    and size (a damaged header reads as the segment's own; a vanished file is skipped)."""
    for seq in segment_seqs(path, fs):
        seg_path = posixpath.join(path, fmt.segment_name(seq))
        try:
            f = fs.open(seg_path)
        except FileNotFoundError:
            continue  # removed by a compaction since the listing
        try:
            head, size = f.pread(n, 0), f.size()
        finally:
            f.close()
        try:
            header = fmt.SegmentHeader.decode(head[: fmt.SEGMENT_HEADER_SIZE], seg_path)
        except CorruptionError:
            header = fmt.SegmentHeader(seq=seq, first=seq)
        yield seq, header, head, size


_S = TypeVar("_S", "_Segment", "_Live")


def _superseded_dropped(segments: list[_S]) -> list[_S]:
    """Without the segments a compacted one covers (leftovers of a crash)."""
    spans = [(s.first, s.seq) for s in segments if s.first < s.seq]
    return [s for s in segments if not any(a <= s.seq < b for a, b in spans)]


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
        f = _open(path, seg.seq, seg.first, fs)
        try:
            origin = fmt.SEGMENT_HEADER_SIZE
            if i == 0:  # the job's own record is in this segment, if anywhere: seek to it
                origin = _seek(f, job_id)
            found = _found(f, pattern, job_id, origin)
            if (
                i == 0
                and origin > fmt.SEGMENT_HEADER_SIZE
                and not any(r.rtype in (fmt.ENQUEUE, fmt.JOB) for r in found)
            ):  # a seek gone astray
                found = _found(f, pattern, job_id, fmt.SEGMENT_HEADER_SIZE)
        finally:
            f.close()
        for rec in found:
            yield seg.seq, rec


def _open(path: str, seq: int, first: int, fs: FileSystem) -> File:
    """Segment `seq`, open; _Raced if a compaction removed or rewrote it since it was listed."""
    seg_path = posixpath.join(path, fmt.segment_name(seq))
    try:
        f = fs.open(seg_path)
    except FileNotFoundError:
        raise _Raced from None
    head = f.pread(fmt.SEGMENT_HEADER_SIZE, 0)
    try:
        header = fmt.SegmentHeader.decode(head, seg_path)
    except CorruptionError:
        header = fmt.SegmentHeader(seq=seq, first=seq)
    if header.first != first:
        f.close()
        raise _Raced
    return f


def _found(f: File, pattern: bytes, job_id: int, origin: int) -> list[framing.Record]:
    """The records naming the job in segment `f` from record boundary `origin` on."""
    data = written(f, origin)
    return [
        attrs.evolve(rec, offset=rec.offset + origin, end=rec.end + origin)
        for rec in _find(data, pattern, job_id, 0, origin)
    ]


def _read(path: str, seg: _Segment, fs: FileSystem) -> bytes:
    """A segment's bytes up to the end of its records."""
    f = _open(path, seg.seq, seg.first, fs)
    try:
        return f.pread(fmt.SEGMENT_HEADER_SIZE, 0) + written(f, fmt.SEGMENT_HEADER_SIZE)
    finally:
        f.close()


def written(f: File, start: int) -> bytes:
    """The bytes of segment file `f` from record boundary `start` to where its records end.

    Read a chunk at a time and no further than the chunk holding that end: a
    preallocated segment's zeroed space is not read. The end is where a walk
    of records reaches zeros (framing.End) at or past the last non-zero byte
    read; damage that stops the walk means reading on (to the file's end).
    """
    size = f.size()
    buf = bytearray()
    at = start
    nonzero = 0  # in `buf`: the end of its last non-zero byte
    while at < size:
        data = f.pread(min(CHUNK, size - at), at)
        if not data:
            break
        kept = len(data.rstrip(b"\0"))
        if kept:
            nonzero = len(buf) + kept
        buf += data
        at += len(data)
        # A record header is never zero: the records may end only before a zero one.
        if len(buf) - nonzero >= min(fmt.RECORD_HEADER_SIZE, size - start - nonzero):
            end = _end_of_records(buf, nonzero, start)
            if end is not None:
                del buf[end:]
                break
    return bytes(buf)


def _end_of_records(buf: bytearray, zeros: int, base: int) -> int | None:
    """Where the records of `buf` (a record boundary at 0, file offset `base`) end, if they
    end at or past offset `zeros`, from which `buf` holds only zeros; None if they do not."""
    for window in (*WINDOWS, zeros):
        lo = max(0, zeros - window)
        data = bytes(memoryview(buf)[lo:])  # the window and the zeros after it
        pos = 0
        if lo > 0:
            first = framing.resync(data, -1, origin=base + lo)
            if first is None or lo + first.offset > zeros:
                continue
            pos = first.offset
        while True:
            item = framing.decode(data, pos, origin=base + lo)
            if not isinstance(item, framing.Record):
                break
            pos = item.end
        if isinstance(item, framing.End) and lo + pos >= zeros:
            return lo + pos
        if isinstance(item, framing.Incomplete):
            return None  # a record runs on past what was read
        if lo == 0:
            break
    return None


def _find(
    data: bytes, pattern: bytes, job_id: int, origin: int, base: int = 0
) -> list[framing.Record]:
    """The records of `data` from `origin` on that name the job, in offset order.

    `data` is a segment's bytes from file offset `base` on (0: the whole
    segment; otherwise a record boundary), and the offsets are `data`'s.
    """
    lo = max(0, fmt.SEGMENT_HEADER_SIZE - base)  # the first record boundary in `data`
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
                rec = _walk(data, walked, hit, base)
            if rec is None:
                rec = _record_at(data, hit, lo, base)
            if rec is not None:
                walked = rec.end
                if _names(rec, job_id):
                    found[rec.offset] = rec
        hit = data.find(needle, hit + 1 if rec is None else max(rec.end, hit + 1))
    return [found[offset] for offset in sorted(found)]


def _meta_record(data: bytes) -> framing.Record | None:
    """A compacted segment's meta record: searched for from the end, where it was written."""
    return _last_record(data, fmt.META)


def _last_record(data: bytes, rtype: int) -> framing.Record | None:
    """A compacted segment's last record of type `rtype` (meta, flow: written at its end)."""
    marker = bytes([rtype, 0, 0, 0])  # a record header's type, flags and reserved bytes
    end = len(data)
    while True:
        at = data.rfind(marker, fmt.SEGMENT_HEADER_SIZE + 8, end)
        if at < 0:
            return None
        rec = framing.decode(data, at - 8)
        if isinstance(rec, framing.Record) and rec.rtype == rtype:
            return rec
        end = at + len(marker) - 1


def _walk(data: bytes, pos: int, hit: int, base: int) -> framing.Record | None:
    """The record holding offset `hit`, walking record by record from boundary `pos`."""
    while pos <= hit:
        rec = framing.decode(data, pos, origin=base)
        if not isinstance(rec, framing.Record):
            return None
        if rec.end > hit:
            return rec
        pos = rec.end
    return None


def _seek(f: File, job_id: int) -> int:
    """A record boundary of segment `f` at or before the job's enqueue (or compacted job) record.

    Their ids grow along a segment: a binary search over offsets, each probe
    reading a little of the file, resynchronising to the next valid record and
    reading on to an enqueue or job record's id. A probe that finds none
    (zeroed space) looks earlier.
    """
    lo, hi = fmt.SEGMENT_HEADER_SIZE, f.size()
    while hi - lo > SEEK_SPAN:
        mid = (lo + hi) // 2
        probe = _id_after(f, mid)
        if probe is not None and probe[1] < job_id:
            lo = probe[0]
        else:
            hi = mid
    return lo


def _id_after(f: File, at: int) -> tuple[int, int] | None:
    """(offset, id) of the first enqueue or job record after offset `at`, looking a little way."""
    window = f.pread(SEEK_SPAN, at)
    rec: framing.Decoded | None = framing.resync(window, 0, origin=at)
    while isinstance(rec, framing.Record):
        if rec.rtype in (fmt.ENQUEUE, fmt.JOB) and len(rec.body) >= _ID.size:
            return at + rec.offset, int(_ID.unpack_from(rec.body)[0])
        rec = framing.decode(window, rec.end, origin=at)
    return None


def _record_at(data: bytes, hit: int, lo: int, base: int) -> framing.Record | None:
    """The valid record whose bytes hold offset `hit`, or None if none does."""
    head = hit - fmt.RECORD_HEADER_SIZE
    if head >= lo:
        rec = framing.decode(data, head, origin=base)
        if isinstance(rec, framing.Record) and rec.rtype in _ID_FIRST:
            return rec
    for window in (*WINDOWS, hit):
        pos = max(lo, hit - window)
        if pos > lo:
            first = framing.resync(data, pos - 1, origin=base)
            if first is None or first.offset > hit:
                continue
            pos = first.offset
        while pos <= hit:
            rec = framing.decode(data, pos, origin=base)
            if not isinstance(rec, framing.Record):
                break
            if rec.end > hit:
                return rec
            pos = rec.end
        if pos == lo or window == hit:
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
    if isinstance(e, ev.Attempt):  # how the job's attempts ran
        return {i[0] for i in e.items}
    if isinstance(e, ev.Meta):
        return {jid for jid, _ in e.tombstones}
    if isinstance(e, ev.Pause | ev.Resume | ev.Schedule):
        return set()
    if isinstance(e, ev.After):  # a dependent job's enqueue
        return {e.job.id}
    if isinstance(e, ev.Finish):  # an ack, and the follow-up jobs it commits
        return {e.id} | set().union(*(_ids_of(child) for child in e.children))
    if isinstance(e, ev.Flow):  # a checkpoint's kept results and waiting jobs
        return {r[0] for r in e.results} | {w[0] for w in e.waits} | {c[0] for c in e.causes}
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
    found = _from_checkpoint(path, job_id, fs, now, owner_running)
    if found is not None:
        return found
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
    if job_id not in state and segments:  # a compacted segment is the first (1 may be one)
        _compacted_cause(path, segments[0], job_id, fs, state, now)
    return _detail(state, job_id, running and owner_running is not False, error)


def _compacted_cause(
    path: str, seg: _Segment, job_id: int, fs: FileSystem, state: QueueState, now: Now
) -> None:
    """A dependent cancelled with its parent, whose own records a compaction dropped: its
    cause is in the compacted segment's flow record (JSON, which the search for the id's
    bytes does not find), written at the segment's end with the meta record."""
    try:
        if state.status(job_id) != "cancelled" or job_id in state.causes:
            return
    except WalqError:
        return  # unknown: _detail says so
    try:
        data = _read(path, seg, fs)
    except _Raced:
        raise Unsure(job_id) from None
    rec = _last_record(data, fmt.FLOW)
    if rec is not None and _names(rec, job_id):
        state.apply(ev.decode(rec.rtype, rec.body), Loc(seg.seq, rec.offset, 0), now)


def _detail(state: QueueState, job_id: int, running: bool, error: str | None) -> dict[str, object]:
    """job_state's answer from the state rebuilt (UnknownJobError if the job does not exist)."""
    out: dict[str, object] = {"id": job_id, "status": state.status(job_id)}
    if job_id not in state:
        return with_cause(out, state)
    info = state.info(job_id)
    out.update(
        status="running" if running else out["status"],
        task=info.task,
        attempts=info.attempts,
        max_attempts=info.max_attempts,
        priority=info.priority,
        key=state.key_of(job_id),
        error=error if out["status"] == "dead" else None,
    )
    return out


def _from_checkpoint(
    path: str, job_id: int, fs: FileSystem, now: Now, owner_running: bool | None
) -> dict[str, object] | None:
    """job_state from the checkpoint and the log after it; None if it cannot tell (no
    checkpoint, a damaged or stale one, a dependent job): read the job's records instead.

    The checkpoint says the job's state as of its position; only the records
    after that position are searched for the job's later ones. It is used
    only if its checksums hold and the log's segments are the ones it names,
    with the sizes it saw (a sealed one unchanged, the last at least as long),
    and only if the job's own record is where it says.
    """
    if not 0 <= job_id < 1 << 64:  # no record can name it: the records-only path says so
        return None
    cp_path = checkpoints.path_of(path)
    try:
        f = fs.open(cp_path)
    except OSError:
        return None
    try:
        data = f.pread(f.size(), 0)
        at = ckpt.job_at(data, cp_path, job_id)
    except (OSError, CorruptionError) as exc:
        log.debug("%s: checkpoint not used for job %d: %s", cp_path, job_id, exc)
        return None
    finally:
        f.close()
    if any(rtype == fmt.FLOW and _names(_raw(rtype, body), job_id) for rtype, body in at.records):
        return None  # a dependent or a kept result: its parents' records decide, read them all
    for _ in range(RACE_RETRIES):
        try:
            live = _headers(path, fs)
            if not _agrees(at, live) or not _own_record(path, job_id, at, fs):
                return None
            records = list(_after_checkpoint(path, job_id, fs, at, live))
            break
        except _Raced:
            continue
    else:
        return None
    state = QueueState()
    jobs = {job_id: at.packed} if at.packed is not None else {}
    img = ckpt.Image(
        marks=at.marks, tasks=at.tasks, jobs=jobs,
        key_of={job_id: at.key} if at.key is not None else {},
        keys={at.key: job_id} if at.key is not None else {},
        errors={job_id: at.error} if at.error is not None else {},
        due={job_id: at.due} if at.due is not None else {},
        ready=[], counts=[0] * N_STATES, by_task={}, seg_bytes={}, live_bytes=0, done=0,
        records=at.records,
    )  # fmt: skip
    try:
        restored = ckpt.restore(state, img, now)
    except ev.BadEvent:
        return None
    error_loc = Loc(seq_of(at.error[0]), at.error[1], at.error[2]) if at.error else None
    error: str | None = None
    for seq, rec in records:
        event = ev.decode(rec.rtype, rec.body)
        if isinstance(event, ev.After) and event.job.id == job_id:
            return None  # enqueued after others: its parents' records decide
        state.apply(event, Loc(seq, rec.offset, rec.end - rec.offset), now)
        if isinstance(event, ev.Fail | ev.Job) and event.error:
            error, error_loc = event.error, None
        elif isinstance(event, ev.Requeue):
            error, error_loc = None, None
    running = job_id in state and state.info(job_id).state == RUNNING
    running = running or (at.running and not ckpt.changed(state, job_id))
    ckpt.finish(state, restored, now)
    if error_loc is not None and job_id in state and state.info(job_id).state == DEAD:
        e = read_record(path, error_loc, fs)
        if isinstance(e, ev.Fail | ev.Job):
            error = e.error
    return _detail(state, job_id, running and owner_running is not False, error)


def _raw(rtype: int, body: bytes) -> framing.Record:
    return framing.Record(0, rtype, 0, body, 0)


@attrs.frozen
class _Live:
    seq: int
    first: int
    size: int


def _headers(path: str, fs: FileSystem) -> list[_Live]:
    """The live segments in log order with their sizes (headers only)."""
    out = [
        _Live(seq, header.first if header.seq == seq else seq, size)
        for seq, header, _, size in _heads(path, fs, fmt.SEGMENT_HEADER_SIZE)
    ]
    return _superseded_dropped(out)


def _agrees(at: ckpt.JobAt, live: list[_Live]) -> bool:
    """Whether the log's segments are those the checkpoint names, grown only after its end."""
    marks = at.marks
    if len(live) < len(marks):
        return False
    for i, (m, seg) in enumerate(zip(marks, live, strict=False)):
        if (seg.seq, seg.first) != (m.seq, m.first):
            return False
        if seg.size < m.end if i == len(marks) - 1 else seg.size != m.end:
            return False
    return True


def _own_record(path: str, job_id: int, at: ckpt.JobAt, fs: FileSystem) -> bool:
    """Whether the job's record is where the checkpoint says (trivially so if it has none)."""
    if at.packed is None:
        return True
    seg = seq_of(at.packed >> SEG)
    offset, size = (at.packed >> OFFSET) & M32, (at.packed >> SIZE) & M32
    try:
        f = fs.open(posixpath.join(path, fmt.segment_name(seg)))
    except FileNotFoundError:
        raise _Raced from None
    try:
        data = f.pread(size, offset)
    finally:
        f.close()
    rec = framing.decode(data, 0, origin=offset)
    return isinstance(rec, framing.Record) and rec.end == size and _names(rec, job_id)


def _after_checkpoint(
    path: str, job_id: int, fs: FileSystem, at: ckpt.JobAt, live: list[_Live]
) -> Iterator[tuple[int, framing.Record]]:
    """The records naming the job after the checkpoint's position, in log order."""
    pattern = _ID.pack(job_id)
    for seg in live[len(at.marks) - 1 :]:
        start = at.summary.offset if seg.seq == at.summary.seq else fmt.SEGMENT_HEADER_SIZE
        f = _open(path, seg.seq, seg.first, fs)
        try:
            found = _found(f, pattern, job_id, start)
        finally:
            f.close()
        for rec in found:
            yield seg.seq, rec
