"""Queue: a durable job queue in one directory -- the segmented log plus the state machine.

The public API is walq.backend.QueueBackend; what is particular to the
directory lives here and in its parts: opening (walq.directory.opening),
replay (walq.directory.replay), reads (walq.directory.readers), the shared
steps (walq.directory.base) and administration (walq.directory.admin).
"""

from __future__ import annotations

import os
import random
import socket
import time
from collections.abc import Callable, Sequence
from typing import Any

from walq.backends import backend_class, scheme_of
from walq.core import checkpoint as ckpt
from walq.core import events as ev
from walq.core import format as fmt
from walq.core.job import Job, Ran, build_job
from walq.core.jobspec import (
    DEFAULT_KEEP_RESULTS,
    DEFAULT_MAX_PAYLOAD,
    DEFAULT_MAX_RESULT,
    JobSpec,
    Output,
    check_seconds,
    clip_error,
    make_spec,
)
from walq.core.retry import Backoff
from walq.core.schedule import Schedule, due, tick_key
from walq.core.state import JobInfo, Now, QueueState
from walq.directory import checkpoint as checkpoints
from walq.directory.admin import Administration
from walq.directory.base import IDS_PER_RECORD, chunks, log
from walq.directory.checkpoint import Policy as CheckpointPolicy
from walq.directory.compactor import Policy
from walq.directory.fs import FileSystem, OsFileSystem
from walq.directory.log import Log
from walq.directory.opening import (
    LOCK_FILE,
    RECOVERY_MODES,
    STATUS_FILE,
    check_options,
    take_directory,
)
from walq.directory.replay import Replayed, replay
from walq.errors import (
    CorruptionError,
    StateError,
    UnknownJobError,
    WalqError,
)
from walq.producers.server import ProducerServer

__all__ = ["LOCK_FILE", "RECOVERY_MODES", "STATUS_FILE", "Queue", "wall_now"]

DEFERRED = "deferred, not charged: the retry budget could not pay for this retry yet"
INTERRUPTED = (
    "attempt {n} was interrupted (the owner stopped or the lease expired) and no attempts remain"
)
# Names the owner in the attempt records it writes.
HOST = socket.gethostname()[:255].encode("utf-8", "replace")
RETRY_BACKOFF = Backoff()  # a failed attempt's retry delay when fail() is given none


def wall_now() -> Now:
    """The real clocks."""
    return Now(time.time(), time.monotonic())


