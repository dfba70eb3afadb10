"""The checkpoint: a queue's index at one log position, so open replays only what follows.

Pure: the image is taken from a QueueState, encoded, decoded and restored
into a fresh QueueState here; reading, writing and checking it against the
segment files is walq.directory.checkpoint's. The byte layout is in
docs/FORMAT.md ("The checkpoint file").

The image holds what a replay of the log up to the position would have built,
not the payloads (they stay in the segments, which a checkpoint names and
must agree with): every live job's packed entry, keys, errors and due times,
the ready queues in the order a replay would claim them, the counts a replay
would make -- and the records a compaction's snapshot carries besides the
jobs (`meta`, and any other record types a feature adds to the snapshot),
replayed through QueueState.apply like any record.
"""

from __future__ import annotations

import bisect
import heapq
import itertools
import marshal
import struct
from array import array
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import attrs
from crc32c import crc32c

from walq.core import events as ev
from walq.core import format as fmt
from walq.core.packed import (
    M3,
    M16,
    M32,
    MT,
    N_STATES,
    PENDING,
    PRIO,
    RUNNING,
    SCHEDULED,
    SEG,
    SEQ_BITS,
    SIZE,
    TASK,
    Loc,
    Now,
)
from walq.core.ready import IdQueue
from walq.errors import CorruptionError

if TYPE_CHECKING:
    from walq.core.state import QueueState

FILE_NAME = "checkpoint"
MAGIC = b"walq-ckp"
VERSION = 2  # 1: the jobs as one dict (still read); 2: in shards by id (docs/FORMAT.md)
SHARD = 4096  # jobs per shard: one job's entry is read without decoding the others
# magic(8) version(u32) flags(u32) written(f64) seq(u64) offset(u64) jobs(u64)
# body_len(u64) body_crc(u32) header_crc(u32)
HEADER = struct.Struct("<8sIIdQQQQII")
HEADER_SIZE = HEADER.size  # 64
assert HEADER_SIZE == 64
_MARSHAL_VERSION = 4


@attrs.frozen
class SegmentMark:
    """A segment a checkpoint covers, as it must still be found on open.

    `end` is where the covered bytes end: the checkpoint's offset in its own
    segment; the file's end in an older (sealed) one. `crc` is the CRC32C of
    the segment's bytes from the header's end to `end`.
    """

    seq: int
    first: int
    end: int
    crc: int


@attrs.frozen
class Summary:
    """The checkpoint's fixed header: what `walq stats` and `fsck` show without the body."""

    written: float  # wall time it was taken
    seq: int  # the segment it ends in
    offset: int  # the offset in that segment its records end at
    jobs: int  # live jobs in its index


@attrs.frozen
class Image:
    """The state a replay up to the checkpoint's position would have built (see module doc)."""

    marks: tuple[SegmentMark, ...]
    tasks: list[str]
    jobs: dict[int, int]
    key_of: dict[int, str]
    keys: dict[str, int]
    errors: dict[int, tuple[int, int, int]]
    due: dict[int, float]  # scheduled job -> wall time it falls due
    ready: list[tuple[int, int, bytes]]  # (biased priority, task index, ids as array('Q'))
    counts: list[int]  # live jobs by state code, as finish_replay counts them
    by_task: dict[int, list[int]]
    seg_bytes: dict[int, int]
    live_bytes: int
    done: int  # acks the log holds up to the position (stats' "done")
    records: list[tuple[int, bytes]]  # the snapshot's other records, meta first
    # The jobs running at the position (stored pending, their attempt counted), as
    # array('Q') bytes in id order: what a reader beside a live owner shows running.
    running: bytes = b""


@attrs.frozen
class Checkpoint:
    """A decoded checkpoint file."""

    summary: Summary
    image: Image


def take(
    state: QueueState, now: Now, done: int, records: Sequence[tuple[int, bytes]]
) -> dict[str, Any]:
    """Copy what an image needs from a live state (the queue's lock held: keep it short).

    Plain copies, made at C speed; `image` does the rest outside the lock.
    """
    due = {jid: now.wall + (d - now.mono) for jid, d in state._due.items()}
    return {
        "tasks": list(state._tasks),
        "jobs": dict(state._jobs),
        "key_of": dict(state._key_of),
        "keys": dict(state._keys),
        "errors": {jid: tuple(loc) for jid, loc in state._errors.items()},
        "due": due,
        "ready": [
            (prio, task, q.toarray())
            for prio, queues in state._ready.items()
            for task, q in queues.items()
        ],
        "running": list(state._leases),
        "counts": list(state._n),
        "by_task": {t: list(n) for t, n in state._by_task.items()},
        "seg_bytes": dict(state._seg_bytes),
        "live_bytes": state.live_bytes,
        "done": done,
        "records": list(records),
    }


