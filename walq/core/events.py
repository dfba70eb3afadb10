"""The events the log stores, and their bodies' byte layout (docs/FORMAT.md).

Every event is absolute rather than relative ("attempt 3 started", not "one
more attempt"), so replaying an event onto a state that already reflects it
changes nothing: that is what lets a compacted snapshot sit in front of the
events that followed it.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Callable, Iterator, Sequence
from typing import Any, ClassVar

import attrs

from walq.core import format as fmt
from walq.errors import WalqError

PAYLOAD_JSON = 0
PAYLOAD_BYTES = 1

PENDING = 1
SCHEDULED = 2
RUNNING = 3
DEAD = 4
WAITING = 5  # for the jobs it was enqueued after (see After)

CANCELLED = 1
PURGED = 2


class BadEvent(WalqError):
    """A record's checksum is valid but its body is not a well-formed event."""


_ENQ = struct.Struct("<QhHBddHHH")
ENQUEUE_HEAD = _ENQ  # the fixed part of an enqueue body (the replay fast path reads it)
_JOB = struct.Struct("<QhHBddHHBII")
_FAIL = struct.Struct("<QIBdI")
_COUNT = struct.Struct("<I")
_ID = struct.Struct("<Q")
_ID_ATTEMPT = struct.Struct("<QI")
_META = struct.Struct("<QI")
_TOMB = struct.Struct("<QB")
_FINISH = struct.Struct("<QdBII")  # id, keep until, result kind, result length, children
_CHILD = struct.Struct("<BI")  # a child record's type and body length
_AFTER = struct.Struct("<BI")  # policy, number of parents

# What a finish record holds as the job's result.
RESULT_NONE = 0  # the handler returned None (nothing is kept)
RESULT_JSON = 1
RESULT_BYTES = 2

# A dependent's policy when a parent dies or is cancelled.
AFTER_CANCEL = 0  # the dependent is cancelled too
AFTER_ALWAYS = 1  # the dependent runs anyway
_SCHEDULE = struct.Struct("<dHH")
_UNIQUE = struct.Struct("<Qd")
_KEEP = struct.Struct("<QdH")
_ATTEMPTS = struct.Struct("<IIH")  # attempts, the owner's pid, the host name's length
_ATTEMPT = struct.Struct("<QIddI")  # id, attempt, started (wall), seconds, the process's pid


@attrs.frozen(kw_only=True)
class Enqueue:
    """A job was added. `due` is wall-clock seconds (0: ready at once)."""

    rtype: ClassVar[int] = fmt.ENQUEUE
    id: int
    task: str
    payload: bytes
    kind: int = PAYLOAD_JSON
    key: str | None = None
    priority: int = 0
    max_attempts: int = 0
    due: float = 0.0
    created: float = 0.0
    origin: str = ""  # the spool file a producer wrote it to, if it came that way

    def encode(self) -> bytes:
        return encode_enqueue(
            self.id, self.task, self.payload, self.kind, self.key, self.priority,
            self.max_attempts, self.due, self.created, self.origin,
        )  # fmt: skip


def encode_enqueue(
    jid: int,
    task: str,
    payload: bytes,
    kind: int,
    key: str | None,
    priority: int,
    max_attempts: int,
    due: float,
    created: float,
    origin: str,
) -> bytes:
    """An enqueue body (also the bulk enqueue path, which skips building Enqueue objects)."""
    task_b = task.encode()
    key_b = key.encode() if key is not None else b""
    origin_b = origin.encode() if origin else b""
    head = _ENQ.pack(
        jid, priority, max_attempts, kind, due, created, len(task_b),
        len(key_b) if key is not None else 0xFFFF, len(origin_b),
    )  # fmt: skip
    return b"".join((head, task_b, key_b, origin_b, payload))


