"""Queue: the segmented log plus the state machine that replays it."""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
import posixpath
import random
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import attrs

from walq import forks
from walq.backends import backend_class, scheme_of
from walq.core import events as ev
from walq.core import format as fmt
from walq.core import framing
from walq.core.job import COUNTERS, DeadJob, Job, build_job
from walq.core.jobspec import (
    DEFAULT_MAX_PAYLOAD,
    MAX_PAYLOAD_LIMIT,
    JobSpec,
    check_delay,
    check_seconds,
    check_task,
    clip_error,
    make_spec,
    spec_from,
)
from walq.core.ledger import Ledger, Lost
from walq.core.state import (
    DEAD,
    SCHEDULED,
    JobInfo,
    Loc,
    Now,
    QueueState,
    seq_of,
)
from walq.core.text import excerpt
from walq.directory.compactor import CompactionResult, Compactor, Policy
from walq.directory.fs import File, FileSystem, Lock, OsFileSystem, open_fd, queue_dir_owner
from walq.directory.log import CUT_DIR, Damage, Log
from walq.directory.segment import SPARE_SUFFIX, TMP_SUFFIX
from walq.errors import (
    ArgumentError,
    ClosedError,
    CorruptionError,
    NotAQueueError,
    QueueFull,
    StateError,
    UnknownJobError,
    WalqError,
)
from walq.producers.server import ProducerServer
from walq.producers.spool import SPOOL_DIR
from walq.producers.wire import SOCKET_NAME

log = logging.getLogger("walq.queue")

LOCK_FILE = "LOCK"
STATUS_FILE = "worker-status.json"  # the worker's advisory status (walq stats)
# Names walq makes in a queue directory besides its segments (and their .tmp and
# .spare forms); "lost+found" is there when the directory is a file system's root.
OWN_NAMES = frozenset(
    {LOCK_FILE, SPOOL_DIR, CUT_DIR, SOCKET_NAME, "worker-status.json",
     "worker-status.json.part", "lost+found"}
)  # fmt: skip
# Segment files the owner keeps open for reading payloads (a cache: others are
# opened on demand), so that a queue of many segments needs few descriptors.
_MAX_READERS = 16
# Ids per ack or purge record (a record body must stay under fmt.MAX_BODY), and
# so the most jobs one claim_many takes.
_IDS_PER_RECORD = 1 << 20


@attrs.frozen
class Snapshot:
    """One live job as a compaction copies it."""

    id: int
    loc: Loc
    error_loc: Loc | None
    dead: bool
    attempts: int
    due_wall: float


RECOVERY_MODES = ("strict", "skip")
# Set only by walq.testing.plant, to prove the torture tools catch a lost ack.
PLANTED_FORGET_ACK = False
DEFERRED = "deferred, not charged: the retry budget could not pay for this retry yet"
INTERRUPTED = (
    "attempt {n} was interrupted (the owner stopped or the lease expired) and no attempts remain"
)


def wall_now() -> Now:
    """The real clocks."""
    return Now(time.time(), time.monotonic())