def image(taken: dict[str, Any], marks: Sequence[SegmentMark]) -> Image:
    """Build the image from `take`'s copies: what a replay up to the position would build.

    A running job becomes pending (its worker is gone after a restart: the
    replay that ends a restore charges its attempt, as finish_replay does),
    at the head of its ready queue. The live ready queues are kept as they
    are (their order is the queue's; stale entries are dropped on claim as
    ever); each id appears once. Locations keep their compaction generation
    (see Loc): the queue that opens it numbers its own compactions past them.
    """
    jobs: dict[int, int] = taken["jobs"]
    running: list[int] = taken["running"]
    total: list[int] = taken["counts"]
    if len(running) != total[RUNNING] or not all(
        jobs.get(jid, 0) & M3 == RUNNING for jid in running
    ):
        return _image_by_visiting(taken, marks)  # not expected: every running job has a lease
    by_task: dict[int, list[int]] = taken["by_task"]
    front: dict[tuple[int, int], list[int]] = {}
    for jid in sorted(running):
        p = jobs[jid]
        jobs[jid] = (p & ~M3) | PENDING
        front.setdefault(((p >> PRIO) & M16, (p >> TASK) & MT), []).append(jid)
    for n in (total, *by_task.values()):
        n[PENDING] += n[RUNNING]
        n[RUNNING] = 0
    ready = []
    for prio, task, ids in taken["ready"]:
        head = front.pop((prio, task), [])
        ready.append((prio, task, array("Q", dict.fromkeys(itertools.chain(head, ids))).tobytes()))
    ready += [(prio, task, array("Q", ids).tobytes()) for (prio, task), ids in front.items()]
    return Image(
        marks=tuple(marks), tasks=taken["tasks"], jobs=jobs, key_of=taken["key_of"],
        keys=taken["keys"], errors=taken["errors"], due=taken["due"], ready=ready, counts=total,
        by_task=by_task, seg_bytes=taken["seg_bytes"], live_bytes=taken["live_bytes"],
        done=taken["done"], records=taken["records"], running=_ids(taken["running"]),
    )  # fmt: skip


def _ids(ids: Sequence[int]) -> bytes:
    """Job ids as array('Q') bytes, in id order."""
    return array("Q", sorted(ids)).tobytes()


def running_ids(raw: bytes) -> list[int]:
    """The ids of an image's `running` field."""
    ids = array("Q")
    ids.frombytes(raw)
    return ids.tolist()


def _image_by_visiting(taken: dict[str, Any], marks: Sequence[SegmentMark]) -> Image:
    """The image built by visiting every job, as finish_replay does (ready in id order)."""
    jobs: dict[int, int] = taken["jobs"]
    running = [jid for jid, p in jobs.items() if p & M3 == RUNNING]
    ready: dict[tuple[int, int], array[int]] = {}
    total = [0] * N_STATES
    by_task: dict[int, list[int]] = {}
    seg_bytes: dict[int, int] = {}
    live = 0
    for jid, p in jobs.items():
        code = p & M3
        if code == RUNNING:
            p = jobs[jid] = (p & ~M3) | PENDING  # noqa: PLW2901
            code = PENDING
        if code == PENDING:
            key = ((p >> PRIO) & M16, (p >> TASK) & MT)
            ids = ready.get(key)
            if ids is None:
                ids = ready[key] = array("Q")
            ids.append(jid)
        total[code] += 1
        task = (p >> TASK) & MT
        counts = by_task.get(task)
        if counts is None:
            counts = by_task[task] = [0] * N_STATES
        counts[code] += 1
        size = (p >> SIZE) & M32
        live += size
        seg = p >> SEG
        seg_bytes[seg] = seg_bytes.get(seg, 0) + size
    return Image(
        marks=tuple(marks), tasks=taken["tasks"], jobs=jobs, key_of=taken["key_of"],
        keys=taken["keys"], errors=taken["errors"], due=taken["due"],
        ready=[(prio, task, ids.tobytes()) for (prio, task), ids in ready.items()],
        counts=total, by_task=by_task, seg_bytes=seg_bytes, live_bytes=live,
        done=taken["done"], records=taken["records"], running=_ids(running),
    )  # fmt: skip