@attrs.frozen(kw_only=True)
class Job:
    """A compacted job: its whole state, standing in for the events that built it."""

    rtype: ClassVar[int] = fmt.JOB
    id: int
    task: str
    payload: bytes
    kind: int = PAYLOAD_JSON
    key: str | None = None
    priority: int = 0
    max_attempts: int = 0
    due: float = 0.0
    created: float = 0.0
    state: int = PENDING
    attempts: int = 0
    error: str = ""

    def encode(self) -> bytes:
        return encode_job(
            self.id, self.task, self.payload, self.kind, self.key, self.priority,
            self.max_attempts, self.due, self.created, self.state, self.attempts, self.error,
        )  # fmt: skip


def encode_job(
    jid: int,
    task: str,
    payload: bytes,
    kind: int,
    key: str | None,
    priority: int,
    max_attempts: int,
    due: float,
    created: float,
    state: int,
    attempts: int,
    error: str,
) -> bytes:
    """A job body (also the compactor's copy of an enqueue record, which builds no Job)."""
    task_b = task.encode()
    key_b = key.encode() if key is not None else b""
    error_b = error.encode()
    head = _JOB.pack(
        jid, priority, max_attempts, kind, due, created, len(task_b),
        len(key_b) if key is not None else 0xFFFF, state, attempts, len(error_b),
    )  # fmt: skip
    return b"".join((head, task_b, key_b, error_b, payload))


@attrs.frozen(kw_only=True)
class _Pairs:
    rtype: ClassVar[int] = 0
    items: tuple[tuple[int, int], ...]

    def encode(self) -> bytes:
        return _COUNT.pack(len(self.items)) + b"".join(_ID_ATTEMPT.pack(*i) for i in self.items)


@attrs.frozen(kw_only=True)
class Claim(_Pairs):
    """Attempts started: (job id, attempt number) pairs, durable before the jobs run."""

    rtype: ClassVar[int] = fmt.CLAIM


@attrs.frozen(kw_only=True)
class Release(_Pairs):
    """Jobs handed back uncharged: (job id, attempts counted so far) pairs."""

    rtype: ClassVar[int] = fmt.RELEASE


@attrs.frozen(kw_only=True)
class Fail:
    """Attempt `attempt` failed: retry at wall time `due`, or the job is dead."""

    rtype: ClassVar[int] = fmt.FAIL
    id: int
    attempt: int
    dead: bool
    due: float = 0.0
    error: str = ""

    def encode(self) -> bytes:
        error = self.error.encode("utf-8", "replace")
        return _FAIL.pack(self.id, self.attempt, int(self.dead), self.due, len(error)) + error


@attrs.frozen(kw_only=True)
class _Ids:
    rtype: ClassVar[int] = 0
    ids: tuple[int, ...]

    def encode(self) -> bytes:
        return _COUNT.pack(len(self.ids)) + b"".join(_ID.pack(i) for i in self.ids)


@attrs.frozen(kw_only=True)
class Ack(_Ids):
    """Jobs finished successfully."""

    rtype: ClassVar[int] = fmt.ACK


@attrs.frozen(kw_only=True)
class Cancel(_Ids):
    """Jobs cancelled before finishing."""

    rtype: ClassVar[int] = fmt.CANCEL


@attrs.frozen(kw_only=True)
class Requeue(_Ids):
    """Dead jobs given a fresh start (attempts reset)."""

    rtype: ClassVar[int] = fmt.REQUEUE


@attrs.frozen(kw_only=True)
class Purge(_Ids):
    """Dead jobs deleted."""

    rtype: ClassVar[int] = fmt.PURGE


@attrs.frozen(kw_only=True)
class Meta:
    """Written first in a compacted segment: the id counter and finished-job markers."""

    rtype: ClassVar[int] = fmt.META
    next_id: int
    tombstones: tuple[tuple[int, int], ...] = ()

    def encode(self) -> bytes:
        head = _META.pack(self.next_id, len(self.tombstones))
        return head + b"".join(_TOMB.pack(*t) for t in self.tombstones)


@attrs.frozen(kw_only=True)
class Schedule:
    """Periodic schedule `name` has enqueued every tick up to wall time `last`.

    `spec` describes the schedule (JSON: cron or every, tz, misfire) for the
    tools that list schedules without the program that registered them.
    """

    rtype: ClassVar[int] = fmt.SCHEDULE
    name: str
    last: float
    spec: str = ""

    def encode(self) -> bytes:
        name, spec = self.name.encode(), self.spec.encode()
        return _SCHEDULE.pack(self.last, len(name), len(spec)) + name + spec


