"""A job's outcome read from a queue directory's files, without its owner (walq.connect).

The same answer `Queue.result` gives, from a read-only replay: the job is
still unfinished, done (with its kept result), dead (with its last error) or
cancelled (with the cause).
"""

from __future__ import annotations

import posixpath

from walq.core import events as ev
from walq.core import format as fmt
from walq.core import framing
from walq.core.jobspec import decode_result
from walq.core.state import Loc, seq_of
from walq.directory.fs import FileSystem, OsFileSystem
from walq.errors import CorruptionError
from walq.ops.replay import now_clock, replay
from walq.producers.wire import Outcome


def outcome(path: str, job_id: int, fs: FileSystem | None = None) -> Outcome:
    """Job `job_id`'s outcome from the files (UnknownJobError if it never was, or was purged)."""
    fs = fs or OsFileSystem()
    for _ in range(3):  # a compaction may replace a segment between the replay and the read
        now = now_clock()
        state = replay(path, fs, now=now, owner_running=True).state
        status = state.status(job_id)
        try:
            if status == "done":
                loc = state.result_loc(job_id, now.wall)
                if loc is None:
                    return Outcome("done")
                e = _event(path, fs, loc)
                if not isinstance(e, ev.Finish):
                    continue
                return Outcome("done", decode_result(e.result_kind, e.result))
            if status == "dead":
                loc = state.error_loc(job_id)
                fail = None if loc is None else _event(path, fs, loc)
                text = fail.error if isinstance(fail, ev.Fail | ev.Job) else ""
                return Outcome("dead", text=text)
        except (OSError, CorruptionError, ev.BadEvent):
            continue
        if status == "cancelled":
            return Outcome("cancelled", text=state.causes.get(job_id, ""))
        return Outcome(status)
    raise CorruptionError(path, 0, f"job {job_id}: its result record could not be read")


def _event(path: str, fs: FileSystem, loc: Loc) -> ev.Event:
    """The event recorded at `loc`, read from its segment file."""
    name = posixpath.join(path, fmt.segment_name(seq_of(loc.seg)))
    f = fs.open(name)
    try:
        data = f.pread(loc.size, loc.offset)
    finally:
        f.close()
    record = framing.decode(data, 0, origin=loc.offset)
    if not isinstance(record, framing.Record):
        raise CorruptionError(name, loc.offset, getattr(record, "reason", "not a record"))
    return ev.decode(record.rtype, record.body)
