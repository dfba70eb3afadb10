"""A directory queue's state, log and lock, and the steps every call takes under the lock.

QueueBase holds what one owner keeps in memory and the internal steps the
queue's calls share (checks, writes and commits, lease expiry, reads);
CompactionView is what the compactor may touch (walq.directory.compactor.Compactable).
"""

from __future__ import annotations

import itertools
import logging
import random
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from walq import forks
from walq.backend import QueueBackend
from walq.core import checkpoint as ckpt
from walq.core import events as ev
from walq.core import format as fmt
from walq.core import framing
from walq.core.job import COUNTERS, Job
from walq.core.jobspec import (
    DEFAULT_KEEP_RESULTS,
    DEFAULT_MAX_RESULT,
    Extra,
    JobSpec,
    check_seconds,
    decode_result,
)
from walq.core.ledger import Lost
from walq.core.state import DEAD, SCHEDULED, WAITING, Loc, Now, QueueState, seq_of
from walq.directory.checkpoint import Checkpointer
from walq.directory.compactor import Compactor, Snapshot
from walq.directory.fs import FileSystem, Lock
from walq.directory.log import Log
from walq.directory.readers import Readers
from walq.directory.recovery import Damage
from walq.directory.segment import Segment
from walq.directory.spool_guard import SpoolGuard
from walq.errors import ClosedError, CorruptionError, QueueFull
from walq.producers.server import ProducerServer

log = logging.getLogger("walq.queue")

# Ids per ack or purge record (a record body must stay under fmt.MAX_BODY), and
# so the most jobs one claim_many takes.
IDS_PER_RECORD = 1 << 20