@attrs.frozen(kw_only=True)
class Unique:
    """(job id, seconds) pairs: each job's key is remembered that long after it is done."""

    rtype: ClassVar[int] = fmt.UNIQUE
    items: tuple[tuple[int, float], ...]

    def encode(self) -> bytes:
        return _COUNT.pack(len(self.items)) + b"".join(_UNIQUE.pack(*i) for i in self.items)


@attrs.frozen(kw_only=True)
class Keep:
    """Done job `id`'s key is remembered until wall time `until` (an enqueue with it gets `id`)."""

    rtype: ClassVar[int] = fmt.KEEP
    id: int
    key: str
    until: float

    def encode(self) -> bytes:
        key = self.key.encode()
        return _KEEP.pack(self.id, self.until, len(key)) + key


@attrs.frozen(kw_only=True)
class Pause:
    """A task paused: its pending jobs stay pending (running ones finish) until resumed."""

    rtype: ClassVar[int] = fmt.PAUSE
    task: str

    def encode(self) -> bytes:
        return self.task.encode()


@attrs.frozen(kw_only=True)
class Resume:
    """A paused task's pending jobs may be claimed again."""

    rtype: ClassVar[int] = fmt.RESUME
    task: str

    def encode(self) -> bytes:
        return self.task.encode()


@attrs.frozen(kw_only=True)
class After:
    """A job that waits until every one of `parents` is done (an enqueue or a compacted job).

    `job` is the job itself; a compacted one in state WAITING still waits, in
    any other state its wait is over and `parents` only say whose results it reads.
    """

    rtype: ClassVar[int] = fmt.AFTER
    parents: tuple[int, ...]
    policy: int = AFTER_CANCEL
    job: Enqueue | Job

    @property
    def id(self) -> int:
        return self.job.id

    def encode(self) -> bytes:
        head = _AFTER.pack(self.policy, len(self.parents))
        ids = b"".join(_ID.pack(p) for p in self.parents)
        return b"".join((head, ids, bytes((self.job.rtype,)), self.job.encode()))


@attrs.frozen(kw_only=True)
class Finish:
    """Job `id` finished: its ack, its result (kept until wall time `keep_until`) and
    the follow-up jobs its handler enqueued, all in one record -- so one checksum
    makes them durable together or not at all."""

    rtype: ClassVar[int] = fmt.FINISH
    id: int
    keep_until: float = 0.0
    result_kind: int = RESULT_NONE
    result: bytes = b""
    children: tuple[Enqueue | After, ...] = ()

    def encode(self) -> bytes:
        parts = [_FINISH.pack(self.id, self.keep_until, self.result_kind, len(self.result),
                              len(self.children)), self.result]  # fmt: skip
        for child in self.children:
            body = child.encode()
            parts += (_CHILD.pack(child.rtype, len(body)), body)
        return b"".join(parts)


@attrs.frozen(kw_only=True)
class Attempt:
    """How finished attempts ran, written with their outcome: history only, no state.

    `items` are (job id, attempt, started (wall time), seconds, pid of the
    process that ran it: 0 for a job handed back unstarted); `owner` is the pid
    of the owner that wrote them on `host`.
    """

    rtype: ClassVar[int] = fmt.ATTEMPT
    host: str
    owner: int
    items: tuple[tuple[int, int, float, float, int], ...]

    def encode(self) -> bytes:
        return encode_attempt(self.host[:255].encode("utf-8", "replace"), self.owner, self.items)


def encode_attempt(
    host: bytes, owner: int, items: Sequence[tuple[int, int, float, float, int]]
) -> bytes:
    """An attempt record's body, without building the event (the owner's ack path)."""
    pack = _ATTEMPT.pack
    return b"".join([_ATTEMPTS.pack(len(items), owner, len(host)), host,
                     *[pack(*i) for i in items]])  # fmt: skip