class Queue:
    """A durable job queue in one directory, owned by one process at a time."""

    def __init__(self, path: str, fs: FileSystem, lock: Lock, wal: Log, **opts: Any) -> None:
        self.path = path
        self.fs = fs
        self._lock_handle = lock
        self._log = wal
        self._clock: Callable[[], Now] = opts["clock"]
        self._rng: random.Random = opts["rng"]
        self.max_pending: int | None = opts["max_pending"]
        self.max_bytes: int | None = opts["max_bytes"]
        self.min_free_bytes: int = opts["min_free_bytes"]
        self.max_payload: int = opts["max_payload"]
        self._state = QueueState(default_max_attempts=opts["max_attempts"])
        # job -> the newest attempt this handle claimed: whose result an ack without
        # attempt= is (a lease that expired under it is then refused, LeaseLost).
        self._claims: dict[int, int] = {}
        self._mu = threading.Lock()
        self._changed = threading.Condition(self._mu)
        self._waiting_claims = 0  # claims blocked in _changed.wait: enqueue must wake them
        # Read handles by Loc.seg, least recently used first: at most _MAX_READERS,
        # plus those pinned across a compaction's rename (see _pin_readers).
        self._readers: dict[int, File] = {}
        self._pinned: set[int] = set()
        self._closed = False
        self._free_checked = (-1.0, 0)
        self.damage: list[Damage] = []
        self.lost = Lost([], [], [], None)  # the job ids the damage took (recovery="skip")
        # Spool files already ingested, as the log tells (for reconciling the spool on open).
        self.replayed_origins: set[str] = set()
        self.counters = dict.fromkeys(
            COUNTERS,
            0,
        )
        self.done_seen = 0
        self.cancel_listeners: list[Callable[[int], None]] = []
        # Called (outside the lock) when a job may have become ready: a worker's wakeup.
        self.ready_listeners: list[Callable[[], None]] = []
        # Spool ingestion holds this from an enqueue until the spool file's unlink
        # is durable; the compactor takes it before choosing what to rewrite, so
        # it never drops the enqueue record that says a spool file was ingested.
        self.ingest_lock = threading.Lock()
        self._server: ProducerServer | None = None
        # The uid of the queue directory, which walq's files in it must have (spool
        # files included); None under trust_dir=True (walq.directory.fs.queue_dir_owner).
        self.owner_uid: int | None = None
        self._compactor = Compactor(self)
        self._forked = False  # set in a fork() child: every call refuses (walq.forks)
        self._pid = forks.track(self)

    def _after_fork_in_child(self) -> None:
        self._forked = True
        self._mu = threading.Lock()  # a parent's thread may have held it at the fork
        self._changed = threading.Condition(self._mu)

    # -- opening ---------------------------------------------------------------

    @classmethod
    def open(
        cls,
        path: str,
        *,
        sync: str = "always",
        sync_interval: float = 0.05,
        segment_size: int = 32 << 20,
        max_pending: int | None = None,
        max_bytes: int | None = None,
        min_free_bytes: int | None = None,
        max_payload: int = DEFAULT_MAX_PAYLOAD,
        max_attempts: int = 20,
        lock_timeout: float = 0.0,
        recovery: str = "strict",
        compaction: Policy | bool | None = True,
        serve: bool = True,
        create: bool = True,
        trust_dir: bool = False,
        fs: FileSystem | None = None,
        clock: Callable[[], Now] | None = None,
        rng: random.Random | None = None,
    ) -> Queue:
        """Open (creating if needed, mode 0700) the queue in directory `path` and replay it.

        create: make the directory if it is missing (False: NotAQueueError).
        A directory that holds other files but none of walq's is refused
        (NotAQueueError). The directory must be the caller's and writable by
        it alone (UnsafeDirectoryError); trust_dir=True accepts any owner and
        mode (docs/OPERATIONS.md, "Permissions").

        sync: "always" (return after fdatasync; concurrent calls share one),
        "interval" (fsync every `sync_interval` seconds), or "never".
        recovery: "strict" (damage before a torn tail raises CorruptionError)
        or "skip" (damaged records are skipped, logged and counted).
        compaction: True (the default policy), a compactor.Policy, or False
        (compact only when `compact()` is called).
        serve: answer walq.connect() producers on the queue's socket and ingest
        their spool (docs/PRODUCERS.md).
        A "redis://..." path opens a RedisQueue instead (docs/REDIS.md).
        """
        if scheme_of(path) is not None:  # a server's URL: that backend (walq.backends)
            return backend_class(path).open(  # type: ignore[no-any-return]
                path, max_pending=max_pending, max_bytes=max_bytes, max_payload=max_payload,
                max_attempts=max_attempts, rng=rng,
            )  # fmt: skip
        if recovery not in RECOVERY_MODES:
            raise ArgumentError(f"recovery must be 'strict' or 'skip', not {recovery!r}")
        for name, cap in (("max_pending", max_pending), ("max_bytes", max_bytes)):
            if cap is not None and (not isinstance(cap, int) or cap < 1):
                raise ArgumentError(f"{name} must be a positive integer or None")
        if not 1 <= max_payload <= MAX_PAYLOAD_LIMIT:
            raise ArgumentError(f"max_payload must be 1..{MAX_PAYLOAD_LIMIT} bytes")
        lock_timeout = check_seconds("lock_timeout", lock_timeout)
        fs = fs or OsFileSystem()
        path = str(path)
        if not fs.is_dir(path):
            if not create:
                raise NotAQueueError(f"{path}: no such queue directory (create=True makes one)")
            fs.makedirs(path, 0o700)
        owner_uid = queue_dir_owner(fs, path, trust=trust_dir)
        check_queue_names(path, fs.listdir(path))
        # The directory's entry lives in its parent: make it durable -- on every
        # open, since a creator that died before doing so leaves it undurable.
        fs.sync_dir(posixpath.dirname(posixpath.normpath(path)) or ".")
        lock = fs.lock(posixpath.join(path, LOCK_FILE), lock_timeout)
        try:
            wal = Log(fs, path, segment_size=segment_size, sync=sync, sync_interval=sync_interval)
            wal.guard = getattr(lock, "verify", None)  # a deleted LOCK is taken again
            wal.owner_uid = owner_uid
            q = cls(
                path,
                fs,
                lock,
                wal,
                clock=clock or wall_now,
                rng=rng or random.Random(),
                max_pending=max_pending,
                max_bytes=max_bytes,
                min_free_bytes=2 * segment_size if min_free_bytes is None else min_free_bytes,
                max_payload=max_payload,
                max_attempts=max_attempts,
            )
            skip = recovery == "skip"
            q.owner_uid = owner_uid
            q._replay(wal, skip)
        except BaseException:
            lock.release()
            raise
        try:
            if serve:  # first: settling the spool needs origins a compaction may drop
                q._server = ProducerServer(q, listen=isinstance(fs, OsFileSystem))
                q._server.start()
            if isinstance(compaction, Policy):
                q._compactor.policy = compaction
            if compaction is not False:
                q._compactor.start()
                wal.on_roll = wal.on_half = q._compactor.poke
        except BaseException:
            q.close()  # stops what did start, closes the log, releases the lock
            raise
        return q

    def _replay(self, wal: Log, skip_damage: bool) -> None:
        """Rebuild the state from the log, one record at a time (see Log.recover)."""
        now = self._clock()
        state = self._state
        add = state.add
        apply = state.apply
        origins = self.replayed_origins
        tasks: dict[bytes, str] = {}
        bad: list[Damage] = []
        enqueue_type, ack_type = fmt.ENQUEUE, fmt.ACK

        def sink(seq: int, rtype: int, offset: int, size: int, body: memoryview) -> None:
            try:
                if rtype == enqueue_type:
                    # The fast path: the payload stays on disk, unparsed.
                    jid, prio, maxa, due, task, key, origin = ev.enqueue_fields(body)
                    name = tasks.get(task)
                    if name is None:
                        name = tasks[task] = task.decode()
                    add(jid, name, key, prio, maxa, due, Loc(seq, offset, size), now)
                    if origin:
                        origins.add(origin)
                    return
                event = ev.decode(rtype, bytes(body))
            except (ev.BadEvent, UnicodeDecodeError) as exc:
                path = posixpath.join(self.path, fmt.segment_name(seq))
                if not skip_damage:
                    raise CorruptionError(path, offset, str(exc)) from None
                bad.append(Damage(path, offset, offset + size, str(exc), False))
                return
            if rtype == ack_type:
                self.done_seen += len(event.ids)  # type: ignore[union-attr]
            apply(event, Loc(seq, offset, size), now)

        load = state.replay_sink(now, sink)

        if not skip_damage:
            self.damage = wal.recover(skip_damage=False, sink=sink, load=load)
        else:
            # Skipping damage: also note what every record says about job ids, to
            # tell which jobs the damage took (record by record: no fused fast path).
            ledger = Ledger()

            def noting(seq: int, rtype: int, offset: int, size: int, body: memoryview) -> None:
                sink(seq, rtype, offset, size, body)
                with contextlib.suppress(ev.BadEvent, UnicodeDecodeError):
                    if rtype == enqueue_type:
                        ledger.enqueued((seq, offset), ev.enqueue_fields(body)[0])
                    else:
                        ledger.event((seq, offset), ev.decode(rtype, bytes(body)))

            self.damage = wal.recover(skip_damage=True, sink=noting) + bad
            for d in self.damage:
                if not d.torn_tail:
                    ledger.damage(
                        (fmt.parse_segment_name(posixpath.basename(d.path)) or 0, d.start)
                    )
            self.lost = ledger.result()
        state.finish_replay(now)
        for d in self.damage:
            kind = "torn tail cut" if d.torn_tail else "damaged range skipped"
            log.warning("%s: %s at offset %d..%d: %s", d.path, kind, d.start, d.end, d.reason)
        for line in self.lost.lines():
            log.warning("%s: recovery skipped damage: %s", self.path, line)

    # -- producing -----------------------------------------------------------------

    def enqueue(
        self,
        task: str,
        payload: Any = None,
        *,
        key: str | None = None,
        delay: float = 0.0,
        priority: int = 0,
        max_attempts: int | None = None,
        sync: bool | None = None,
        timeout: float = 0.0,
    ) -> int:
        """Add a job; return its id once durable (per the sync mode, or `sync=True`).

        With `key`, an unfinished job holding the same key is returned instead
        of a new one. A full queue raises QueueFull, after waiting up to `timeout`.
        """
        item = self._item(task, payload, key, delay, priority, max_attempts, "")
        return self._add((item,), sync, timeout)[0]

    def enqueue_many(
        self,
        items: Iterable[tuple[str, Any] | tuple[str, Any, Mapping[str, Any]]],
        *,
        sync: bool | None = None,
        timeout: float = 0.0,
    ) -> list[int]:
        """Add many jobs with one durable write; items are (task, payload[, options]).

        options: key, delay, priority, max_attempts (as for `enqueue`).
        """
        return self._add([self._item_from(raw) for raw in items], sync, timeout)

    def _item_from(self, raw: Any) -> JobSpec:
        return spec_from(raw, self.max_payload)

    def _item(
        self,
        task: Any,
        payload: Any,
        key: Any,
        delay: Any,
        priority: Any,
        max_attempts: Any,
        origin: str,
    ) -> JobSpec:
        """Validate one job's arguments (ArgumentError/PayloadError) and encode its payload."""
        return make_spec(
            task,
            payload,
            key=key,
            delay=delay,
            priority=priority,
            max_attempts=max_attempts,
            origin=origin,
            max_payload=self.max_payload,
        )

    def _add(self, items: Sequence[JobSpec], sync: bool | None, timeout: float) -> list[int]:
        """Assign ids (or coalesce by key), check the caps, write, apply; then commit."""
        if timeout:
            timeout = check_seconds("timeout", timeout)
        with self._mu:
            self._check_open()
            now = self._clock()
            deadline = now.mono + timeout
            while True:
                ids, fresh = self._assign(items)
                problem = self._room_for(fresh)
                if problem is None:
                    break
                left = deadline - self._clock().mono
                if left <= 0:
                    raise QueueFull(f"{self.path}: {problem}")
                self._changed.wait(min(left, 1.0))
                self._check_open()
                now = self._clock()
            lsn = self._write_enqueues(fresh, now) if fresh else self._log_lsn()
            counters = self.counters
            counters["enqueued"] += len(fresh)
            if len(ids) != len(fresh):
                counters["coalesced"] += len(ids) - len(fresh)
            if fresh and self._waiting_claims:
                self._changed.notify_all()
        self._commit(lsn, sync)
        if fresh and self.ready_listeners:
            self._wake()
        return ids

    def _assign(self, items: Sequence[JobSpec]) -> tuple[list[int], Sequence[JobSpec]]:
        """Ids for each item -- a coalesced existing job, or the next new id -- and the new items.

        New items get consecutive ids from the state's next_id on.
        """
        next_id = self._state.next_id
        for item in items:
            if item.key is not None:
                break
        else:
            return list(range(next_id, next_id + len(items))), items
        ids: list[int] = []
        fresh: list[JobSpec] = []
        batch_keys: dict[str, int] = {}
        for item in items:
            key = item.key
            if key is not None:
                holder = batch_keys.get(key) or self._state.key_holder(key)
                if holder is not None:
                    ids.append(holder)
                    continue
                batch_keys[key] = next_id
            fresh.append(item)
            ids.append(next_id)
            next_id += 1
        return ids, fresh

    def _room_for(self, fresh: Sequence[JobSpec]) -> str | None:
        """Why `fresh` does not fit under the caps, or None if it does."""
        if not fresh:
            return None
        state = self._state
        if self.max_pending is not None and state.unfinished + len(fresh) > self.max_pending:
            return f"max_pending ({self.max_pending}) reached"
        if self.max_bytes is not None:
            size = sum(len(item.data) + 64 + len(item.task) for item in fresh)
            if state.live_bytes + size > self.max_bytes:
                return f"max_bytes ({self.max_bytes}) reached"
        if self.min_free_bytes:
            free = self._free_bytes()
            if free < self.min_free_bytes:
                return f"only {free} bytes free on disk (min_free_bytes={self.min_free_bytes})"
        return None

    def _free_bytes(self) -> int:
        # statvfs at most every half second: a floor, not a ledger.
        checked, free = self._free_checked
        now = time.monotonic()
        if now - checked > 0.5:
            free = self.fs.free_bytes(self.path)
            self._free_checked = (now, free)
        return free

    # -- the log, under the queue's lock -----------------------------------------------

    def _write(self, events: Sequence[ev.Event], now: Now) -> int:
        """Append events and apply them to the state (lock held); return the lsn."""
        locs, lsn = self._log.append([(e.rtype, e.encode()) for e in events])
        for event, loc in zip(events, locs, strict=True):
            self._state.apply(event, loc, now)
        return lsn

    def _write_enqueues(self, fresh: Sequence[JobSpec], now: Now) -> int:
        """Append enqueue records for new jobs and add them to the state (lock held)."""
        wall = now.wall
        encode = ev.encode_enqueue
        enqueue = fmt.ENQUEUE
        first = self._state.next_id
        if len(fresh) == 1:  # enqueue(): skipping the comprehensions saves ~0.6 us of ~8
            it = fresh[0]
            due = wall + it.delay if it.delay else 0.0
            body = encode(first, it.task, it.data, it.kind, it.key, it.priority,
                          it.max_attempts, due, wall, it.origin)  # fmt: skip
            locs, lsn = self._log.append(((enqueue, body),))
            self._state.add_new(first, fresh, (due,), locs, now)
            return lsn
        dues = [wall + it.delay if it.delay else 0.0 for it in fresh]
        records = [
            (enqueue, encode(jid, it.task, it.data, it.kind, it.key, it.priority,
                             it.max_attempts, due, wall, it.origin))
            for jid, it, due in zip(itertools.count(first), fresh, dues)
        ]  # fmt: skip
        locs, lsn = self._log.append(records)
        self._state.add_new(first, fresh, dues, locs, now)
        return lsn

    def _log_lsn(self) -> int:
        return self._log.append([])[1]

    def _commit(self, lsn: int, sync: bool | None) -> None:
        if sync or (sync is None and self._log.sync_mode == "always"):
            self._log.commit(lsn)

    # -- consuming ---------------------------------------------------------------------

    def claim(
        self, lease: float = 60.0, timeout: float = 0.0, *, tasks: Iterable[str] | None = None
    ) -> Job | None:
        """Take the next ready job for `lease` seconds, waiting up to `timeout` for one.

        The attempt is durable before the job is returned, so a job that
        crashes the process is still counted.
        """
        jobs = self.claim_many(1, lease=lease, timeout=timeout, tasks=tasks)
        return jobs[0] if jobs else None

    def claim_many(
        self,
        n: int,
        *,
        lease: float = 60.0,
        timeout: float = 0.0,
        accept: Callable[[JobInfo], bool | float] | None = None,
        tasks: Iterable[str] | None = None,
    ) -> list[Job]:
        """Take up to `n` ready jobs with one durable write (see `claim`).

        `accept(info)` may refuse a job just before it is taken (see
        QueueState.take_ready); the worker uses it for per-task limits.
        `tasks`, if given, takes only jobs of those tasks (before `accept`).
        """
        if not isinstance(n, int) or n < 1:
            raise ArgumentError(f"n must be a positive integer, not {excerpt(n)}")
        n = min(n, _IDS_PER_RECORD)  # "up to n": one claim record holds this many
        if tasks is not None:
            accept = _only_tasks(set(tasks), accept)
        lease = check_seconds("lease", lease, positive=True)
        timeout = check_seconds("timeout", timeout)
        with self._mu:
            self._check_open()
            now = self._clock()
            deadline = now.mono + timeout
            while True:
                self._tick(now)
                deferred: list[tuple[JobInfo, float]] = []
                taken = self._state.take_ready(n, accept, deferred)
                if taken or deferred:
                    lsn, jobs = self._start(taken, deferred, now, lease)
                    if jobs:
                        break
                    continue  # all were deferred, damaged or out of attempts: look again
                if now.mono >= deadline:
                    return []
                wait = deadline - now.mono
                due = self._state.next_due()
                if due is not None:
                    wait = min(wait, max(due - now.mono, 0.001))
                self._waiting_claims += 1
                try:
                    self._changed.wait(wait)
                finally:
                    self._waiting_claims -= 1
                self._check_open()
                now = self._clock()
        self._commit(lsn, None)  # the starts are durable (per the sync mode) before the jobs run
        return jobs

    def _start(
        self, taken: list[JobInfo], deferred: list[tuple[JobInfo, float]], now: Now, lease: float
    ) -> tuple[int, list[Job]]:
        """Record the start of taken jobs (lock held) and return them, read back.

        Each job is read before anything is written: a claim is recorded only
        for jobs this call hands back. If a read fails (EMFILE, EIO), nothing
        is written and every taken job stays pending. A job out of attempts,
        or whose record is damaged, is dead-lettered instead (damage is never
        delivered). A deferred job is rescheduled without being charged: a
        Fail record that keeps its attempt count and says why.
        """
        events: list[ev.Event] = []
        started: list[tuple[JobInfo, int]] = []
        jobs: list[Job] = []
        dead = 0
        for info, until in deferred:
            events.append(
                ev.Fail(
                    id=info.id,
                    attempt=info.attempts,
                    dead=False,
                    due=now.wall + max(0.0, until - now.mono),
                    error=DEFERRED,
                )
            )
        for info in taken:
            if info.attempts >= info.max_attempts:
                events.append(
                    ev.Fail(
                        id=info.id,
                        attempt=info.attempts,
                        dead=True,
                        error=INTERRUPTED.format(n=info.attempts),
                    )
                )
                dead += 1
                log.warning(
                    "job %d (%s): %s", info.id, info.task, INTERRUPTED.format(n=info.attempts),
                    extra={"job_id": info.id, "task": info.task},
                )  # fmt: skip
                continue
            try:
                job = self._job(info.id, info.attempts + 1)
            except CorruptionError as exc:
                jid = info.id
                log.error(
                    "%s; job %d dead-lettered, not delivered", exc, jid, extra={"job_id": jid}
                )
                events.append(
                    ev.Fail(id=jid, attempt=info.attempts, dead=True, error=f"[damaged] {exc}")
                )
                dead += 1
                continue
            except BaseException:
                self._state.untake(taken + [i for i, _ in deferred])
                raise
            started.append((info, job.attempt))
            jobs.append(job)
        if started:
            events.append(ev.Claim(items=tuple((i.id, a) for i, a in started)))
        try:
            lsn = self._write(events, now)
        except BaseException:
            self._state.untake(taken + [i for i, _ in deferred])
            raise
        for info, attempt in started:
            self._state.start(info.id, attempt, now.mono + lease)
            self._claims[info.id] = attempt
        for info in taken:
            if info.attempts >= info.max_attempts:
                self._claims.pop(info.id, None)  # dead-lettered just now
        self.counters["claimed"] += len(started)
        self.counters["dead_lettered"] += dead
        return lsn, jobs

    def _job(self, jid: int, attempt: int) -> Job:
        """The job as a handler sees it, read back from its record (lock held).

        CorruptionError (naming the file and offset) if the record, its event
        or its payload does not decode -- bytes a checksum passed but that are
        not what walq wrote (a foreign write). Damage is never delivered.
        """
        info = self._state.info(jid)
        record = self._read(info.loc)
        try:
            e = ev.decode(record.rtype, record.body)
            if not isinstance(e, ev.Enqueue | ev.Job):
                raise ev.BadEvent(f"job {jid}'s record is a {fmt.TYPE_NAMES.get(record.rtype)}")
            return build_job(
                id=jid,
                task=e.task,
                kind=e.kind,
                data=e.payload,
                attempt=attempt,
                key=e.key,
                priority=e.priority,
                max_attempts=info.max_attempts,
                enqueued_at=e.created,
            )
        except (ev.BadEvent, ValueError, RecursionError) as exc:
            path = self._segment_path(info.loc.seg)
            raise CorruptionError(path, info.loc.offset, f"job {jid}: {exc}") from None

    def ack(self, job_id: int, *, attempt: int | None = None, sync: bool | None = None) -> None:
        """Finish a running job held by `attempt`, or by this handle's own claim.

        Without `attempt`, the claim this handle made last on the job decides:
        LeaseLost if it no longer holds the job (its lease expired, the job was
        claimed again or cancelled). Only cancel and requeue act without a claim.
        """
        self.ack_many([job_id], attempts=None if attempt is None else [attempt], sync=sync)

    def ack_many(
        self,
        job_ids: Sequence[int],
        *,
        attempts: Sequence[int] | None = None,
        sync: bool | None = None,
        strict: bool = True,
    ) -> list[tuple[int, StateError]]:
        """Finish many running jobs with one durable write.

        strict: if one job is not held (by its attempt), raise and ack none.
        Otherwise ack those that are held and return the others with why.
        """
        refused: list[tuple[int, StateError]] = []
        with self._mu:
            self._check_open()
            held: Sequence[int | None] = attempts if attempts is not None else [None] * len(job_ids)
            ids = []
            for jid, attempt in zip(job_ids, held, strict=True):
                try:
                    ids.append(self._state.check_holder(jid, self._own(jid, attempt)).id)
                except StateError as exc:
                    if strict:
                        raise
                    refused.append((jid, exc))
            if PLANTED_FORGET_ACK or not ids:
                return refused
            self._forget(ids)
            lsn = self._write([ev.Ack(ids=chunk) for chunk in _chunks(ids)], self._clock())
            self.counters["acked"] += len(ids)
            self._changed.notify_all()
        self._commit(lsn, sync)
        return refused

    def fail(
        self,
        job_id: int,
        error: str = "",
        permanent: bool = False,
        *,
        attempt: int | None = None,
        delay: float | None = None,
        sync: bool | None = None,
    ) -> str:
        """Record a failed attempt: retry after `delay` (default: backoff), or dead.

        Returns the job's new status, "scheduled" or "dead".
        """
        if delay is not None:
            delay = check_delay(delay)
        with self._mu:
            self._check_open()
            info = self._state.check_holder(job_id, self._own(job_id, attempt))
            now = self._clock()
            dead = permanent or info.attempts >= info.max_attempts
            if delay is None:
                delay = self._rng.uniform(0.0, min(300.0, 2.0 ** min(info.attempts, 30)))
            event = ev.Fail(
                id=job_id,
                attempt=info.attempts,
                dead=dead,
                due=0.0 if dead else now.wall + delay,
                error=clip_error(str(error)),
            )
            lsn = self._write([event], now)
            self._forget([job_id])
            self.counters["failed"] += 1
            self.counters["dead_lettered" if dead else "retried"] += 1
            self._changed.notify_all()
        self._commit(lsn, sync)
        if not dead:
            self._wake()
        return "dead" if dead else "scheduled"

    def release(self, job_id: int, *, attempt: int | None = None, sync: bool | None = None) -> None:
        """Hand a running job back to pending without charging its attempt."""
        with self._mu:
            self._check_open()
            info = self._state.check_holder(job_id, self._own(job_id, attempt))
            event = ev.Release(items=((job_id, info.attempts - 1),))
            lsn = self._write([event], self._clock())
            self._forget([job_id])
            self._changed.notify_all()
        self._commit(lsn, sync)
        self._wake()

    def extend(self, job_id: int, lease: float, *, attempt: int | None = None) -> None:
        """Push a running job's lease to `lease` seconds from now (a heartbeat)."""
        lease = check_seconds("lease", lease, positive=True)
        with self._mu:
            self._check_open()
            self._state.extend(job_id, self._own(job_id, attempt), self._clock().mono + lease)

    def extend_many(
        self, job_ids: Sequence[int], lease: float, *, attempts: Sequence[int] | None = None
    ) -> list[tuple[int, WalqError]]:
        """Extend many running jobs' leases at once (a worker's heartbeat; nothing written).

        Each job's attempt (or this handle's claim) is checked as by `extend`;
        the jobs no longer held are returned with why, the others extended.
        """
        lease = check_seconds("lease", lease, positive=True)
        held: Sequence[int | None] = attempts if attempts is not None else [None] * len(job_ids)
        refused: list[tuple[int, WalqError]] = []
        with self._mu:
            self._check_open()
            deadline = self._clock().mono + lease
            for jid, attempt in zip(job_ids, held, strict=True):
                try:
                    self._state.extend(jid, self._own(jid, attempt), deadline)
                except (StateError, UnknownJobError) as exc:
                    refused.append((jid, exc))
        return refused

    def _own(self, jid: int, attempt: int | None) -> int | None:
        """The attempt a result or heartbeat speaks for: `attempt`, else this handle's claim."""
        return attempt if attempt is not None else self._claims.get(jid)

    def _forget(self, jids: Iterable[int]) -> None:
        for jid in jids:
            self._claims.pop(jid, None)

    # -- administration -------------------------------------------------------------------

    def status(self, job_id: int) -> str:
        """pending | scheduled | running | done | dead | cancelled (UnknownJobError if none)."""
        with self._mu:
            self._check_not_closed()
            self._tick(self._clock())
            return self._state.status(job_id)

    def cancel(self, job_id: int, *, sync: bool | None = None) -> bool:
        """Cancel an unfinished job; False if it had already finished. A dead job is purged."""
        with self._mu:
            self._check_open()
            status = self._state.status(job_id)
            if status in ("done", "cancelled"):
                return False
            if status == "dead":
                raise StateError(f"job {job_id} is dead: purge or requeue it")
            lsn = self._write([ev.Cancel(ids=(job_id,))], self._clock())
            self._forget([job_id])
            self._changed.notify_all()
        self._commit(lsn, sync)
        if status == "running":
            for listener in list(self.cancel_listeners):
                listener(job_id)
        return True

    def dead_jobs(self) -> list[DeadJob]:
        """Every dead-lettered job with its last error."""
        with self._mu:
            self._check_open()
            infos = list(self._state.jobs(DEAD))
            locs = [(i, self._state.error_loc(i.id), self._state.key_of(i.id)) for i in infos]
            out = []
            for info, err_loc, key in locs:
                try:
                    payload = self._job(info.id, info.attempts).payload
                except CorruptionError as exc:
                    payload = None
                    log.error("%s", exc, extra={"job_id": info.id})
                error = ""
                if err_loc is not None:
                    try:
                        e = ev.decode(*self._read_raw(err_loc))
                    except ev.BadEvent as exc:
                        error = f"(the error record at offset {err_loc.offset} is damaged: {exc})"
                    else:
                        error = e.error if isinstance(e, ev.Fail | ev.Job) else ""
                out.append(
                    DeadJob(
                        id=info.id,
                        task=info.task,
                        payload=payload,
                        attempts=info.attempts,
                        error=error,
                        key=key,
                    )
                )
            return out

    def requeue(self, job_id: int, *, sync: bool | None = None) -> None:
        """Give a dead job a fresh start (its attempts reset)."""
        with self._mu:
            self._check_open()
            if self._state.status(job_id) != "dead":
                raise StateError(f"job {job_id} is {self._state.status(job_id)}, not dead")
            lsn = self._write([ev.Requeue(ids=(job_id,))], self._clock())
            self._changed.notify_all()
        self._commit(lsn, sync)
        self._wake()

    def purge(self, job_ids: Iterable[int] | None = None, *, sync: bool | None = None) -> int:
        """Delete dead jobs (all of them by default); return how many."""
        with self._mu:
            self._check_open()
            if job_ids is None:
                ids = tuple(i.id for i in self._state.jobs(DEAD))
            else:
                ids = tuple(job_ids)
                for jid in ids:
                    if self._state.status(jid) != "dead":
                        raise StateError(f"job {jid} is {self._state.status(jid)}, not dead")
            if not ids:
                return 0
            lsn = self._write([ev.Purge(ids=chunk) for chunk in _chunks(ids)], self._clock())
        self._commit(lsn, sync)
        return len(ids)

    def set_task_defaults(self, task: str, *, max_attempts: int) -> None:
        """Attempts allowed for jobs of `task` that did not set max_attempts themselves."""
        with self._mu:
            self._check_not_closed()
            self._state.set_task_max_attempts(check_task(task), max_attempts)

    def stats(self) -> dict[str, Any]:
        """Counts by state and per task, bytes, segments, and counters since open."""
        with self._mu:
            self._check_not_closed()
            self._tick(self._clock())
            c = self._state.counts
            paths = self._log.segment_paths()
            disk = 0
            for p in paths:
                with contextlib.suppress(OSError):  # removed by a compaction a moment ago
                    disk += _file_size(self.fs, p)
            return {
                "pending": c.pending,
                "scheduled": c.scheduled,
                "running": c.running,
                "dead": c.dead,
                "done": self.done_seen + self.counters["acked"],
                "unfinished": self._state.unfinished,
                "bytes": self._state.live_bytes,
                "disk_bytes": disk,
                "segments": len(paths),
                "next_id": self._state.next_id,
                "damaged": sum(1 for d in self.damage if not d.torn_tail),
                "torn_tails_cut": sum(1 for d in self.damage if d.torn_tail),
                "fsyncs": self._log.fsyncs,
                "compactor": self._compactor.health(),
                # Which jobs skipped damage took (recovery="skip"); None if nothing.
                "lost": self.lost.as_dict() if self.lost.any else None,
                "tasks": {
                    t: {
                        "pending": n.pending,
                        "scheduled": n.scheduled,
                        "running": n.running,
                        "dead": n.dead,
                    }
                    for t, n in self._state.task_counts().items()
                    if n.pending or n.scheduled or n.running or n.dead
                },
                **self.counters,
            }

    def compactor_health(self) -> dict[str, Any] | None:
        """None while background compaction works; else since when and why it fails.

        A failing round (a full disk, say) is retried with backoff (up to a
        minute apart) until one succeeds; `stats()["compactor"]` says the same.
        """
        self._check_not_closed()
        return self._compactor.health()

    @property
    def sync_mode(self) -> str:
        """ "always", "interval" or "never", as opened."""
        return self._log.sync_mode

    def sync(self) -> None:
        """Make everything written so far durable, whatever the sync mode."""
        self._log.flush()

    def record_worker_status(self, status: Mapping[str, Any], ttl: float = 30.0) -> None:
        """Write a worker's status to STATUS_FILE for `walq stats` (stale after `ttl` s).

        Advisory only: no fsync; a crash leaves the previous status or none. A
        leftover .part (or anything planted there) is unlinked, never written through.
        """
        self._check_not_closed()
        path = posixpath.join(self.path, STATUS_FILE)
        tmp = path + ".part"
        with contextlib.suppress(OSError, CorruptionError):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            fd = open_fd(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
            with os.fdopen(fd, "w") as f:
                json.dump(dict(status), f)
            os.replace(tmp, path)

    def close(self) -> None:
        """Flush, close the files and release the directory (idempotent).

        In a fork() child it only closes the child's copies of the descriptors:
        the parent's socket, lock, buffered records and threads are left alone.
        """
        if self._forked or os.getpid() != self._pid:
            self._forked = self._closed = True
            self._log.close()  # closes the child's descriptors, writes nothing
            for f in self._readers.values():
                f.close()
            self._readers.clear()
            return
        with self._mu:
            if self._closed:
                return
            self._closed = True
            self._changed.notify_all()
        try:
            if self._server is not None:
                self._server.stop()
            self._compactor.stop()
            self._log.close()
        finally:
            for f in self._readers.values():
                f.close()
            self._readers.clear()
            self._lock_handle.release()

    def __enter__(self) -> Queue:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def next_due_in(self) -> float | None:
        """Seconds until the next scheduled job falls due or lease expires (None: none)."""
        with self._mu:
            self._check_not_closed()
            now = self._clock()
            self._tick(now)  # what is already due moves now, so this is never stale-zero
            due = self._state.next_due()
            return None if due is None else max(0.0, due - now.mono)

    # -- compaction -------------------------------------------------------------------------

    def compact(
        self, progress: Callable[[int, int], None] | None = None, *, seal: bool = False
    ) -> CompactionResult:
        """Rewrite the sealed segments keeping only live jobs (see walq.directory.compactor).

        seal=True first seals the active segment, so that it is compacted too
        (what `walq compact` does on a queue no owner is writing to).
        """
        self._check_open()
        if seal:
            with self._mu:
                self._log.seal()
        return self._compactor.compact(progress)

    def _live_bytes_upto(self, seq: int) -> int:
        with self._mu:
            return self._state.live_bytes_upto(seq)

    def _snapshot(self, ids: list[int], upto: int) -> list[Snapshot]:
        """Live jobs among `ids` whose record lies in segments <= `upto` (lock held)."""
        self._check_open()
        state = self._state
        now = self._clock()
        out = []
        for jid in ids:
            if jid not in state:
                continue
            info = state.info(jid)
            if seq_of(info.loc.seg) > upto:
                continue
            due = state.due_of(jid) if info.state == SCHEDULED else None
            out.append(
                Snapshot(
                    id=jid,
                    loc=info.loc,
                    error_loc=state.error_loc(jid) if info.state == DEAD else None,
                    dead=info.state == DEAD,
                    attempts=info.attempts,
                    due_wall=0.0 if due is None else now.wall + (due - now.mono),
                )
            )
        return out

    def _meta_event(self) -> ev.Meta:
        with self._mu:
            tombs = tuple(sorted(self._state.tombstones().items()))
            return ev.Meta(next_id=self._state.next_id, tombstones=tombs)

    def _pin_readers(self, upto: int) -> None:
        """Open and pin a read handle on the file a compaction's rename replaces.

        Called (lock held) before a compaction renames its output over segment
        `upto`: the handle keeps the old file readable until every job has
        moved. (The older segments it covers stay in place until then:
        remove_superseded comes after _drop_readers.)
        """
        for seg in self._state.segments_in_use():
            if seq_of(seg) == upto:
                self._reader(seg)
                self._pinned.add(seg)

    def _relocate(self, upto: int, moves: dict[int, tuple[Loc, bool]]) -> None:
        """Point some jobs at their records in the compacted segment (lock held)."""
        self._state.relocate(moves, upto)

    def _drop_readers(self, upto: int, keep: int) -> None:
        """Close the handles on files a compaction replaced (lock held)."""
        for seg in [s for s in self._readers if seq_of(s) <= upto and s != keep]:
            self._readers.pop(seg).close()
        self._pinned = {s for s in self._pinned if seq_of(s) > upto}

    def _segment_path(self, seg: int) -> str:
        return posixpath.join(self.path, fmt.segment_name(seq_of(seg)))

    def _reader(self, seg: int) -> File:
        """The read handle for Loc.seg `seg` (lock held), opened on demand."""
        readers = self._readers
        f = readers.pop(seg, None)
        if f is None:
            if len(readers) >= _MAX_READERS:
                for old in [s for s in readers if s not in self._pinned]:
                    readers.pop(old).close()  # the least recently used first
                    if len(readers) < _MAX_READERS:
                        break
            f = self.fs.open(self._segment_path(seg))
        readers[seg] = f  # now the most recently used
        return f

    # -- internals ---------------------------------------------------------------------

    def _wake(self) -> None:
        for listener in list(self.ready_listeners):
            listener()

    def _check_not_closed(self) -> None:
        """For what only reads the state: it stays readable after a failed write."""
        if self._forked:
            raise forks.error(self.path, self._pid)
        if self._closed:
            raise ClosedError(f"{self.path}: the queue is closed")

    def _check_open(self) -> None:
        self._check_not_closed()
        failed = self._log.failed
        if failed is not None:
            raise failed

    def _tick(self, now: Now) -> None:
        expired = self._state.tick(now)
        if expired:
            self.counters["expired"] += len(expired)
            for jid in expired:
                log.warning("job %d: lease expired; back to pending", jid, extra={"job_id": jid})

    def _read_raw(self, loc: Loc) -> tuple[int, bytes]:
        record = self._read(loc)
        return record.rtype, record.body

    def _read(self, loc: Loc) -> framing.Record:
        """The record at `loc`, checked against its CRC."""
        data = self._log.unwritten(loc.seg, loc.offset, loc.size)  # still in the buffer?
        if data is None:
            data = self._reader(loc.seg).pread(loc.size, loc.offset)
        record = framing.decode(data, 0, origin=loc.offset, check=self._log.record_check)
        if not isinstance(record, framing.Record):
            reason = getattr(record, "reason", "no record")
            raise CorruptionError(self._segment_path(loc.seg), loc.offset, reason)
        return record


def check_queue_names(path: str, names: list[str]) -> None:
    """NotAQueueError if directory `path` holds entries but none that walq makes.

    A queue is never made beside someone else's files: a directory is a queue,
    or empty (a queue to be).
    """
    if not names:
        return
    for name in names:
        if name in OWN_NAMES or name.endswith(".sock.tmp"):
            return
        stem = name.removesuffix(TMP_SUFFIX).removesuffix(SPARE_SUFFIX)
        if fmt.parse_segment_name(stem) is not None:
            return
    raise NotAQueueError(
        f"{path}: holds {len(names)} entries (e.g. {names[0]!r}) but no walq files; "
        "a queue is made only in a new or empty directory"
    )


def _only_tasks(
    allowed: set[str], accept: Callable[[JobInfo], bool | float] | None
) -> Callable[[JobInfo], bool | float]:
    """An accept filter that refuses jobs of other tasks, then asks `accept`."""

    def only(info: JobInfo) -> bool | float:
        if info.task not in allowed:
            return False
        return True if accept is None else accept(info)

    return only


def _chunks(ids: Sequence[int]) -> list[tuple[int, ...]]:
    """`ids` in runs short enough for one record each (see _IDS_PER_RECORD)."""
    return [tuple(ids[i : i + _IDS_PER_RECORD]) for i in range(0, len(ids), _IDS_PER_RECORD)]


def _file_size(fs: FileSystem, path: str) -> int:
    f = fs.open(path)
    try:
        return f.size()
    finally:
        f.close()