def generations(state: QueueState) -> int:
    """The highest compaction generation a state's locations carry (see Loc): its jobs',
    its kept results' (a result may sit in a compacted segment no job is in) and its
    errors'. A compaction gives its output a higher one (see the compactor)."""
    return highest_generation(*state.locations())


def highest_generation(segs: list[int], results: list[tuple[float, Loc]], errors: list[Loc]) -> int:
    """`generations` of QueueState.locations' copies (computed without the queue's lock)."""
    jobs = max((seg >> SEQ_BITS for seg in segs), default=0)
    kept = max((loc.seg >> SEQ_BITS for _, loc in results), default=0)
    failed = max((loc.seg >> SEQ_BITS for loc in errors), default=0)
    return max(jobs, kept, failed)


# -- the file ------------------------------------------------------------------------------


def encode(img: Image, written: float) -> bytes:
    """The checkpoint file's bytes: the fixed header, then the body (docs/FORMAT.md)."""
    body = marshal.dumps(
        (
            [attrs.astuple(m) for m in img.marks], img.tasks, shards(img.jobs), img.key_of,
            img.keys, img.errors, img.due, img.ready, img.counts, img.by_task, img.seg_bytes,
            img.live_bytes, img.done, img.records, img.running,
        ),
        _MARSHAL_VERSION,
    )  # fmt: skip
    last = img.marks[-1] if img.marks else SegmentMark(0, 0, 0, 0)
    head = HEADER.pack(
        MAGIC, VERSION, 0, written, last.seq, last.end, len(img.jobs), len(body), crc32c(body), 0
    )[:-4]
    return head + struct.pack("<I", crc32c(head)) + body


def summary(data: bytes, path: str) -> tuple[Summary, int, int]:
    """The fixed header's summary, body length and body CRC; CorruptionError if it is not one."""
    if len(data) < HEADER_SIZE:
        raise CorruptionError(path, 0, f"checkpoint header truncated ({len(data)} bytes)")
    magic, version, flags, written, seq, offset, jobs, size, body_crc, crc = HEADER.unpack_from(
        data
    )
    if magic != MAGIC:
        raise CorruptionError(path, 0, f"bad magic {magic!r}: not a walq checkpoint")
    if crc32c(data[: HEADER_SIZE - 4]) != crc:
        raise CorruptionError(path, 0, "checkpoint header checksum mismatch")
    if version not in (1, VERSION) or flags:
        raise CorruptionError(path, 0, f"unsupported checkpoint version {version}")
    if not 1 <= seq <= fmt.MAX_SEQ or offset < fmt.SEGMENT_HEADER_SIZE:
        raise CorruptionError(path, 0, "checkpoint header names no log position")
    return Summary(written, seq, offset, jobs), size, body_crc


def shards(jobs: dict[int, int]) -> list[tuple[int, bytes]]:
    """The jobs in id order, SHARD at a time: [(first id, the marshalled dict of them)]."""
    ids = sorted(jobs)
    return [
        (ids[i], marshal.dumps({jid: jobs[jid] for jid in ids[i : i + SHARD]}, _MARSHAL_VERSION))
        for i in range(0, len(ids), SHARD)
    ]


def _unshard(field: Any) -> dict[int, int]:
    """The jobs from field 2 (version 2's shards, version 1's dict); TypeError if neither.

    A Jobs dict, which `restore` hands to the state as it is (no copy of millions
    of entries); each shard's bytes are let go once read.
    """
    if type(field) is dict:
        return Jobs(field)
    if type(field) is not list:
        raise TypeError(f"{type(field).__name__} where the jobs belong")
    jobs = Jobs()
    for i, shard in enumerate(field):
        jobs.update(_shard(shard))
        field[i] = None
    return jobs


def _shard(shard: Any) -> dict[int, int]:
    if type(shard) is not tuple or len(shard) != 2 or type(shard[1]) is not bytes:
        raise TypeError("bad jobs shard")
    part = marshal.loads(shard[1])
    if type(part) is not dict:
        raise TypeError("bad jobs shard")
    return part