@attrs.frozen(kw_only=True)
class Flow:
    """A checkpoint's flow state: kept results (id, until, seg, offset, size), jobs' parents
    (id, policy, wait due, parents) and dependents' causes (id, text); in a compacted segment,
    the causes only (the records they follow from are compacted away)."""

    rtype: ClassVar[int] = fmt.FLOW
    results: tuple[tuple[int, float, int, int, int], ...] = ()
    waits: tuple[tuple[int, int, float, tuple[int, ...]], ...] = ()
    causes: tuple[tuple[int, str], ...] = ()

    def encode(self) -> bytes:
        data = (
            [list(r) for r in self.results],
            [[j, p, d, list(ps)] for j, p, d, ps in self.waits],
            [list(c) for c in self.causes],
        )
        return json.dumps(data, separators=(",", ":")).encode()


Event = (
    Enqueue
    | Job
    | Claim
    | Release
    | Fail
    | Ack
    | Cancel
    | Requeue
    | Purge
    | Meta
    | Pause
    | Resume
    | After
    | Finish
    | Flow
    | Attempt
    | Schedule
    | Unique
    | Keep
)


def job_event(e: Event, jid: int) -> Enqueue | Job | None:
    """The enqueue or job record of job `jid` inside event `e` (a job's record), or None.

    A job's record is an enqueue or job record, an `after` record wrapping one,
    or a `finish` record among whose follow-up jobs it is.
    """
    if isinstance(e, Enqueue | Job):
        return e if e.id == jid else None
    if isinstance(e, After):
        return e.job if e.job.id == jid else None
    if isinstance(e, Finish):
        for child in e.children:
            found = job_event(child, jid)
            if found is not None:
                return found
    return None


def parents_of(e: Event, jid: int) -> After | None:
    """The `after` event of job `jid` inside its record `e`, if it waits for others."""
    if isinstance(e, After):
        return e if e.job.id == jid else None
    if isinstance(e, Finish):
        for child in e.children:
            if isinstance(child, After) and child.job.id == jid:
                return child
    return None


def decode(rtype: int, body: bytes) -> Event:
    """Parse an event body; raise BadEvent for any malformed input."""
    try:
        decoder = _DECODERS[rtype]
    except KeyError:
        raise BadEvent(f"unknown record type {rtype}") from None
    try:
        return decoder(body)
    except (struct.error, UnicodeDecodeError, ValueError, IndexError) as exc:
        raise BadEvent(f"malformed {fmt.TYPE_NAMES.get(rtype, rtype)} body: {exc}") from None


def _strings(body: bytes, at: int, *lengths: int) -> tuple[list[str | None], int]:
    out: list[str | None] = []
    for n in lengths:
        if n == 0xFFFF:
            out.append(None)
            continue
        if at + n > len(body):
            raise ValueError("string runs past the body")
        out.append(body[at : at + n].decode())
        at += n
    return out, at


def _decode_enqueue(body: bytes) -> Enqueue:
    jid, prio, maxa, kind, due, created, tlen, klen, olen = _ENQ.unpack_from(body)
    (task, key, origin), at = _strings(body, _ENQ.size, tlen, klen, olen)
    if not task or kind not in (PAYLOAD_JSON, PAYLOAD_BYTES):
        raise ValueError("invalid task or payload kind")
    return Enqueue(
        id=jid,
        task=task,
        payload=body[at:],
        kind=kind,
        key=key,
        priority=prio,
        max_attempts=maxa,
        due=due,
        created=created,
        origin=origin or "",
    )


