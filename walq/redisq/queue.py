"""RedisQueue: the queue API on a Redis server, for workers on many hosts.

Every state change is one Lua script (walq/redisq/lua.py), so it is one
atomic step on the server, and each checks the job's current state (and, for
a result, the attempt and claim that hold it) before it changes anything: a
worker whose lease expired cannot ack a job that was rescued and handed to
another, and a rescue can never flip a finished job back. Time is the
server's (TIME inside the scripts), so the hosts' clocks do not matter.
docs/REDIS.md has the data model, the steps and what differs from the file queue.

redis-py is an optional extra (`pip install 'walq[redis]'`), imported only when used.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import socket
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

from walq import forks
from walq.backend import QueueBackend
from walq.core.events import PAYLOAD_BYTES, PAYLOAD_JSON, RESULT_NONE
from walq.core.job import DeadJob, Job, Ran, build_job
from walq.core.jobspec import (
    DEFAULT_KEEP_RESULTS,
    DEFAULT_MAX_PAYLOAD,
    DEFAULT_MAX_RESULT,
    MAX_ATTEMPTS,
    Extra,
    JobSpec,
    Output,
    check_listing,
    check_seconds,
    check_task,
    decode_result,
    encode_payload,
)
from walq.core.retry import Backoff
from walq.core.schedule import Schedule, due, tick_key
from walq.core.state import JobInfo
from walq.errors import (
    ArgumentError,
    BackendError,
    ClosedError,
    JobCancelled,
    JobFailed,
    LeaseLost,
    QueueFull,
    ResultTimeout,
    StateError,
    UnknownJobError,
    WalqError,
)
from walq.redisq import connection, lua
from walq.redisq.claims import RESERVATION, Held, claim_accepted
from walq.redisq.connection import text as _text
from walq.redisq.events import Events
from walq.redisq.gates import SharedGates
from walq.redisq.lua import check_job_id
from walq.redisq.lua import ms as _ms
from walq.redisq.records import dead_rows, decode_or_raw, pairs, shape_stats
from walq.redisq.server import check_server
from walq.redisq.url import CLUSTER, SENTINEL, key_prefix, parse_url

log = logging.getLogger("walq.redisq")

# Options of the file queue that mean nothing here (accepted, so that
# Queue.open can pass its arguments through unchanged).
FILE_ONLY_OPTIONS = frozenset(
    {
        "sync",
        "sync_interval",
        "segment_size",
        "min_free_bytes",
        "lock_timeout",
        "recovery",
        "compaction",
        "fs",
        "clock",
    }
)
_T = TypeVar("_T")

_STATE_ERRORS: dict[bytes, type[StateError]] = {b"state": StateError, b"lease": LeaseLost}
_ERRORS: dict[bytes, type[WalqError]] = {b"unknown": UnknownJobError, **_STATE_ERRORS}


class RedisQueue(QueueBackend):
    """The queue API on a Redis server: many processes on many hosts share one queue."""

    def __init__(
        self,
        client: Any,
        *,
        prefix: str,  # P: key_prefix(the queue's name)
        path: str,
        max_pending: int | None,
        max_bytes: int | None,
        max_payload: int,
        max_attempts: int,
        rng: random.Random,
    ) -> None:
        self._client = client
        self.prefix = prefix
        self.path = path
        self.max_pending = max_pending
        self.max_bytes = max_bytes
        self.max_payload = max_payload
        self.max_result_bytes = DEFAULT_MAX_RESULT
        self.keep_results = DEFAULT_KEEP_RESULTS
        self.default_max_attempts = max_attempts
        self._rng = rng
        self._backoff = Backoff()  # the default retry delay, applied by fail.lua
        self._scripts = lua.register(client)
        self._task_max: dict[str, int] = {}
        self._defaults_json = "{}"
        self._held = Held()
        self._origin = uuid.uuid4().hex[:12]
        self._closed = False
        self._min_replicas = 0  # WAIT for this many replicas after every state change
        self._replica_timeout_ms = 5000
        self._reconnect = connection.RECONNECT_SINGLE
        self._events = Events(
            client, f"{prefix}:events", path=path, origin=self._origin, rng=rng, forget=self._forget
        )
        self.server_version = ""
        self.durable: bool | None = None
        self.persistence: dict[str, str] = {}
        self.ready_listeners = self._events.ready_listeners
        self.cancel_listeners = self._events.cancel_listeners
        # redis-py's connections and this object's leases and listener are the
        # opening process's: a fork() child refuses (walq.forks).
        self._forked = False
        self._pid = forks.track(self)

    def _after_fork_in_child(self) -> None:
        self._forked = True
        self._held.after_fork_in_child()
        self._events.after_fork_in_child()

    # -- opening -------------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        url: str,
        *,
        max_pending: int | None = None,
        max_bytes: int | None = None,
        max_payload: int = DEFAULT_MAX_PAYLOAD,
        max_attempts: int = 20,
        max_result_bytes: int = DEFAULT_MAX_RESULT,
        keep_results: float = DEFAULT_KEEP_RESULTS,
        require_durable: bool | None = None,
        rng: random.Random | None = None,
        socket_timeout: float = 30.0,
        create: bool = True,
        min_replicas: int | None = None,
        replica_timeout: float | None = None,
        reconnect_timeout: float | None = None,
        **file_options: Any,
    ) -> RedisQueue:
        """Connect to the queue at `url` (redis://[:password@]host:port/db?prefix=NAME,
        redis+cluster://host:port,host:port/?prefix=NAME, or
        redis+sentinel://host:port,host:port/SERVICE?prefix=NAME: docs/REDIS.md).

        The server's persistence is read (CONFIG GET): weaker than `appendonly
        yes` and `appendfsync always` warns (DurabilityWarning), or raises
        DurabilityError if `require_durable` (or `?require_durable=1`).
        create=False: NotAQueueError if no queue lives under the prefix yet
        (the CLI's read-only commands change nothing).
        min_replicas=N (or `?min_replicas=N`): every state change waits (WAIT)
        until N replicas have it, up to replica_timeout seconds (default 5),
        else BackendError: an acknowledged change then survives a failover.
        reconnect_timeout: how long a read, or a write the server surely did
        not run, is tried again (default 30 s behind Sentinel or on a cluster,
        to ride out a failover; 0.75 s on one server).
        The file queue's options (sync, segment_size, ...) are accepted and
        have no effect: durability is the server's configuration.
        """
        unknown = set(file_options) - FILE_ONLY_OPTIONS
        if unknown:
            raise ArgumentError(f"unknown options for a Redis queue: {', '.join(sorted(unknown))}")
        for name, cap in (("max_pending", max_pending), ("max_bytes", max_bytes)):
            if cap is not None and (isinstance(cap, bool) or not isinstance(cap, int) or cap < 1):
                raise ArgumentError(f"{name} must be a positive integer or None")
        if not 1 <= max_payload <= 512 << 20:
            raise ArgumentError("max_payload must be 1 byte .. 512 MiB")
        if isinstance(max_attempts, bool) or not 1 <= max_attempts <= MAX_ATTEMPTS:
            raise ArgumentError(f"max_attempts must be 1..{MAX_ATTEMPTS}")
        target = parse_url(url)
        replicas = (target.min_replicas or 0) if min_replicas is None else min_replicas
        if isinstance(replicas, bool) or not isinstance(replicas, int) or replicas < 0:
            raise ArgumentError(f"min_replicas must be a whole number, not {replicas!r}")
        if replicas and target.kind == CLUSTER:
            raise ArgumentError(
                f"{target.shown}: min_replicas is not supported on a cluster "
                "(use Sentinel, or one server with replicas)"
            )
        wait_s = (
            check_seconds(
                "replica_timeout",
                target.replica_timeout if replica_timeout is None else replica_timeout,
                positive=True,
            )
            if (replica_timeout is not None or target.replica_timeout is not None)
            else 5.0
        )
        ha = target.kind in (CLUSTER, SENTINEL)
        if reconnect_timeout is None:
            reconnect_timeout = connection.RECONNECT_HA if ha else connection.RECONNECT_SINGLE
        reconnect = check_seconds("reconnect_timeout", reconnect_timeout)
        client = connection.connect(target, socket_timeout)
        q = cls(
            client,
            prefix=key_prefix(target.prefix),
            path=target.shown,
            max_pending=max_pending,
            max_bytes=max_bytes,
            max_payload=max_payload,
            max_attempts=max_attempts,
            rng=rng or random.Random(),
        )
        q._min_replicas, q._replica_timeout_ms, q._reconnect = replicas, _ms(wait_s), reconnect
        try:
            server = check_server(
                client,
                target.shown,
                target.prefix,
                require_durable=target.require_durable
                if require_durable is None
                else require_durable,
                create=create,
                kind=target.kind,
                min_replicas=replicas,
                reconnect=reconnect,
            )
        except BaseException:
            client.close()
            raise
        q.server_version, q.durable, q.persistence = server
        q.max_result_bytes = max_result_bytes
        q.keep_results = check_seconds("keep_results", keep_results)
        return q

    # -- calling the server ----------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._forked:
            raise forks.error(self.path, self._pid)
        if self._closed:
            raise ClosedError(f"{self.path}: the queue is closed")

    def _run(self, name: str, *args: Any, write: bool = True) -> Any:
        """Run one script (a write is never retried: its outcome may be unknown).

        Its one declared key is P, the queue's hash tag: every key it touches
        is P:..., in P's Cluster slot. ARGV[1] repeats P.
        """
        self._check_open()
        script = self._scripts[name]
        keys, argv = [self.prefix], [self.prefix, *args]
        if not lua.SCRIPTS[name].fits(len(argv)):
            raise AssertionError(f"script {name} called with {len(argv)} arguments")
        if write and self._min_replicas:
            return self._write(lambda c: self._replicated(script, keys, argv, c))
        return (
            self._write(lambda c: script(keys=keys, args=argv))
            if write
            else self._read(lambda c: script(keys=keys, args=argv))
        )

    def _replicated(self, script: Any, keys: list[str], argv: list[Any], client: Any) -> Any:
        """Run `script`, then WAIT on the same connection until min_replicas have it."""
        pipe = client.pipeline(transaction=False)
        script(keys=keys, args=argv, client=pipe)
        pipe.execute_command("WAIT", self._min_replicas, self._replica_timeout_ms)
        reply, acked = pipe.execute()
        if int(acked) < self._min_replicas:
            raise BackendError(
                f"{self.path}: made on the primary, but {acked} of {self._min_replicas} "
                f"replicas confirmed it within {self._replica_timeout_ms / 1000:g} s "
                "(a failover now may lose it)"
            )
        return reply

    def _write(self, step: Callable[[Any], _T]) -> _T:
        if self._forked:  # every server call: a child never uses the parent's connections
            raise forks.error(self.path, self._pid)
        return connection.write(self._client, self.path, step, self._reconnect)

    def _read(self, step: Callable[[Any], _T]) -> _T:
        if self._forked:  # every server call: a child never uses the parent's connections
            raise forks.error(self.path, self._pid)
        return connection.read(self._client, self.path, step, self._reconnect)

    @staticmethod
    def _raise(reply: Sequence[Any], prefix: str = "") -> None:
        """Raise the error a script replied with: [b'err', kind, message]."""
        kind, message = reply[1], _text(reply[2])
        if kind == b"full":
            raise QueueFull(f"{prefix}{message}")
        raise _ERRORS[kind](message)

    # -- producing ---------------------------------------------------------------------------

    def _add(
        self, items: Sequence[JobSpec], sync: bool | None, timeout: float, unique_for: float = 0.0
    ) -> list[int]:
        """`sync` means nothing here: the server's appendfsync decides; a full queue is polled."""
        timeout = check_seconds("timeout", timeout)
        if not items:
            self._check_open()
            return []
        args: list[Any] = [
            "" if self.max_pending is None else self.max_pending,
            "" if self.max_bytes is None else self.max_bytes,
            _ms(unique_for),
            len(items),
        ]
        for it in items:
            args += [it.task, it.kind, it.data, "1" if it.key is not None else "0", it.key or ""]
            args += [_ms(it.delay), it.priority, it.max_attempts]
        deadline = time.monotonic() + timeout
        pause = 0.01
        while True:
            reply = self._run("enqueue", *args)
            if reply[0] == b"ok":
                return [int(i) for i in reply[1]]
            left = deadline - time.monotonic()
            if reply[1] != b"full" or left <= 0:
                self._raise(reply, f"{self.path}: ")
            time.sleep(min(pause, left))  # room comes from another host: poll, gently
            pause = min(pause * 2, 0.25)

    def fire_schedule(self, schedule: Schedule) -> list[int]:
        """The ticks are chosen from the last tick read here; the script skips any another
        host enqueued meanwhile, so each tick is enqueued once across hosts."""
        entry = {row["name"]: row for row in self.schedules()}.get(schedule.name)
        last = None if entry is None else entry["last"]
        d = due(schedule.timetable, last, time.time(), schedule.misfire)
        if d.unchanged(last, None if entry is None else entry["spec"], schedule.spec):
            return []
        note = d.skip_note(schedule.name, schedule.misfire)
        if note:
            log.warning("%s: %s", self.path, note)
        kind, data = encode_payload(schedule.payload, self.max_payload)
        args: list[Any] = [
            # No caps: a schedule's ticks are not refused for room (docs/SCHEDULES.md).
            "", "",
            schedule.name, repr(d.last), schedule.spec, check_task(schedule.task), kind, data, 0, 0,
        ]  # fmt: skip
        for tick in d.fire:
            args += [repr(tick), tick_key(schedule.name, tick)]
        reply = self._run("tick", *args)
        if reply[0] != b"ok":
            self._raise(reply, f"{self.path}: ")
        return [int(i) for i in reply[1]]

    def schedules(self) -> list[dict[str, Any]]:
        rows = self._run("schedules", write=False)
        return [
            {"name": _text(n), "last": float(last), "spec": _text(spec)} for n, last, spec in rows
        ]

    # -- consuming -------------------------------------------------------------------------------

    def _claim_many(
        self, n: int, lease: float, timeout: float,
        accept: Callable[[JobInfo], bool | float] | None, tasks: frozenset[str] | None,
    ) -> list[Job]:  # fmt: skip
        """With `accept`, candidates are reserved on the server while it is asked about them."""
        lease_ms = max(1, _ms(lease))
        only = None if tasks is None else json.dumps(sorted(tasks))
        self._check_open()
        deadline = time.monotonic() + timeout
        while True:
            seen = self._events.seq
            if accept is None:
                rows, moved = self._claim_plain(n, lease_ms, only)
            else:
                rows, moved = claim_accepted(self, n, lease_ms, accept, only)
            if rows:
                jobs = [job for job in map(self._job, rows) if job is not None]
                if jobs:
                    return jobs
                continue
            if moved:
                continue  # some were dead-lettered or deferred: look again
            left = deadline - time.monotonic()
            if left <= 0:
                return []
            self._wait_ready(seen, left)

    def _claim_plain(self, n: int, lease_ms: int, only: str | None) -> tuple[list[Any], int]:
        reply = self._run(
            "claim", n, self._defaults_json, self.default_max_attempts, lease_ms, only or ""
        )
        return list(reply[0]), int(reply[1])

    def _job(self, row: Sequence[Any]) -> Job | None:
        """The claimed job; None if its payload cannot be decoded (then it is dead)."""
        jid, task, kind, data, attempt, key, priority, created, gen, maxa, after = row
        self._held.add(int(jid), int(attempt), int(gen))
        parents = None
        if after:
            ids = [int(p) for p in _text(after).split(",")]
            parents = {
                p: decode_result(int(r[1]), bytes(r[2])) if r[0] == b"done" else None
                for p, r in zip(ids, self._results_of_gone(ids), strict=True)
            }
        try:
            return build_job(
                id=int(jid),
                task=_text(task),
                kind=int(kind),
                data=bytes(data),
                attempt=int(attempt),
                key=None if key is None else _text(key),
                priority=int(priority),
                max_attempts=int(maxa),
                enqueued_at=int(created) / 1000.0,
                parents=parents,
            )
        except ValueError as exc:  # written by something other than walq
            why = f"payload is not valid JSON ({exc}): damage is never delivered as data"
            log.error("job %s: %s", jid, why)
            self.fail(int(jid), why, permanent=True, attempt=int(attempt))
            return None

    def _claims_args(
        self, head: list[Any], job_ids: Sequence[int], attempts: Sequence[int] | None
    ) -> list[Any]:
        """A many-job script's arguments: `head`, then each job with the claim it names."""
        held: Sequence[int | None] = attempts if attempts is not None else [None] * len(job_ids)
        args = list(head)
        for jid, attempt in zip(job_ids, held, strict=True):
            jid = check_job_id(jid)  # noqa: PLW2901
            args += [jid, *self._held.token(jid, attempt)]
        return args

    def _forget(self, job_ids: Iterable[int]) -> None:
        self._held.forget(job_ids)

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
        """Jobs with a result or follow-up jobs are finished one script each (finish.lua).

        `ran` is ignored: a server's queue keeps no history of a job's attempts.
        """
        if outputs is not None and any(o is not None for o in outputs):
            return self._finish_many(job_ids, attempts, strict, outputs)
        args = self._claims_args(["1" if strict else "0"], job_ids, attempts)
        if len(args) == 1:
            self._check_open()
            return []
        reply = self._run("ack", *args)
        if reply[0] != b"ok":
            self._raise(reply)
        self._forget(job_ids)
        return [(int(jid), _STATE_ERRORS[kind](_text(msg))) for jid, kind, msg in reply[1]]

    def _finish_many(
        self,
        job_ids: Sequence[int],
        attempts: Sequence[int] | None,
        strict: bool,
        outputs: Sequence[Output | None],
    ) -> list[tuple[int, StateError]]:
        refused: list[tuple[int, StateError]] = []
        for i, jid in enumerate(job_ids):
            jid = check_job_id(jid)  # noqa: PLW2901
            attempt = None if attempts is None else attempts[i]
            out = outputs[i] or Output(RESULT_NONE, b"", ())
            args: list[Any] = [jid, *self._held.token(jid, attempt), _ms(self.keep_results),
                               out.kind, out.data]  # fmt: skip
            for it in out.follow:
                args += [it.task, it.kind, it.data, "1" if it.key is not None else "0"]
                args += [it.key or "", _ms(it.delay), it.priority, it.max_attempts]
            reply = self._run("finish", *args)
            if reply[0] != b"ok":
                if strict or reply[1] not in _STATE_ERRORS:
                    self._raise(reply)
                refused.append((jid, _STATE_ERRORS[reply[1]](_text(reply[2]))))
                continue
            self._forget([jid])
        return refused

    def _add_after(
        self,
        spec: JobSpec,
        parents: tuple[int, ...],
        policy: int,
        sync: bool | None,
        unique_for: float = 0.0,
    ) -> int:
        args: list[Any] = [
            "" if self.max_pending is None else self.max_pending,
            "" if self.max_bytes is None else self.max_bytes,
            policy,
            spec.task, spec.kind, spec.data, "1" if spec.key is not None else "0", spec.key or "",
            _ms(spec.delay), spec.priority, spec.max_attempts, _ms(unique_for),
            *parents,
        ]  # fmt: skip
        reply = self._run("after", *args)
        if reply[0] != b"ok":
            self._raise(reply, f"{self.path}: ")
        return int(reply[1])

    def _add_mixed(
        self,
        specs: Sequence[JobSpec],
        extras: Mapping[int, Extra],
        sync: bool | None,
        timeout: float,
    ) -> list[int]:
        """One script per run of items alike (plain, or the same unique_for) and per
        dependent, in order, once every parent is known to exist."""
        for wants in extras.values():
            for parent in wants.parents:
                self.status(parent)  # UnknownJobError before anything is added

        def unique_for(i: int) -> float | None:
            """An item's unique_for (0.0: none); None for a dependent (a script of its own)."""
            wants = extras.get(i)
            if wants is None:
                return 0.0
            return None if wants.parents else wants.unique_for

        ids: list[int] = []
        i = 0
        while i < len(specs):
            uf = unique_for(i)
            if uf is None:
                wants = extras[i]
                ids.append(self._add_after(specs[i], wants.parents, wants.policy, sync,
                                           wants.unique_for))  # fmt: skip
                i += 1
                continue
            j = i + 1
            while j < len(specs) and unique_for(j) == uf:
                j += 1
            ids += self._add(specs[i:j], sync, timeout, uf)
            i = j
        return ids

    def _results(self, job_ids: Sequence[int]) -> list[Sequence[Any]]:
        """What result.lua says of each job (UnknownJobError for one that never was)."""
        reply = self._run("result", *job_ids, write=False)
        if reply[0] != b"ok":
            self._raise(reply)
        return list(reply[1])

    def _results_of_gone(self, job_ids: Sequence[int]) -> list[Sequence[Any]]:
        """result.lua's rows for parents; one purged since reads as no result."""
        try:
            return self._results(job_ids)
        except UnknownJobError:
            return [self._results([p])[0] if self._exists(p) else [b"gone"] for p in job_ids]

    def _exists(self, job_id: int) -> bool:
        try:
            self._results([job_id])
        except UnknownJobError:
            return False
        return True

    def result(self, job_id: int, timeout: float | None = None) -> Any:
        """Polls (every 10 ms, backing off to half a second) while the job is unfinished."""
        jid = check_job_id(job_id)
        wait = None if timeout is None else check_seconds("timeout", timeout)
        deadline = None if wait is None else time.monotonic() + wait
        pause = 0.01
        while True:
            (row,) = self._results([jid])
            what = row[0]
            if what == b"done":
                return decode_result(int(row[1]), bytes(row[2]))
            if what == b"dead":
                raise JobFailed(jid, _text(row[1]))
            if what == b"cancelled":
                raise JobCancelled(jid, _text(row[1]))
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise ResultTimeout(f"{self.path}: job {jid} is {_text(row[1])} after {wait:g} s")
            time.sleep(pause if left is None else min(pause, left))
            pause = min(pause * 2, 0.5)

    def _fail(
        self, job_id: int, error: str, permanent: bool,
        attempt: int | None, delay: float | None, sync: bool | None,
        *, ran: Ran | None = None,
    ) -> str:  # fmt: skip
        """The default delay is `Backoff`'s, drawn here and applied by fail.lua (`ran`:
        ignored, see _ack_many)."""
        jid = check_job_id(job_id)
        reply = self._run(
            "fail",
            jid,
            *self._held.token(jid, attempt),
            str(error),
            "1" if permanent else "0",
            "" if delay is None else _ms(delay),
            repr(self._rng.random()),
            self._defaults_json,
            self.default_max_attempts,
            repr(float(self._backoff.base)),
            repr(float(self._backoff.cap)),
        )
        if reply[0] != b"ok":
            self._raise(reply)
        self._forget([jid])
        return _text(reply[1])

    def _release(
        self, job_id: int, attempt: int | None, sync: bool | None, ran: Ran | None
    ) -> None:
        jid = check_job_id(job_id)  # `ran` was checked, and is not kept here (see _ack_many)
        reply = self._run("release", jid, *self._held.token(jid, attempt))
        if reply[0] != b"ok":
            self._raise(reply)
        self._forget([jid])

    def extend(self, job_id: int, lease: float, *, attempt: int | None = None) -> None:
        lease_ms = max(1, _ms(check_seconds("lease", lease, positive=True)))
        jid = check_job_id(job_id)
        reply = self._run("extend", jid, *self._held.token(jid, attempt), lease_ms)
        if reply[0] != b"ok":
            self._raise(reply)

    def _extend_many(
        self, job_ids: Sequence[int], lease: float, attempts: Sequence[int] | None
    ) -> list[tuple[int, WalqError]]:
        lease_ms = max(1, _ms(lease))
        args = self._claims_args([lease_ms], job_ids, attempts)
        if len(args) == 1:
            self._check_open()
            return []
        reply = self._run("extend_many", *args)
        return [(int(jid), _ERRORS[kind](_text(msg))) for jid, kind, msg in reply]

    # -- administration ------------------------------------------------------------------------

    def status(self, job_id: int) -> str:
        """A due job or an expired lease is settled first, as a claim would."""
        reply = self._run("status", check_job_id(job_id))
        if reply[0] != b"ok":
            self._raise(reply)
        return _text(reply[1])

    def cancel(self, job_id: int, *, sync: bool | None = None) -> bool:
        """A running job's worker hears of it on every host (pub/sub)."""
        jid = check_job_id(job_id)
        deadline = time.monotonic() + RESERVATION + 1.0
        while True:
            reply = self._run("cancel", jid, self._origin)
            if reply[0] != b"busy" or time.monotonic() > deadline:
                break
            time.sleep(0.005)  # a claim is deciding about it right now: a moment
        if reply[0] == b"busy":
            raise StateError(f"job {jid} stayed reserved by a claim; try again")
        if reply[0] != b"ok":
            self._raise(reply)
        if int(reply[2]):
            self._forget([jid])
            self._events.cancelled(jid)
        return bool(int(reply[1]))

    def dead_jobs(self) -> list[DeadJob]:
        return [
            DeadJob(
                id=d["id"],
                task=d["task"],
                payload=decode_or_raw(d["kind"], d["payload"]),
                attempts=d["attempts"],
                error=d["error"],
                key=d["key"],
            )
            for d in dead_rows(self, None)
        ]

    def requeue(self, job_id: int, *, sync: bool | None = None) -> None:
        reply = self._run("requeue", check_job_id(job_id))
        if reply[0] != b"ok":
            self._raise(reply)

    def purge(self, job_ids: Iterable[int] | None = None, *, sync: bool | None = None) -> int:
        """All of them in chunks of 1,000: one script must stay short."""
        if job_ids is not None:
            ids = [check_job_id(j) for j in job_ids]
            if not ids:
                self._check_open()
                return 0
            reply = self._run("purge", "ids", *ids)
            if reply[0] != b"ok":
                self._raise(reply)
            return int(reply[1])
        total = 0
        while True:  # in chunks: one script must stay short
            n = int(self._run("purge", "all", 1000)[1])
            total += n
            if n < 1000:
                return total

    def pause(self, task: str, *, sync: bool | None = None) -> bool:
        """Kept in the server's set of paused tasks, which every claim script reads."""
        return bool(int(self._run("pause", check_task(task), "1")[1]))

    def resume(self, task: str, *, sync: bool | None = None) -> bool:
        return bool(int(self._run("pause", check_task(task), "0")[1]))

    def paused(self) -> list[str]:
        return sorted(_text(t) for t in self._run("paused", write=False))

    def job_detail(self, job_id: int) -> dict[str, Any]:
        jid = check_job_id(job_id)
        reply = self._run("detail", jid, write=False)
        if reply[0] == b"err":
            self._raise(reply)
        if reply[0] == b"gone":
            gone = {"id": jid, "status": _text(reply[1])}
            if len(reply) > 2 and reply[2] is not None and gone["status"] == "cancelled":
                gone["cause"] = _text(reply[2])
            return gone
        s, task, attempts, own_max, prio, key, error, due, deadline = reply[1]
        now = int(reply[2])
        out: dict[str, Any] = {
            "id": jid,
            "status": _text(s),
            "task": _text(task),
            "attempts": int(attempts or 0),
            "max_attempts": int(own_max or 0) or self._max_for(_text(task)),
            "priority": int(prio or 0),
            "key": None if key is None else _text(key),
            "error": None if error is None or _text(s) != "dead" else _text(error),
        }
        if due is not None and _text(s) == "scheduled":
            out["due_in"] = max(0.0, (int(due) - now) / 1000)
        if deadline is not None and _text(s) == "running":
            out["lease_left"] = max(0.0, (int(deadline) - now) / 1000)
        return out

    def find(self, key: str) -> int | None:
        held = self._run("find", key, write=False)
        return None if held is None else int(held)

    def jobs(
        self,
        state: str | None = None,
        task: str | None = None,
        *,
        limit: int = 100,
        after: int = 0,
    ) -> list[dict[str, Any]]:
        """Read from the sets of the states asked for, in one script (an operator's listing)."""
        check_listing(state, limit, after)
        rows = self._run(
            "jobs", state or "", "" if task is None else check_task(task), int(after), int(limit),
            write=False,
        )  # fmt: skip
        return [
            {
                "id": int(jid),
                "task": _text(t),
                "status": _text(s),
                "attempts": int(a or 0),
                "priority": int(pr or 0),
                "key": None if not key else _text(key),
            }
            for jid, s, t, a, pr, key in rows
        ]

    def set_task_defaults(self, task: str, *, max_attempts: int) -> None:
        """Known to this process only: sent with each claim and fail."""
        check_task(task)
        if isinstance(max_attempts, bool) or not 1 <= max_attempts <= MAX_ATTEMPTS:
            raise ArgumentError(f"max_attempts must be 1..{MAX_ATTEMPTS}, not {max_attempts}")
        self._task_max[task] = max_attempts
        self._defaults_json = json.dumps(self._task_max)

    def _max_for(self, task: str) -> int:
        return self._task_max.get(task, self.default_max_attempts)

    def stats(self) -> dict[str, Any]:
        """Due jobs and expired leases are moved first; counters are server-wide."""
        counts, per_task, seq = self._run("stats", write=True)
        return shape_stats(pairs(counts), pairs(per_task), int(seq)) | {
            "backend": "redis",
            "url": self.path,
            "server_version": self.server_version,
            "durable": self.durable,
        }

    def next_due_in(self) -> float | None:
        reply = self._run("next_due")
        if reply is None:
            return None
        return max(0.0, int(reply[0]) / 1000.0)

    def sync(self) -> None:
        """Nothing to do: the server made every write durable per its appendfsync."""
        self._check_open()

    def shared_gates(self) -> SharedGates:
        """Retry budget, breakers, rate limits and caps on the server: every host shares them."""
        self._check_open()
        return SharedGates(self)

    def record_worker_status(self, status: Mapping[str, Any], ttl: float = 30.0) -> None:
        """A key P:w:HOST:PID that expires after `ttl` seconds."""
        name = f"{self.prefix}:w:{socket.gethostname()}:{os.getpid()}"
        body = json.dumps({"host": socket.gethostname(), **status}, default=str)
        self._write(lambda c: c.set(name, body, px=_ms(ttl)))

    def close(self) -> None:
        """In a fork() child, only forget: the connections are the parent's."""
        if self._forked or os.getpid() != self._pid:
            self._forked = self._closed = True  # the connections are the parent's
            return
        if self._closed:
            return
        self._closed = True
        self._events.close()
        with contextlib.suppress(Exception):
            self._client.close()

    def __repr__(self) -> str:
        return f"<RedisQueue {self.path}>"

    def _wait_ready(self, seen: int, left: float) -> None:
        """Sleep until a job may be ready: news from the server, a due time, or 1 s."""
        self._events.start()
        due = self.next_due_in()
        self._events.wait(seen, min(left, 1.0 if due is None else max(due, 0.001), 1.0))
        self._check_open()


__all__ = ["RedisQueue"]

assert PAYLOAD_JSON == 0 and PAYLOAD_BYTES == 1  # the kinds stored in P:j:ID's k field