def _body(data: bytes, path: str) -> tuple[Summary, Any]:
    """The header's summary and the unmarshalled body, both checksums checked."""
    head, size, body_crc = summary(data, path)
    body = memoryview(data)[HEADER_SIZE:]
    if len(body) != size:
        raise CorruptionError(
            path, HEADER_SIZE, f"checkpoint body is {len(body)} bytes, not {size}"
        )
    if crc32c(body) != body_crc:
        raise CorruptionError(path, HEADER_SIZE, "checkpoint body checksum mismatch")
    try:
        return head, marshal.loads(body)
    except (ValueError, EOFError, TypeError) as exc:
        raise CorruptionError(path, HEADER_SIZE, f"checkpoint body is malformed: {exc}") from None


@attrs.frozen
class JobAt:
    """One job as a checkpoint holds it (`job_at`): what a replay up to its position knew."""

    summary: Summary
    marks: tuple[SegmentMark, ...]
    tasks: list[str]
    packed: int | None  # its entry (None: not live at the position)
    key: str | None
    error: tuple[int, int, int] | None  # where its last error is recorded
    due: float | None
    records: list[tuple[int, bytes]]  # the snapshot's other records (meta first)
    running: bool  # it was running at the position (stored pending, its attempt counted)


def job_at(data: bytes, path: str, job_id: int) -> JobAt:
    """Job `job_id`'s entry in checkpoint file `data`, decoding only the shard that holds it.

    The same checks as `decode` (both checksums, the shape) but for the other
    shards' contents. CorruptionError (naming `path`) if the file is not sound.
    """
    head, fields = _body(data, path)
    try:
        if type(fields) is not tuple or len(fields) not in (14, 15):
            raise TypeError("not a 14- or 15-field tuple")
        jobs = fields[2]
        if type(jobs) is dict:  # version 1
            packed = jobs.get(job_id)
        else:
            if type(jobs) is not list:
                raise TypeError("bad jobs")
            if not all(type(s) is tuple and s and type(s[0]) is int for s in jobs):
                raise TypeError("bad jobs shard")
            firsts: list[int] = [s[0] for s in jobs]
            at = bisect.bisect_right(firsts, job_id) - 1
            packed = _shard(jobs[at]).get(job_id) if at >= 0 else None
        img = _image((*fields[:2], {}, *fields[3:]))
    except (ValueError, EOFError, TypeError) as exc:
        raise CorruptionError(path, HEADER_SIZE, f"checkpoint body is malformed: {exc}") from None
    if packed is not None and type(packed) is not int:
        raise CorruptionError(path, HEADER_SIZE, "checkpoint body is malformed: bad job entry")
    if not img.marks or (img.marks[-1].seq, img.marks[-1].end) != (head.seq, head.offset):
        raise CorruptionError(path, HEADER_SIZE, "checkpoint body disagrees with its header")
    error = img.errors.get(job_id)
    if error is not None and (len(error) != 3 or not all(type(v) is int for v in error)):
        raise CorruptionError(path, HEADER_SIZE, "checkpoint body is malformed: bad error entry")
    return JobAt(
        head, img.marks, img.tasks, packed, img.key_of.get(job_id),
        error, img.due.get(job_id), img.records, job_id in running_ids(img.running),
    )  # fmt: skip


def decode(data: bytes | list[bytes], path: str) -> Checkpoint:
    """Parse and check a checkpoint file; CorruptionError (naming `path`) if it is not sound.

    The body is unmarshalled only after its CRC32C matched, and its shape is
    checked before anything of it is used: marshal builds plain values only
    (it never runs code), and a file that does not have this shape is refused.
    `data` may be a one-item list holding the file's bytes: decode takes them
    out of it, so they are freed once unmarshalled (a 5M-job file is ~200 MB).
    """
    if isinstance(data, list):
        data = data.pop()
    head, fields = _body(data, path)
    del data  # the fields hold copies of what they need
    try:
        img = _image(fields)
    except (ValueError, EOFError, TypeError) as exc:
        raise CorruptionError(path, HEADER_SIZE, f"checkpoint body is malformed: {exc}") from None
    if len(img.jobs) != head.jobs or not img.marks:
        raise CorruptionError(path, HEADER_SIZE, "checkpoint body disagrees with its header")
    last = img.marks[-1]
    if (last.seq, last.end) != (head.seq, head.offset):
        raise CorruptionError(path, HEADER_SIZE, "checkpoint body disagrees with its header")
    return Checkpoint(head, img)