def claim_fields(
    rtype: int, body: bytes, jid: int = 0
) -> tuple[str, int, bytes, str | None, int, float]:
    """(task, kind, payload, key, priority, created) of job `jid`'s record (see job_event).

    What a claim hands out, without building the event: the claim path reads
    one per job. The same checks as `decode`, and that the record is job
    `jid`'s (a location gone wrong never hands out another job's payload);
    BadEvent for anything else.
    """
    if rtype != fmt.ENQUEUE:
        e: Event | None = decode(rtype, body)
        if isinstance(e, After | Finish):
            e = job_event(e, jid)
        if not isinstance(e, Enqueue | Job):
            raise BadEvent(f"a {fmt.TYPE_NAMES.get(rtype, rtype)} record is not a job's")
        if jid and e.id != jid:
            raise BadEvent(f"the record there is job {e.id}'s, not job {jid}'s")
        return e.task, e.kind, e.payload, e.key, e.priority, e.created
    prio, _maxa, kind, _due, created, task, key, at = _enqueue_parts(body, jid)
    return task, kind, body[at:], key, prio, created


def _enqueue_parts(
    body: bytes, jid: int
) -> tuple[int, int, int, float, float, str, str | None, int]:
    """(priority, max_attempts, kind, due, created, task, key, payload offset) of an
    enqueue body, checked as `decode` checks it, and that it is job `jid`'s (0: any
    job's); BadEvent if not. The origin is checked, not returned."""
    try:
        found, prio, maxa, kind, due, created, tlen, klen, olen = _ENQ.unpack_from(body)
        if jid and found != jid:
            raise BadEvent(f"the record there is job {found}'s, not job {jid}'s")
        at = _ENQ.size + tlen
        task = body[_ENQ.size : at].decode()
        key = None
        if klen != 0xFFFF:
            key = body[at : at + klen].decode()
            at += klen
        if olen and olen != 0xFFFF:
            body[at : at + olen].decode()  # checked, as decode does; not handed out
            at += olen
        if at > len(body):
            raise ValueError("string runs past the body")
        if not task or tlen == 0xFFFF or kind not in (PAYLOAD_JSON, PAYLOAD_BYTES):
            raise ValueError("invalid task or payload kind")
    except (struct.error, UnicodeDecodeError, ValueError) as exc:
        raise BadEvent(f"malformed enqueue body: {exc}") from None
    return prio, maxa, kind, due, created, task, key, at


def compacted_job(
    rtype: int, body: bytes, jid: int, *, due: float, state: int, attempts: int, error: str
) -> bytes | None:
    """The job body a compaction writes for job `jid`, whose record is `body`, when that
    record is a plain enqueue or job record: its payload copied as it is, no event built.
    None for another record type (an `after` or `finish` record: decode it). BadEvent if
    the body is malformed or not job `jid`'s."""
    if rtype == fmt.ENQUEUE:
        prio, maxa, kind, _due, created, task, key, at = _enqueue_parts(body, jid)
    elif rtype == fmt.JOB:
        try:
            found, prio, maxa, kind, _due, created, task, key, _s, _a, _e, at = _job_parts(body)
        except (struct.error, UnicodeDecodeError, ValueError) as exc:
            raise BadEvent(f"malformed job body: {exc}") from None
        if found != jid:
            raise BadEvent(f"the record there is job {found}'s, not job {jid}'s")
    else:
        return None
    return encode_job(
        jid, task, body[at:], kind, key, prio, maxa, due, created, state, attempts, error
    )


def enqueue_fields(
    body: bytes | memoryview,
) -> tuple[int, int, int, float, bytes, str | None, str]:
    """(id, priority, max_attempts, due, task as bytes, key, origin) of an enqueue body.

    The replay fast path: the payload is neither copied nor parsed.
    """
    try:
        jid, prio, maxa, kind, due, _created, tlen, klen, olen = _ENQ.unpack_from(body)
        at = _ENQ.size
        task = bytes(body[at : at + tlen])
        at += tlen
        key = None
        if klen != 0xFFFF:
            key = bytes(body[at : at + klen]).decode()
            at += klen
        origin = bytes(body[at : at + olen]).decode() if olen else ""
        if at + (olen if olen != 0xFFFF else 0) > len(body) or len(task) != tlen or not tlen:
            raise ValueError("strings run past the body")
        if kind not in (PAYLOAD_JSON, PAYLOAD_BYTES):
            raise ValueError(f"invalid payload kind {kind}")
    except (struct.error, UnicodeDecodeError, ValueError) as exc:
        raise BadEvent(f"malformed enqueue body: {exc}") from None
    return jid, prio, maxa, due, task, key, origin