class Queue(Administration):
    """A durable job queue in one directory, owned by one process at a time."""

    # The log's class (a seam: walq.testing.plant opens queues whose log has a bug planted).
    _log_class: type[Log] = Log

    # -- opening and closing -------------------------------------------------------------

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
        max_result_bytes: int = DEFAULT_MAX_RESULT,
        keep_results: float = DEFAULT_KEEP_RESULTS,
        lock_timeout: float = 0.0,
        recovery: str = "strict",
        compaction: Policy | bool | None = True,
        checkpoint: CheckpointPolicy | bool = True,
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
        max_result_bytes, keep_results: the largest result a handler may return
        (bytes, encoded) and how many seconds it is kept once the job is done.
        checkpoint: True (the default policy), a checkpoint.Policy, or False:
        when the compactor's thread writes the checkpoint open starts from
        (docs/FORMAT.md); with compaction=False that thread does not run.
        `write_checkpoint()` writes one whatever these say.
        serve: answer walq.connect() producers on the queue's socket and ingest
        their spool (docs/PRODUCERS.md).
        A "redis://..." path opens a RedisQueue instead (docs/REDIS.md).
        """
        if scheme_of(path) is not None:  # a server's URL: that backend (walq.backends)
            return backend_class(path).open(  # type: ignore[no-any-return]
                path, max_pending=max_pending, max_bytes=max_bytes, max_payload=max_payload,
                max_attempts=max_attempts, rng=rng, max_result_bytes=max_result_bytes,
                keep_results=keep_results,
            )  # fmt: skip
        check_options(recovery, max_pending, max_bytes, max_payload)
        keep_results = check_seconds("keep_results", keep_results)
        check_options(recovery, None, None, max_result_bytes)
        lock_timeout = check_seconds("lock_timeout", lock_timeout)
        fs = fs or OsFileSystem()
        path = str(path)
        owner_uid, lock = take_directory(
            fs, path, create=create, trust_dir=trust_dir, lock_timeout=lock_timeout
        )
        try:
            wal = cls._log_class(
                fs, path, segment_size=segment_size, sync=sync, sync_interval=sync_interval
            )
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
            q.max_result_bytes, q.keep_results = max_result_bytes, keep_results
            q.owner_uid = owner_uid
            began = time.monotonic()
            found = q._replay(wal, recovery == "skip")
            q.replayed = {
                "seconds": time.monotonic() - began,
                "jobs": len(q._state),
                "segments": len(wal.segment_paths()),
            }
            log.info(
                "%s: replayed %d segments in %.2f s: %d live jobs",
                path, q.replayed["segments"], q.replayed["seconds"], q.replayed["jobs"],
            )  # fmt: skip
            q.damage, q.lost = found.damage, found.lost
            q.replayed_origins, q.done_seen = found.origins, found.done_seen
        except BaseException:
            lock.release()
            raise
        try:
            if serve:  # first: settling the spool needs origins a compaction may drop
                q._server = ProducerServer(q, admin=q, listen=isinstance(fs, OsFileSystem))
                q._server.start()
            elif q.replayed_origins:
                # No server, but a crashed owner's half-done ingestion is settled all the
                # same, before a compaction drops the origins that say what it enqueued.
                ProducerServer(q, listen=False, poll_interval=None).reconcile()
            cp = q._compactor.checkpointer
            if cp is not None:
                cp.background = checkpoint is not False
                if isinstance(checkpoint, CheckpointPolicy):
                    cp.policy = checkpoint
            if isinstance(compaction, Policy):
                q._compactor.policy = compaction
            if compaction is not False:
                q._compactor.start()
                wal.on_roll = wal.on_half = q._compactor.poke
        except BaseException:
            q.close()  # stops what did start, closes the log, releases the lock
            raise
        return q

    def _replay(self, wal: Log, skip: bool) -> Replayed:
        """Rebuild the state from the log -- from the checkpoint on, if there is a sound one."""
        found = None
        checkpoint = None if skip else checkpoints.read(self.fs, self.path)
        try:
            found = replay(self._state, wal, self.path, self._clock(), skip, checkpoint)
        except checkpoints.CheckpointRejected as exc:
            log.warning("%s: checkpoint ignored, replaying the whole log: %s", self.path, exc)
            self._state = QueueState(default_max_attempts=self._state.default_max_attempts)
            found = replay(self._state, wal, self.path, self._clock(), skip)
        self.checkpoint_opened = found.checkpoint
        if found.checkpoint is not None:  # its locations may carry compaction generations
            c = self._compactor
            c.generation = max(c.generation, ckpt.generations(self._state))
        return found

    def close(self) -> None:
        """Flush, close the files and release the directory (idempotent).

        In a fork() child it only closes the child's copies of the descriptors:
        the parent's socket, lock, buffered records and threads are left alone.
        """
        if self._forked or os.getpid() != self._pid:
            self._forked = self._closed = True
            self._log.close()  # closes the child's descriptors, writes nothing
            self._readers.close()
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
            self._readers.close()
            self._lock_handle.release()

    # -- producing -----------------------------------------------------------------

    def fire_schedule(self, schedule: Schedule) -> list[int]:
        # One firing at a time: the ticks are chosen from the last tick recorded,
        # and recorded with their enqueues (walq.directory.base._add, extra=).
        with self._fire_mu:
            with self._mu:
                now = self._open_now()
                entry = self._state.timed.schedules.get(schedule.name)
            last = None if entry is None else entry[0]
            d = due(schedule.timetable, last, now.wall, schedule.misfire)
            if d.unchanged(last, None if entry is None else entry[1], schedule.spec):
                return []
            note = d.skip_note(schedule.name, schedule.misfire)
            if note:
                log.warning("%s: %s", self.path, note)
            specs = [
                make_spec(schedule.task, schedule.payload, key=tick_key(schedule.name, t),
                          max_payload=self.max_payload)
                for t in d.fire
            ]  # fmt: skip
            assert d.last is not None  # unchanged() says so
            record = ev.Schedule(name=schedule.name, last=d.last, spec=schedule.spec)
            # Not refused for room (max_pending, max_bytes): a schedule adds at most a
            # tick's jobs, and a queue kept full would starve it (docs/SCHEDULES.md).
            return self._add(specs, None, 0.0, extra=lambda ids, now: [record], caps=False)

    def schedules(self) -> list[dict[str, Any]]:
        with self._mu:
            self._check_not_closed()
            items = sorted(self._state.timed.schedules.items())
        return [{"name": n, "last": last, "spec": spec} for n, (last, spec) in items]

    # -- consuming ---------------------------------------------------------------------

    def _claim_many(
        self, n: int, lease: float, timeout: float,
        accept: Callable[[JobInfo], bool | float] | None, tasks: frozenset[str] | None,
    ) -> list[Job]:  # fmt: skip
        n = min(n, IDS_PER_RECORD)  # "up to n": one claim record holds this many
        if tasks is not None:
            accept = _only_tasks(tasks, accept)
        with self._mu:
            now = self._open_now()
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
                    now = self._wait_changed(wait)
                finally:
                    self._waiting_claims -= 1
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
        live: list[JobInfo] = []
        dead = 0
        for info in taken:
            if info.attempts < info.max_attempts:
                live.append(info)
                continue
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
        try:
            built = self._jobs(live, 1)
        except BaseException:
            self._state.untake(taken + [i for i, _ in deferred])
            raise
        started: list[tuple[int, int]] = []
        jobs: list[Job] = []
        for info, job in zip(live, built, strict=True):
            if isinstance(job, CorruptionError):
                jid = info.id
                log.error(
                    "%s; job %d dead-lettered, not delivered", job, jid, extra={"job_id": jid}
                )
                events.append(
                    ev.Fail(id=jid, attempt=info.attempts, dead=True, error=f"[damaged] {job}")
                )
                dead += 1
                continue
            started.append((info.id, job.attempt))
            jobs.append(job)
        records = [(e.rtype, e.encode()) for e in events]
        if started:
            records.append((fmt.CLAIM, ev.Claim(items=tuple(started)).encode()))
        try:
            locs, lsn = self._log.append(records)
        except BaseException:
            self._state.untake(taken + [i for i, _ in deferred])
            raise
        for event, loc in zip(events, locs, strict=False):
            self._state.apply(event, loc, now)
        # The Claim record's effect and each job's lease, in one pass.
        self._state.start_taken(started, now.mono + lease)
        claims = self._claims
        for jid, attempt in started:
            claims[jid] = attempt
        for info in taken:
            if info.attempts >= info.max_attempts:
                claims.pop(info.id, None)  # dead-lettered just now
        self.counters["claimed"] += len(started)
        self.counters["dead_lettered"] += dead
        return lsn, jobs

    def _job(self, jid: int, attempt: int) -> Job:
        """The job as a handler sees it, read back from its record (lock held).

        CorruptionError (naming the file and offset) if it does not read back.
        """
        info = self._state.info(jid)
        job = self._jobs([info], attempt - info.attempts)[0]
        if isinstance(job, CorruptionError):
            raise job
        return job

    def _jobs(self, infos: Sequence[JobInfo], bump: int) -> list[Job | CorruptionError]:
        """The jobs `infos` as a handler sees them, at attempt `attempts + bump` (lock held).

        Their records are read in runs (one pread for records next to each
        other), each checked. A job whose record, event or payload does not
        decode -- bytes a checksum passed but that are not what walq wrote (a
        foreign write) -- is its CorruptionError, naming the file and offset:
        damage is never delivered. An OSError (EMFILE, EIO) is raised.
        """
        records = self._readers.read_many([info.loc for info in infos])
        out: list[Job | CorruptionError] = []
        fields = ev.claim_fields
        for info, record in zip(infos, records, strict=True):
            if isinstance(record, CorruptionError):
                out.append(record)
                continue
            try:
                task, kind, data, key, priority, created = fields(
                    record.rtype, record.body, info.id
                )
                after = self._state.after_of(info.id)
                parents = None
                if after is not None:
                    wall = self._clock().wall
                    parents = {p: self._kept_result(p, wall) for p in after[0]}
                out.append(
                    build_job(
                        id=info.id,
                        task=task,
                        kind=kind,
                        data=data,
                        attempt=info.attempts + bump,
                        key=key,
                        priority=priority,
                        max_attempts=info.max_attempts,
                        enqueued_at=created,
                        parents=parents,
                    )
                )
            except (ev.BadEvent, ValueError, RecursionError) as exc:
                path = self._segment_path(info.loc.seg)
                out.append(CorruptionError(path, info.loc.offset, f"job {info.id}: {exc}"))
        return out

    def _ack_many(
        self,
        job_ids: Sequence[int],
        attempts: Sequence[int] | None,
        sync: bool | None,
        strict: bool,
        outputs: Sequence[Output | None] | None = None,
        *,
        ran: Sequence[Ran] | None = None,
    ) -> list[tuple[int, StateError]]:
        with self._mu:
            self._check_open()
            claims = self._claims
            if attempts is None:
                pairs = [(jid, claims.get(jid)) for jid in job_ids]
            else:
                if len(attempts) != len(job_ids):
                    raise ValueError("job_ids and attempts differ in length")
                pairs = [
                    (jid, a if a is not None else claims.get(jid))
                    for jid, a in zip(job_ids, attempts, strict=True)
                ]
            ids, refused = self._state.held(pairs)
            if refused and strict:
                raise refused[0][1]
            finished: list[tuple[int, Output]] = []
            if outputs is not None:
                by_id = {j: o for j, o in zip(job_ids, outputs, strict=True) if o is not None}
                finished = [(jid, by_id[jid]) for jid in ids if jid in by_id]
                ids = [jid for jid in ids if jid not in by_id]
            if not ids and not finished:
                return refused
            readied = self._state.readied
            how = None
            if ran is not None:  # how the acked attempts ran: in the acks' own append
                held = {jid for jid, _ in refused} if refused else ()
                how = _attempt_body([
                    (jid, a or 0, *r) for (jid, a), r in zip(pairs, ran, strict=True)
                    if jid not in held
                ])  # fmt: skip
            lsn = self._record_acks(ids, how if not finished else None) if ids else None
            if finished:
                lsn = self._record_finishes(finished, how)
            woke = self._state.readied != readied or bool(finished)
        if lsn is not None:
            self._commit(lsn, sync)
        if woke:
            self._wake()
        return refused

    def _record_finishes(
        self, finished: list[tuple[int, Output]], how: bytes | None = None
    ) -> int | None:
        """Write one finish record per job: its ack, result and follow-up jobs (lock held).

        (A seam: walq.testing.plant's forget-ack writes nothing and returns None.)
        """
        now = self._clock()
        specs: list[JobSpec] = [spec for _, out in finished for spec in out.follow]
        ids, fresh = self._assign(specs, now.wall)
        first = self._state.next_id
        seen: set[int] = set()
        events: list[ev.Event] = []
        at = 0
        for jid, out in finished:
            children = []
            for spec in out.follow:
                cid = ids[at]
                at += 1
                if cid < first or cid in seen:
                    continue  # coalesced with an unfinished job holding its key
                seen.add(cid)
                children.append(ev.Enqueue(
                    id=cid, task=spec.task, payload=spec.data, kind=spec.kind, key=spec.key,
                    priority=spec.priority, max_attempts=spec.max_attempts,
                    due=now.wall + spec.delay if spec.delay else 0.0, created=now.wall,
                ))  # fmt: skip
            keep = now.wall + self.keep_results if out.kind != ev.RESULT_NONE else 0.0
            events.append(ev.Finish(id=jid, keep_until=keep, result_kind=out.kind,
                                    result=out.data, children=tuple(children)))  # fmt: skip
        done = [jid for jid, _ in finished]
        if self._state.timed.unique:
            events += self._keeps(done, now)  # unique_for: in the same write, after the finish
        self._forget(done)
        lsn = self._write(events, now, () if how is None else ((fmt.ATTEMPT, how),))
        self.counters["acked"] += len(finished)
        self.counters["enqueued"] += len(fresh)
        self.counters["coalesced"] += len(specs) - len(fresh)
        self._changed.notify_all()
        return lsn

    def _record_acks(self, ids: list[int], how: bytes | None = None) -> int | None:
        """Write the ack records of held jobs `ids` and finish them (lock held); the lsn.

        (A seam: walq.testing.plant's forget-ack writes nothing and returns None.)
        """
        self._forget(ids)
        records = [(fmt.ACK, ev.Ack(ids=chunk).encode()) for chunk in chunks(ids)]
        keeps = self._keeps(ids, self._clock()) if self._state.timed.unique else []
        records += [(k.rtype, k.encode()) for k in keeps]  # unique_for: in the same write
        if how is not None:
            records.append((fmt.ATTEMPT, how))
        locs, lsn = self._log.append(records)
        self._state.finish(ids, self._clock())  # the Ack records' effect, in one pass
        first = len(records) - len(keeps) - (how is not None)
        for keep, loc in zip(keeps, locs[first : first + len(keeps)], strict=True):
            self._state.apply(keep, loc, self._clock())
        self.counters["acked"] += len(ids)
        self._changed.notify_all()
        return lsn

    def _keeps(self, ids: list[int], now: Now) -> list[ev.Keep]:
        """Keep records for the keys of jobs `ids` that asked to be remembered (lock held)."""
        wall = now.wall
        out: list[ev.Keep] = []
        unique = self._state.timed.unique
        for jid in ids:
            seconds = unique.get(jid)
            key = self._state.key_of(jid) if seconds else None
            if seconds and key is not None:
                out.append(ev.Keep(id=jid, key=key, until=wall + seconds))
        return out

    def _fail(
        self, job_id: int, error: str, permanent: bool,
        attempt: int | None, delay: float | None, sync: bool | None,
        *, ran: Ran | None = None,
    ) -> str:  # fmt: skip
        with self._mu:
            self._check_open()
            info = self._state.check_holder(job_id, self._own(job_id, attempt))
            now = self._clock()
            dead = permanent or info.attempts >= info.max_attempts
            if delay is None:
                delay = RETRY_BACKOFF.delay(info.attempts, self._rng)
            event = ev.Fail(
                id=job_id,
                attempt=info.attempts,
                dead=dead,
                due=0.0 if dead else now.wall + delay,
                error=clip_error(str(error)),
            )
            readied = self._state.readied
            how = _how(job_id, info.attempts, ran)
            lsn = self._write([event], now, how)
            self._forget([job_id])
            self.counters["failed"] += 1
            self.counters["dead_lettered" if dead else "retried"] += 1
            self._changed.notify_all()
        self._commit(lsn, sync)
        if not dead or self._state.readied != readied:
            self._wake()
        return "dead" if dead else "scheduled"

    def _release(
        self, job_id: int, attempt: int | None, sync: bool | None, ran: Ran | None
    ) -> None:
        with self._mu:
            self._check_open()
            info = self._state.check_holder(job_id, self._own(job_id, attempt))
            event = ev.Release(items=((job_id, info.attempts - 1),))
            how = _how(job_id, info.attempts, ran)
            lsn = self._write([event], self._clock(), how)
            self._forget([job_id])
            self._changed.notify_all()
        self._commit(lsn, sync)
        self._wake()

    def extend(self, job_id: int, lease: float, *, attempt: int | None = None) -> None:
        lease = check_seconds("lease", lease, positive=True)
        with self._mu:
            self._check_open()
            self._state.extend(job_id, self._own(job_id, attempt), self._clock().mono + lease)

    def _extend_many(
        self, job_ids: Sequence[int], lease: float, attempts: Sequence[int] | None
    ) -> list[tuple[int, WalqError]]:
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


def _attempt_body(items: Sequence[tuple[int, int, float, float, int]]) -> bytes:
    """The attempt record of (job id, attempt, started, seconds, pid) items, by this process."""
    return ev.encode_attempt(HOST, os.getpid(), items)


def _how(job_id: int, attempt: int, ran: Ran | None) -> tuple[tuple[int, bytes], ...]:
    """The attempt record of one job's outcome, as an extra record for _write (none: ()).
    `ran` was checked by the interface (QueueBackend.fail, release)."""
    if ran is None:
        return ()
    return ((fmt.ATTEMPT, _attempt_body([(job_id, attempt, *ran)])),)


def _only_tasks(
    allowed: frozenset[str], accept: Callable[[JobInfo], bool | float] | None
) -> Callable[[JobInfo], bool | float]:
    """An accept filter that refuses jobs of other tasks, then asks `accept`."""

    def only(info: JobInfo) -> bool | float:
        if info.task not in allowed:
            return False
        return True if accept is None else accept(info)

    return only