def _image(fields: Any) -> Image:
    """An Image from the unmarshalled body; TypeError if a field has the wrong type."""
    if type(fields) is not tuple or len(fields) not in (14, 15):
        raise TypeError("not a 14- or 15-field tuple")
    running = fields[14] if len(fields) == 15 else b""
    if type(running) is not bytes or len(running) % 8:
        raise TypeError("bad running ids")
    (
        marks,
        tasks,
        jobs,
        key_of,
        keys,
        errors,
        due,
        ready,
        counts,
        by_task,
        segs,
        live,
        done,
        recs,
    ) = fields[:14]
    kinds = (
        (marks, list), (tasks, list), (key_of, dict), (keys, dict), (errors, dict),
        (due, dict), (ready, list), (counts, list), (by_task, dict), (segs, dict), (live, int),
        (done, int), (recs, list),
    )  # fmt: skip
    jobs = _unshard(jobs)
    for value, kind in kinds:
        if type(value) is not kind:
            raise TypeError(f"{type(value).__name__} where a {kind.__name__} belongs")
    if len(counts) != N_STATES or not all(type(t) is str for t in tasks):
        raise TypeError("bad counts or task names")
    for mark in marks:
        if type(mark) is not tuple or len(mark) != 4 or not all(type(v) is int for v in mark):
            raise TypeError("bad segment mark")
    for prio, task, ids in ready:
        if type(prio) is not int or type(task) is not int or type(ids) is not bytes:
            raise TypeError("bad ready queue")
    for rtype, rbody in recs:
        if type(rtype) is not int or type(rbody) is not bytes:
            raise TypeError("bad snapshot record")
    return Image(
        tuple(SegmentMark(*m) for m in marks), tasks, jobs, key_of, keys, errors, due, ready,
        counts, by_task, segs, live, done, recs, running,
    )  # fmt: skip


# -- restoring -----------------------------------------------------------------------------


class Jobs(dict[int, int]):
    """A state's jobs after a restore: a dict (a Tracked one becomes this in place)."""


class Tracked(dict[int, int]):
    """A state's jobs while the records after a checkpoint are replayed onto it.

    Remembers the value each changed entry had in the checkpoint (None: it
    had none), so that `finish` visits only those, not every job.
    """

    old: dict[int, int | None]

    @classmethod
    def adopt(cls, jobs: dict[int, int]) -> Tracked:
        """`jobs` itself, tracked from now on: a Jobs dict changes class in place (the
        same layout: CPython allows it), so a restore copies no entry."""
        if type(jobs) is not Jobs:
            jobs = Jobs(jobs)
        jobs.__class__ = cls  # type: ignore[assignment]
        assert isinstance(jobs, Tracked)
        jobs.old = {}
        return jobs

    def _note(self, jid: int) -> None:
        if jid not in self.old:
            self.old[jid] = self.get(jid)

    def __setitem__(self, jid: int, packed: int) -> None:
        self._note(jid)
        super().__setitem__(jid, packed)

    def __delitem__(self, jid: int) -> None:
        self._note(jid)
        super().__delitem__(jid)

    def pop(self, jid: int, *default: Any) -> Any:
        self._note(jid)
        return super().pop(jid, *default)

    def setdefault(self, jid: int, packed: int = 0) -> int:
        self._note(jid)
        return super().setdefault(jid, packed)

    def update(self, *args: Any, **kw: Any) -> None:
        for jid, packed in dict(*args, **kw).items():
            self[jid] = packed

    def popitem(self) -> tuple[int, int]:
        jid, packed = super().popitem()
        self.old.setdefault(jid, packed)
        return jid, packed

    def clear(self) -> None:
        for jid in list(self):
            del self[jid]


def changed(state: QueueState, jid: int) -> bool:
    """Whether the records replayed since `restore` changed job `jid`'s entry (before `finish`)."""
    jobs = state._jobs
    return not isinstance(jobs, Tracked) or jid in jobs.old


def running(state: QueueState, running: bytes) -> list[int]:
    """The jobs running after the records replayed since `restore` (before `finish`): those
    running at the checkpoint's position (`Image.running`) that the records left as they
    were, and those the records claimed. (Only the jobs they changed are visited.)"""
    jobs = state._jobs
    assert isinstance(jobs, Tracked)
    old = jobs.old
    claimed = [jid for jid in old if jobs.get(jid, 0) & M3 == RUNNING]
    return [jid for jid in running_ids(running) if jid not in old] + claimed


@attrs.define
class Restored:
    """What `restore` keeps for `finish`: the checkpoint's counts."""

    counts: list[int]
    by_task: dict[int, list[int]]
    seg_bytes: dict[int, int]
    live_bytes: int