_JOB_STATES = (PENDING, DEAD, WAITING)  # a job record's states (waiting: in an after record)


def _decode_job(body: bytes) -> Job:
    jid, prio, maxa, kind, due, created, task, key, state, attempts, error, at = _job_parts(body)
    return Job(
        id=jid,
        task=task,
        payload=body[at:],
        kind=kind,
        key=key,
        priority=prio,
        max_attempts=maxa,
        due=due,
        created=created,
        state=state,
        attempts=attempts,
        error=error,
    )


def _job_parts(
    body: bytes,
) -> tuple[int, int, int, int, float, float, str, str | None, int, int, str, int]:
    """(id, priority, max_attempts, kind, due, created, task, key, state, attempts, error,
    payload offset) of a job body; ValueError (or struct.error) if it is malformed."""
    jid, prio, maxa, kind, due, created, tlen, klen, state, attempts, elen = _JOB.unpack_from(body)
    (task, key), at = _strings(body, _JOB.size, tlen, klen)
    if at + elen > len(body):
        raise ValueError("error text runs past the body")
    error = body[at : at + elen].decode()
    if not task or kind not in (PAYLOAD_JSON, PAYLOAD_BYTES) or state not in _JOB_STATES:
        raise ValueError("invalid task, payload kind or state")
    assert task is not None
    return jid, prio, maxa, kind, due, created, task, key, state, attempts, error, at + elen


def _counted(body: bytes, item: struct.Struct, what: str) -> Iterator[tuple[Any, ...]]:
    """The items of a body that is a count, then that many `item`s (ValueError if not)."""
    (n,) = _COUNT.unpack_from(body)
    if _COUNT.size + n * item.size != len(body):
        raise ValueError(f"{n} {what} do not fill {len(body)} bytes")
    return item.iter_unpack(body[_COUNT.size :])


def _pairs(body: bytes) -> tuple[tuple[int, int], ...]:
    return tuple(_counted(body, _ID_ATTEMPT, "entries"))


def _ids(body: bytes) -> tuple[int, ...]:
    return tuple(i for (i,) in _counted(body, _ID, "ids"))


def _decode_fail(body: bytes) -> Fail:
    jid, attempt, dead, due, elen = _FAIL.unpack_from(body)
    if _FAIL.size + elen != len(body) or dead > 1:
        raise ValueError("inconsistent fail body")
    return Fail(
        id=jid, attempt=attempt, dead=bool(dead), due=due, error=body[_FAIL.size :].decode()
    )


def _decode_meta(body: bytes) -> Meta:
    next_id, n = _META.unpack_from(body)
    if _META.size + n * _TOMB.size != len(body):
        raise ValueError("inconsistent meta body")
    return Meta(next_id=next_id, tombstones=tuple(_TOMB.iter_unpack(body[_META.size :])))


def _decode_flow(body: bytes) -> Flow:
    try:
        results, waits, causes = json.loads(body)
        return Flow(
            results=tuple((int(j), float(u), int(g), int(o), int(z)) for j, u, g, o, z in results),
            waits=tuple(
                (int(j), int(p), float(d), tuple(int(x) for x in ps)) for j, p, d, ps in waits
            ),
            causes=tuple((int(j), str(t)) for j, t in causes),
        )
    except (TypeError, json.JSONDecodeError) as exc:
        raise ValueError(f"not a flow body: {exc}") from None


def _decode_after(body: bytes) -> After:
    policy, n = _AFTER.unpack_from(body)
    at = _AFTER.size + n * _ID.size
    if policy not in (AFTER_CANCEL, AFTER_ALWAYS) or not n or at + 1 > len(body):
        raise ValueError("inconsistent after body")
    parents = tuple(i for (i,) in _ID.iter_unpack(body[_AFTER.size : at]))
    inner = decode(body[at], body[at + 1 :])
    if not isinstance(inner, Enqueue | Job):
        raise ValueError("an after record wraps an enqueue or a job record")
    return After(parents=parents, policy=policy, job=inner)