class QueueBase(QueueBackend):
    """The in-memory side of one owner of a queue directory (see walq.directory.queue.Queue)."""

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
        self.max_result_bytes = DEFAULT_MAX_RESULT
        self.keep_results = DEFAULT_KEEP_RESULTS
        self._state = QueueState(default_max_attempts=opts["max_attempts"])
        # job -> the newest attempt this handle claimed: whose result an ack without
        # attempt= is (a lease that expired under it is then refused, LeaseLost).
        self._claims: dict[int, int] = {}
        self._mu = threading.Lock()
        self._changed = threading.Condition(self._mu)
        self._fire_mu = threading.Lock()  # one schedule firing at a time (fire_schedule)
        self._waiting_claims = 0  # claims blocked in _changed.wait: enqueue must wake them
        self._readers = Readers(fs, path, wal)
        self._closed = False
        self._free_checked = (-1.0, 0)
        self.damage: list[Damage] = []
        self.lost = Lost([], [], [], None)  # the job ids the damage took (recovery="skip")
        # Spool files already ingested, as the log tells (for reconciling the spool on open).
        self.replayed_origins: set[str] = set()
        self.counters = dict.fromkeys(COUNTERS, 0)
        self.done_seen = 0
        # How opening replayed the log: seconds, live jobs, segments (the worker's banner).
        self.replayed: dict[str, Any] = {}
        self.cancel_listeners: list[Callable[[int], None]] = []
        # Called (outside the lock) when a job may have become ready: a worker's wakeup.
        self.ready_listeners: list[Callable[[], None]] = []
        # Spool ingestion holds this from an enqueue until the spool file's unlink
        # is durable; the compactor and the checkpointer take it first, so they
        # never drop the enqueue record that says a spool file was ingested.
        self.ingest_lock = SpoolGuard()
        self._server: ProducerServer | None = None
        # The uid of the queue directory, which walq's files in it must have (spool
        # files included); None under trust_dir=True (walq.directory.fs.queue_dir_owner).
        self.owner_uid: int | None = None
        view = CompactionView(self)
        self._compactor = Compactor(view)
        self._compactor.checkpointer = Checkpointer(
            fs, path, view.checkpoint_capture, view.sync, wal.appended_bytes
        )
        self.checkpoint_opened: ckpt.Summary | None = None  # the one open started from
        self._forked = False  # set in a fork() child: every call refuses (walq.forks)
        self._pid = forks.track(self)

    def _after_fork_in_child(self) -> None:
        self._forked = True
        self._mu = threading.Lock()  # a parent's thread may have held it at the fork
        self._changed = threading.Condition(self._mu)

    def _job(self, jid: int, attempt: int) -> Job:
        """The job as a handler sees it, read back from its record (lock held)."""
        raise NotImplementedError  # walq.directory.queue.Queue reads it

    # -- checks --------------------------------------------------------------------------

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

    # -- adding jobs -------------------------------------------------------------------

    def _add_after(
        self,
        spec: JobSpec,
        parents: tuple[int, ...],
        policy: int,
        sync: bool | None,
        unique_for: float = 0.0,
    ) -> int:
        """Add a job waiting for `parents` (one `after` record); its id, or a key holder's."""
        return self._add_mixed((spec,), {0: Extra(parents, policy, unique_for)}, sync, 0.0)[0]

    def _add_mixed(
        self,
        specs: Sequence[JobSpec],
        extras: Mapping[int, Extra],
        sync: bool | None,
        timeout: float,
    ) -> list[int]:
        """Jobs with and without parents or remembered keys, in one append: `enqueue`
        records, `after` records for the dependents and a `unique` record."""
        if timeout:
            timeout = check_seconds("timeout", timeout)
        with self._mu:
            now = self._open_now()
            state = self._state
            for wants in extras.values():
                for parent in wants.parents:
                    state.status(parent)  # UnknownJobError: never enqueued, or purged
            ids, fresh, now = self._assign_room(specs, now, timeout)
            first = state.next_id
            events: list[ev.Event] = []
            unique: list[tuple[int, float]] = []
            seen: set[int] = set()
            for i, (jid, spec) in enumerate(zip(ids, specs, strict=True)):
                if jid < first or jid in seen:
                    continue  # coalesced with a job holding its key
                seen.add(jid)
                job = ev.Enqueue(
                    id=jid, task=spec.task, payload=spec.data, kind=spec.kind, key=spec.key,
                    priority=spec.priority, max_attempts=spec.max_attempts,
                    due=now.wall + spec.delay if spec.delay else 0.0, created=now.wall,
                    origin=spec.origin,
                )  # fmt: skip
                extra = extras.get(i)
                if extra is not None and extra.parents:
                    events.append(ev.After(parents=extra.parents, policy=extra.policy, job=job))
                else:
                    events.append(job)
                if extra is not None and extra.unique_for:
                    unique.append((jid, extra.unique_for))
            if unique:
                events.append(ev.Unique(items=tuple(unique)))
            readied = state.readied
            lsn = self._write(events, now) if events else self._log_lsn()
            self.counters["enqueued"] += len(fresh)
            if len(ids) != len(fresh):
                self.counters["coalesced"] += len(ids) - len(fresh)
            woke = bool(fresh) and (state.readied != readied or len(extras) < len(specs))
            if woke and self._waiting_claims:
                self._changed.notify_all()
        self._commit(lsn, sync)
        if woke:
            self._wake()
        return ids

    def _add(
        self,
        items: Sequence[JobSpec],
        sync: bool | None,
        timeout: float,
        unique_for: float = 0.0,
        extra: Callable[[list[int], Now], Sequence[ev.Event]] | None = None,
        caps: bool = True,
    ) -> list[int]:
        """Assign ids (or coalesce by key), check the caps, write, apply; then commit.

        unique_for: the new jobs' keys are remembered that long once they are
        done (a unique record written with them). extra(ids, now): records to
        append in the same write after the enqueues (a schedule's tick).
        caps=False: max_pending and max_bytes do not apply (a schedule's ticks);
        min_free_bytes still does.
        """
        if timeout:
            timeout = check_seconds("timeout", timeout)
        with self._mu:
            now = self._open_now()
            ids, fresh, now = self._assign_room(items, now, timeout, caps=caps)
            more: list[ev.Event] = []
            if unique_for and fresh:
                first = self._state.next_id
                pairs = tuple((first + i, unique_for) for i in range(len(fresh)))
                more.append(ev.Unique(items=pairs))
            if extra is not None:
                more += extra(ids, now)
            if more:
                lsn = self._write_enqueues(fresh, now, more)
            else:
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

    def _assign(self, items: Sequence[JobSpec], wall: float) -> tuple[list[int], Sequence[JobSpec]]:
        """Ids for each item -- a coalesced existing job, or the next new id -- and the new items.

        A key coalesces onto an unfinished job holding it, or a done one whose
        key is still remembered (unique_for). New items get consecutive ids
        from the state's next_id on.
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
                holder = batch_keys.get(key) or self._state.key_holder(key, wall)
                if holder is not None:
                    ids.append(holder)
                    continue
                batch_keys[key] = next_id
            fresh.append(item)
            ids.append(next_id)
            next_id += 1
        return ids, fresh

    def _assign_room(
        self, items: Sequence[JobSpec], now: Now, timeout: float, *, caps: bool = True
    ) -> tuple[list[int], Sequence[JobSpec], Now]:
        """Ids for `items` (see _assign) once the new ones fit (see _room_for), waiting up to
        `timeout` seconds for room (QueueFull after); the time it was then. Under _mu."""
        deadline = now.mono + timeout
        while True:
            ids, fresh = self._assign(items, now.wall)
            problem = self._room_for(fresh, caps=caps)
            if problem is None:
                return ids, fresh, now
            left = deadline - self._clock().mono
            if left <= 0:
                raise QueueFull(f"{self.path}: {problem}")
            now = self._wait_changed(min(left, 1.0))

    def _room_for(self, fresh: Sequence[JobSpec], *, caps: bool = True) -> str | None:
        """Why `fresh` does not fit under the caps (`caps`) and the disk floor, or None."""
        if not fresh:
            return None
        state = self._state
        if (
            caps
            and self.max_pending is not None
            and state.unfinished + len(fresh) > self.max_pending
        ):
            return f"max_pending ({self.max_pending}) reached"
        if caps and self.max_bytes is not None:
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

    def _wait_changed(self, seconds: float) -> Now:
        """Wait (lock held) until a change is signalled or `seconds` pass; the clock then."""
        self._changed.wait(seconds)
        return self._open_now()

    def _open_now(self) -> Now:
        """The clock, once the queue is known to be open (lock held)."""
        self._check_open()
        return self._clock()

    # -- the log, under the queue's lock -----------------------------------------------

    def _write(
        self, events: Sequence[ev.Event], now: Now, extra: Sequence[tuple[int, bytes]] = ()
    ) -> int:
        """Append events and apply them to the state (lock held); return the lsn.

        `extra` records (type, body) follow them in the same append, not applied
        (an attempt record: history only).
        """
        locs, lsn = self._log.append([*[(e.rtype, e.encode()) for e in events], *extra])
        for event, loc in zip(events, locs[: len(events)], strict=True):
            self._state.apply(event, loc, now)
        return lsn

    def _write_enqueues(
        self, fresh: Sequence[JobSpec], now: Now, extra: Sequence[ev.Event] = ()
    ) -> int:
        """Append enqueue records for new jobs and add them to the state (lock held).

        `extra` records follow them in the same append, and are applied after them.
        """
        wall = now.wall
        encode = ev.encode_enqueue
        enqueue = fmt.ENQUEUE
        first = self._state.next_id
        # enqueue(): skipping the comprehensions saves ~0.6 us of ~8
        if len(fresh) == 1 and not extra:
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
        records += [(e.rtype, e.encode()) for e in extra]
        locs, lsn = self._log.append(records)
        if fresh:
            self._state.add_new(first, fresh, dues, locs[: len(fresh)], now)
        for event, loc in zip(extra, locs[len(fresh) :], strict=True):
            self._state.apply(event, loc, now)
        return lsn

    def _log_lsn(self) -> int:
        return self._log.append([])[1]

    def _commit(self, lsn: int, sync: bool | None) -> None:
        if sync or (sync is None and self._log.sync_mode == "always"):
            self._log.commit(lsn)

    # -- the state, under the queue's lock ---------------------------------------------

    def _wake(self) -> None:
        for listener in list(self.ready_listeners):
            listener()

    def _tick(self, now: Now) -> None:
        expired = self._state.tick(now)
        if expired:
            self.counters["expired"] += len(expired)
            for jid in expired:
                log.warning("job %d: lease expired; back to pending", jid, extra={"job_id": jid})

    def _own(self, jid: int, attempt: int | None) -> int | None:
        """The attempt a result or heartbeat speaks for: `attempt`, else this handle's claim."""
        return attempt if attempt is not None else self._claims.get(jid)

    def _forget(self, jids: Iterable[int]) -> None:
        for jid in jids:
            self._claims.pop(jid, None)

    # -- reading -------------------------------------------------------------------------

    def _segment_path(self, seg: int) -> str:
        return self._readers.path(seg)

    def _read(self, loc: Loc) -> framing.Record:
        """The record at `loc`, checked against its CRC (lock held)."""
        return self._readers.read(loc)

    def _kept_result(self, jid: int, wall: float) -> Any:
        """Done job `jid`'s kept result, or None (lock held; damage reads as None, logged)."""
        loc = self._state.result_loc(jid, wall)
        if loc is None:
            return None
        try:
            e = ev.decode(*self._read_raw(loc))
            if not isinstance(e, ev.Finish):
                raise ev.BadEvent(f"job {jid}'s result record is not a finish record")
            return decode_result(e.result_kind, e.result)
        except (ev.BadEvent, CorruptionError, ValueError) as exc:
            log.error("job %d: its result cannot be read: %s", jid, exc, extra={"job_id": jid})
            return None

    def _read_raw(self, loc: Loc) -> tuple[int, bytes]:
        record = self._readers.read(loc)
        return record.rtype, record.body