def restore(state: QueueState, img: Image, now: Now) -> Restored:
    """Make a fresh, loading `state` what replaying the log up to the checkpoint made it.

    Consumes the image: its jobs dict becomes the state's (tracked), its ready
    queues are emptied (their bytes are the state's queues now).

    The records that follow the checkpoint are then replayed onto it as
    usual (through a replay sink made after this: `state._jobs` is another
    object than before), and `finish` ends the replay (instead of finish_replay). The
    image was checked by `decode`; a record it holds that does not fit
    raises ev.BadEvent.
    """
    assert state.loading and not state._jobs and not state._tasks
    for name in img.tasks:
        state.task_index(name)
    state._jobs = jobs = Tracked.adopt(img.jobs)  # the image's dict, now the state's
    state._key_of.update(img.key_of)
    state._keys.update(img.keys)
    state._errors.update({jid: Loc(*loc) for jid, loc in img.errors.items()})
    for jid, due in img.due.items():
        p = jobs.get(jid)
        if p is None or p & M3 != SCHEDULED:
            continue
        if due > now.wall:
            state._schedule(jid, now.mono_at(due))
        else:  # fell due while the queue was shut: pending, as a replay would have it
            jobs[jid] = (p & ~M3) | PENDING
    for prio, task, raw in img.ready:
        q = state._ready.queue(prio, task)
        if q:
            q.extend(IdQueue.frombytes(raw))
        else:  # the usual case: one copy of the bytes, no int per id
            state._ready[prio][task] = IdQueue.frombytes(raw)
    for rtype, body in img.records:
        state.apply(ev.decode(rtype, body), Loc(0, 0, 0), now)
    # The ready queues are the state's now: let the image's list of them go.
    img.ready.clear()
    return Restored(list(img.counts), img.by_task, img.seg_bytes, img.live_bytes)


def finish(state: QueueState, restored: Restored, now: Now) -> None:
    """End a replay that started from a checkpoint: count and index only what changed.

    The same result as finish_replay (walq.core.replay), without visiting
    every job: the checkpoint's counts are adjusted for the entries the
    records after it changed, and jobs that became pending are queued behind
    those already queued.
    """
    tracked = state._jobs
    assert isinstance(tracked, Tracked)
    old = tracked.old
    del tracked.old
    # Plain again without copying millions of entries: the live paths are hot, and a
    # dict subclass that overrides nothing runs at dict's speed.
    tracked.__class__ = Jobs  # type: ignore[assignment]  # same layout: CPython allows it
    jobs = tracked
    total, seg_bytes, live = restored.counts, restored.seg_bytes, restored.live_bytes
    by_task = {t: list(n) for t, n in restored.by_task.items()}

    def count(p: int, delta: int) -> int:
        code = p & M3
        if code == RUNNING:
            code = PENDING
        total[code] += delta
        task = (p >> TASK) & MT
        n = by_task.get(task)
        if n is None:
            n = by_task[task] = [0] * N_STATES
        n[code] += delta
        size = (p >> SIZE) & M32
        seg = p >> SEG
        seg_bytes[seg] = seg_bytes.get(seg, 0) + delta * size
        return delta * size

    # Jobs queued in the checkpoint that the records after it took out of pending
    # (claimed, then failed or scheduled): their entries would be stale ones of
    # jobs that may be pending again, queued twice then (and claimed twice at once).
    left: set[int] = set()
    for jid, was in old.items():
        if was is not None:
            live += count(was, -1)
        p = jobs.get(jid)
        if p is None:
            continue
        if p & M3 == RUNNING:
            p = jobs[jid] = (p & ~M3) | PENDING
        live += count(p, +1)
        if p & M3 == PENDING and (was is None or was & M3 not in (PENDING, RUNNING)):
            state._push_ready(jid, p)
        elif was is not None and was & M3 == PENDING and p & M3 != PENDING:
            left.add(jid)
    if left:
        _drop_ready(state, left)
    state._n, state._by_task, state.live_bytes = total, by_task, live
    state._seg_bytes = {seg: n for seg, n in seg_bytes.items() if n}
    heapq.heapify(state._scheduled)
    state.loading = False


def _drop_ready(state: QueueState, ids: set[int]) -> None:
    """Remove `ids` from the ready queues (once, at the end of a restore: a pass over them)."""
    for queues in state._ready.values():
        for task, q in list(queues.items()):
            if not ids.isdisjoint(q):
                queues[task] = IdQueue(jid for jid in q if jid not in ids)