def _decode_finish(body: bytes) -> Finish:
    jid, until, kind, rlen, n = _FINISH.unpack_from(body)
    at = _FINISH.size + rlen
    if kind not in (RESULT_NONE, RESULT_JSON, RESULT_BYTES) or at > len(body):
        raise ValueError("inconsistent finish body")
    children: list[Enqueue | After] = []
    for _ in range(n):
        rtype, blen = _CHILD.unpack_from(body, at)
        at += _CHILD.size
        if rtype not in (fmt.ENQUEUE, fmt.AFTER) or at + blen > len(body):
            raise ValueError("a follow-up job is not an enqueue or runs past the body")
        child = decode(rtype, body[at : at + blen])
        assert isinstance(child, Enqueue | After)
        children.append(child)
        at += blen
    if at != len(body):
        raise ValueError("bytes after the last follow-up job")
    result = body[_FINISH.size : _FINISH.size + rlen]
    return Finish(
        id=jid, keep_until=until, result_kind=kind, result=result, children=tuple(children)
    )


def _decode_schedule(body: bytes) -> Schedule:
    last, nlen, slen = _SCHEDULE.unpack_from(body)
    if _SCHEDULE.size + nlen + slen != len(body) or not nlen or math.isnan(last):
        raise ValueError("inconsistent schedule body")
    at = _SCHEDULE.size
    name, spec = body[at : at + nlen].decode(), body[at + nlen :].decode()
    return Schedule(name=name, last=last, spec=spec)


def _decode_keep(body: bytes) -> Keep:
    jid, until, klen = _KEEP.unpack_from(body)
    if _KEEP.size + klen != len(body):
        raise ValueError("inconsistent keep body")
    return Keep(id=jid, key=body[_KEEP.size :].decode(), until=until)


def _decode_attempt(body: bytes) -> Attempt:
    n, owner, hlen = _ATTEMPTS.unpack_from(body)
    at = _ATTEMPTS.size + hlen
    if at + n * _ATTEMPT.size != len(body):
        raise ValueError(f"{n} attempts do not fill {len(body)} bytes")
    host = body[_ATTEMPTS.size : at].decode()
    return Attempt(host=host, owner=owner, items=tuple(_ATTEMPT.iter_unpack(body[at:])))


def _task_name(body: bytes) -> str:
    if not body:
        raise ValueError("empty task name")
    return body.decode()


_DECODERS: dict[int, Callable[[bytes], Event]] = {
    fmt.ENQUEUE: _decode_enqueue,
    fmt.JOB: _decode_job,
    fmt.CLAIM: lambda b: Claim(items=_pairs(b)),
    fmt.RELEASE: lambda b: Release(items=_pairs(b)),
    fmt.FAIL: _decode_fail,
    fmt.ACK: lambda b: Ack(ids=_ids(b)),
    fmt.CANCEL: lambda b: Cancel(ids=_ids(b)),
    fmt.REQUEUE: lambda b: Requeue(ids=_ids(b)),
    fmt.PURGE: lambda b: Purge(ids=_ids(b)),
    fmt.META: _decode_meta,
    fmt.SCHEDULE: _decode_schedule,
    fmt.UNIQUE: lambda b: Unique(items=tuple(_counted(b, _UNIQUE, "entries"))),
    fmt.KEEP: _decode_keep,
    fmt.PAUSE: lambda b: Pause(task=_task_name(b)),
    fmt.RESUME: lambda b: Resume(task=_task_name(b)),
    fmt.AFTER: _decode_after,
    fmt.FLOW: _decode_flow,
    fmt.FINISH: _decode_finish,
    fmt.ATTEMPT: _decode_attempt,
}


def may_name(body: bytes, job_id: int) -> bool:
    """Whether an event's body may be about job `job_id` (its id's 8 bytes are in it).

    Every event stores ids as 8-byte little-endian integers, so a body without
    them is not about the job: a cheap filter before decoding (`walq ui` reads
    one job's history this way). True may be a coincidence; decode to be sure.
    """
    return _ID.pack(job_id) in body