def chunks(ids: Sequence[int]) -> list[tuple[int, ...]]:
    """`ids` in runs short enough for one record each (see IDS_PER_RECORD)."""
    return [tuple(ids[i : i + IDS_PER_RECORD]) for i in range(0, len(ids), IDS_PER_RECORD)]


class CompactionView:
    """What the compactor may do to a queue (walq.directory.compactor.Compactable).

    Each call takes the queue's lock itself, for as long as it needs it.
    """

    def __init__(self, queue: QueueBase) -> None:
        self._q = queue
        self.path = queue.path
        self.fs = queue.fs
        self.wal = queue._log
        self.ingest_lock = queue.ingest_lock

    def sync(self) -> None:
        self.wal.flush()

    def live_bytes_upto(self, seq: int) -> int:
        with self._q._mu:
            return self._q._state.live_bytes_upto(seq)

    def live_ids(self) -> list[int]:
        with self._q._mu:
            return self._q._state.live_ids()

    def snapshot(self, ids: list[int], upto: int) -> list[Snapshot]:
        q = self._q
        with q._mu:
            q._check_open()
            state = q._state
            now = q._clock()
            out = []
            for jid in ids:
                if jid not in state:
                    continue
                info = state.info(jid)
                if seq_of(info.loc.seg) > upto:
                    continue
                due = state.due_of(jid) if info.state == SCHEDULED else None
                due_wall = 0.0 if due is None else now.wall + (due - now.mono)
                waiting = info.state == WAITING
                out.append(
                    Snapshot(
                        id=jid,
                        loc=info.loc,
                        error_loc=state.error_loc(jid) if info.state == DEAD else None,
                        dead=info.state == DEAD,
                        attempts=info.attempts,
                        due_wall=state.wait_due(jid) if waiting else due_wall,
                        waiting=waiting,
                        after=state.after_of(jid),
                    )
                )
            return out

    def results_upto(self, upto: int) -> list[tuple[int, float, Loc]]:
        q = self._q
        with q._mu:
            state = q._state
            state.drop_expired_results(q._clock().wall)
            return [
                (jid, until, loc)
                for jid, (until, loc) in state.results().items()
                if seq_of(loc.seg) <= upto
            ]

    def relocate_results(self, upto: int, moves: dict[int, Loc]) -> None:
        with self._q._mu:
            self._q._state.relocate_results(moves, upto)

    def meta_event(self) -> ev.Meta:
        with self._q._mu:
            return self._meta()

    def _meta(self) -> ev.Meta:
        state = self._q._state
        return ev.Meta(next_id=state.next_id, tombstones=tuple(sorted(state.tombstones().items())))

    def snapshot_records(self) -> list[tuple[int, bytes]]:
        with self._q._mu:
            return self._snapshot_records()

    def _snapshot_records(self) -> list[tuple[int, bytes]]:
        """The snapshot's records besides the jobs' (lock held): a compaction and a checkpoint
        both carry them, so state added here survives both."""
        meta = self._meta()
        state = self._q._state
        paused = [ev.Pause(task=t) for t in sorted(state.paused)]
        # Schedules' last ticks and remembered keys (unique records after the jobs they name).
        timed = state.timed.records(self._q._clock().wall, state)
        # Why dependents were cancelled: their own records and their parents' go with the
        # compaction, so the cause is carried (a flow record of causes only).
        causes = [ev.Flow(causes=tuple(state.causes.items()))] if state.causes else []
        records: list[ev.Event] = [*paused, *timed, *causes]
        return [(meta.rtype, meta.encode())] + [(e.rtype, e.encode()) for e in records]

    def checkpoint_capture(self) -> tuple[dict[str, Any], int, int, list[Segment]]:
        """The state's copies for a checkpoint and the log position and segments they reflect.

        Under the ingest lock too: a spool file whose enqueue the checkpoint
        covers has had its unlink made durable (origins before it are not kept).
        """
        q = self._q
        with q.ingest_lock, q._mu:
            q.ingest_lock.check("the checkpoint")
            q._check_open()
            now = q._clock()
            done = q.done_seen + q.counters["acked"]
            flow = q._state.flow_event()  # a compaction copies these as records of their own
            records = [*self._snapshot_records(), (flow.rtype, flow.encode())]
            taken = ckpt.take(q._state, now, done, records)
            seq, offset, segments = q._log.position()
        return taken, seq, offset, segments

    def generation(self) -> int:
        with self._q._mu:  # copies only: a large queue's locations are scanned unlocked
            where = self._q._state.locations()
        return ckpt.highest_generation(*where)

    def pin_readers(self, upto: int, fresh: int) -> None:
        with self._q._mu:
            state = self._q._state
            in_use = state.segments_in_use()
            in_use += [loc.seg for _, loc in state.results().values() if seq_of(loc.seg) == upto]
            self._q._readers.pin(in_use, upto, fresh)

    def relocate(self, upto: int, moves: dict[int, tuple[Loc, bool]]) -> None:
        with self._q._mu:
            self._q._state.relocate(moves, upto)

    def drop_readers(self, upto: int, keep: int) -> None:
        with self._q._mu:
            self._q._readers.drop(upto, keep)
