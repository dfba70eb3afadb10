"""One stats model for every backend, and reading it: what `walq stats` and metrics render.

Each backend reports its numbers as a dict (a directory's read off its files
by `directory_stats`, a live Queue's or RedisQueue's `stats()`, a server's
read-only `inspect_stats`): the same keys where they mean the same thing.
`QueueStats.of` turns any of them into one typed model; the CLI
(walq.cli.render) and walq.metrics render that model, never the dicts.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterable, Mapping
from typing import Any

import attrs

from walq import backends
from walq.core import events as ev
from walq.core import format as fmt
from walq.core.job import COUNTERS
from walq.core.state import PENDING, Now
from walq.directory import checkpoint as checkpoints
from walq.directory.fs import FileSystem, OsFileSystem
from walq.directory.log import CUT_DIR
from walq.errors import NotAQueueError
from walq.ops.owner import Owner, owner, worker_status
from walq.ops.replay import STATES, Replayed, now_clock, replay
from walq.ops.scan import RACE_RETRIES, Progress, list_names, read_record
from walq.producers.spool import SPOOL_DIR, live_entries, set_aside_files


@attrs.frozen
class LogStats:
    """A queue directory's files: segments, bytes written and live, garbage, tail, cut/."""

    segments: int
    disk_bytes: int
    log_bytes: int | None = None  # None where the backend does not say (a live Queue)
    garbage_ratio: float | None = None
    sealed_garbage_ratio: float | None = None
    tail_bytes: int | None = None
    cut_files: int | None = None


@attrs.frozen
class ServerStats:
    """A server's own facts: its version and durability, and work due that is not moved yet."""

    name: str  # the server software, as people call it ("Redis")
    version: str
    durable: bool
    persistence: Mapping[str, Any]
    due_now: int
    expired_leases: int


@attrs.frozen
class QueueStats:
    """A queue's numbers, whichever backend holds it; a section is None where it has none."""

    where: str  # the directory's path or the server's URL (no password)
    jobs: Mapping[str, int]  # live jobs by state: pending, scheduled, running, dead
    tasks: Mapping[str, Mapping[str, int]]  # the same, per task (sorted by name)
    live_bytes: int
    next_id: int | None
    done: int | None  # jobs acked (a directory: since its last compaction)
    done_since: str  # how far back `done` counts, as a phrase ("" for always)
    counters: Mapping[str, int]  # events since the queue was opened (walq.core.job.COUNTERS)
    next_due_in: float | None
    oldest_pending: tuple[int, float | None] | None  # (job id, age in seconds or None)
    owner: Owner | None  # a directory's lock holder (None: no such thing or not read)
    interrupted: int  # pending jobs that were running when the owner stopped
    damaged: int
    damage: tuple[str, ...] | None  # a line per damaged range (None: not read)
    spooled: int | None
    spool_set_aside: tuple[Mapping[str, Any], ...]
    log: LogStats | None
    server: ServerStats | None
    workers: tuple[Mapping[str, Any], ...]  # recent worker statuses
    breakers: Mapping[str, str] | None  # task -> circuit breaker state (None: unknown)
    compactor: Mapping[str, Any] | None  # None while the background compactor works
    has_compactor: bool
    paused: tuple[str, ...]  # tasks whose pending jobs are not claimed
    checkpoint: Mapping[str, Any] | None  # a directory's checkpoint (checkpoint.info)
    data: Mapping[str, Any]  # the backend's dict, as `walq stats --json` prints it

    @property
    def unfinished(self) -> int:
        """Jobs not yet finished: pending, scheduled or running."""
        return self.jobs["pending"] + self.jobs["scheduled"] + self.jobs["running"]

    @classmethod
    def of(cls, st: Mapping[str, Any]) -> QueueStats:
        """The model of any backend's stats dict (missing keys read as none or zero)."""
        who = st.get("owner")
        workers = tuple(st.get("workers") or ([st["worker"]] if st.get("worker") else []))
        known = st.get("breakers")
        oldest = st.get("oldest_pending_job")
        return cls(
            where=str(st.get("path") or st.get("url") or ""),
            jobs={s: int(st.get(s, 0)) for s in STATES},
            tasks=dict(sorted((st.get("tasks") or {}).items())),
            live_bytes=int(st.get("bytes", 0)),
            next_id=st.get("next_id"),
            done=st.get("done_in_log", st.get("done")),
            done_since=" since the last compaction" if "done_in_log" in st else "",
            counters={c: int(st[c]) for c in COUNTERS if c in st},
            next_due_in=st.get("next_due_in"),
            oldest_pending=None if oldest is None else (oldest, st.get("oldest_pending_age")),
            owner=Owner(who["running"], who.get("pid")) if isinstance(who, Mapping) else None,
            interrupted=int(st.get("interrupted", 0)),
            damaged=int(st.get("damaged", 0)),
            damage=tuple(st["damage"]) if "damage" in st else None,
            spooled=st.get("spooled"),
            spool_set_aside=tuple(st.get("spool_set_aside") or ()),
            log=_log_stats(st),
            server=_server_stats(st),
            workers=workers,
            breakers=known if isinstance(known, Mapping) else breakers(workers),
            compactor=st.get("compactor") or None,
            has_compactor="compactor" in st,
            paused=tuple(st.get("paused") or ()),
            checkpoint=st.get("checkpoint"),
            data=st,
        )


def _log_stats(st: Mapping[str, Any]) -> LogStats | None:
    if "segments" not in st:
        return None
    return LogStats(
        segments=int(st["segments"]),
        disk_bytes=int(st.get("disk_bytes", 0)),
        log_bytes=st.get("log_bytes"),
        garbage_ratio=st.get("garbage_ratio"),
        sealed_garbage_ratio=st.get("sealed_garbage_ratio"),
        tail_bytes=st.get("tail_bytes"),
        cut_files=st.get("cut_files"),
    )


def _server_stats(st: Mapping[str, Any]) -> ServerStats | None:
    if "server_version" not in st:
        return None
    return ServerStats(
        name=str(st.get("backend", "server")).capitalize(),
        version=str(st["server_version"]),
        durable=bool(st.get("durable")),
        persistence=st.get("persistence") or {},
        due_now=int(st.get("due_now", 0)),
        expired_leases=int(st.get("expired_leases", 0)),
    )


def breakers(workers: Iterable[Mapping[str, Any]]) -> dict[str, str] | None:
    """Each task's circuit breaker state as the workers reported it; None if none said."""
    out: dict[str, str] | None = None
    for status in workers:
        tasks = status.get("tasks")
        if not isinstance(tasks, Mapping):
            continue
        out = out or {}
        for name, t in tasks.items():
            out[str(name)] = (
                str(t.get("breaker", "unknown")) if isinstance(t, Mapping) else "unknown"
            )
    return None if out is None else dict(sorted(out.items()))


def read(target: str, *, progress: Progress | None = None) -> QueueStats:
    """The stats of the queue at `target`, a directory (read without its lock) or a URL.

    Nothing is changed: on a server, jobs due and leases expired are counted,
    not moved. Beside a running owner the numbers are the owner's own (asked
    over its socket); else they are read from the files.
    """
    if backends.is_url(target):
        from walq.redisq import admin  # noqa: PLC0415 - only a server's queue needs it

        return QueueStats.of(admin.inspect_stats(target))
    live = owner_stats(target)
    if live is not None:
        return QueueStats.of(live)
    return QueueStats.of(directory_stats(target, progress=progress))


def owner_stats(path: str) -> dict[str, Any] | None:
    """The running owner's own numbers (its state is in memory), or None if none answers.

    With the worker's status from its file, as `directory_stats` has it.
    """
    from walq.ops.live import ask_owner  # noqa: PLC0415 - the control channel's client

    who = owner(path)
    if who.running is False:
        return None
    asked, answer = ask_owner(path, "stats")
    if not asked:
        return None
    out: dict[str, Any] = dict(answer)
    out["source"] = "owner"
    out["owner"] = {"running": True, "pid": who.pid}
    status = worker_status(path)
    out["worker"] = status
    out["breakers"] = breakers([] if status is None else [status]) or "unknown"
    return out


def directory_stats(
    path: str,
    fs: FileSystem | None = None,
    *,
    now: Now | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """A queue directory's numbers read without the lock (what `walq stats --json` prints).

    Keys as in Queue.stats() where they mean the same; QueueStats.of reads them.
    """
    return directory_snapshot(path, fs, now=now, progress=progress)[0]


def directory_snapshot(
    path: str,
    fs: FileSystem | None = None,
    *,
    now: Now | None = None,
    progress: Progress | None = None,
) -> tuple[dict[str, Any], Replayed]:
    """`directory_stats` and the replayed state it was read from (`walq ui` lists jobs off it)."""
    fs = fs or OsFileSystem()
    now = now or now_clock()
    who = owner(path)
    for _ in range(RACE_RETRIES):
        r = replay(path, fs, now=now, owner_running=who.running, progress=progress)
        try:
            oldest = _oldest_pending(path, r, fs)
        except _Moved:
            continue
        break
    else:
        raise NotAQueueError(f"{path}: compactions kept changing the log while it was read; retry")
    state = r.state
    c = r.counts
    log_bytes = sum(r.ends)
    records = log_bytes - fmt.SEGMENT_HEADER_SIZE * len(r.seqs)
    sealed_records = sum(r.ends[:-1]) - fmt.SEGMENT_HEADER_SIZE * max(0, len(r.seqs) - 1)
    sealed_live = state.live_bytes_upto(r.seqs[-2]) if len(r.seqs) > 1 else 0
    status = worker_status(path)  # judged by the time it is read, not `now`
    out: dict[str, Any] = {
        "path": path,
        "read_at": now.wall,
        "owner": {"running": who.running, "pid": who.pid},
        "pending": c["pending"],
        "scheduled": c["scheduled"],
        "running": c["running"],
        "dead": c["dead"],
        "unfinished": c["pending"] + c["scheduled"] + c["running"],
        "interrupted": r.interrupted,
        "done_in_log": r.done_seen,
        "next_id": state.next_id,
        "tasks": dict(sorted(r.tasks.items())),
        "paused": sorted(state.paused),
        "oldest_pending_job": None,
        "oldest_pending_age": None,
        "next_due_in": None,
        "segments": len(r.seqs),
        "disk_bytes": r.disk_bytes,
        "log_bytes": log_bytes,
        "bytes": state.live_bytes,
        "garbage_bytes": max(0, records - state.live_bytes),
        "garbage_ratio": _ratio(records - state.live_bytes, records),
        "sealed_garbage_ratio": _ratio(sealed_records - sealed_live, sealed_records),
        "damaged": len(r.damage),
        "damage": r.damage,
        "tail_bytes": r.tail_bytes,
        "spooled": len(live_entries(list_names(fs, posixpath.join(path, SPOOL_DIR)))),
        "spool_set_aside": set_aside_files(fs, path),
        "cut_files": len(list_names(fs, posixpath.join(path, CUT_DIR))),
        "worker": status,
        "breakers": breakers([] if status is None else [status]) or "unknown",
        # The owner's background compactor, as its worker last reported it.
        "compactor": status.get("compactor") if status is not None else None,
        "checkpoint": checkpoints.info(fs, path, now.wall),
    }
    if oldest is not None:
        out["oldest_pending_job"], created = oldest
        out["oldest_pending_age"] = max(0.0, now.wall - created) if created else None
    due = state.next_due()
    if due is not None:
        out["next_due_in"] = max(0.0, due - now.mono)
    return out, r


class _Moved(Exception):
    """A record was not where the replay said: a compaction moved it (read again)."""


def _oldest_pending(path: str, r: Replayed, fs: FileSystem) -> tuple[int, float] | None:
    """(id, created) of the oldest pending job, or None if none is pending."""
    running = r.running
    first = min((j for j in r.state.ids_in(PENDING) if j not in running), default=None)
    if first is None:
        return None
    e = read_record(path, r.state.info(first).loc, fs)
    if not isinstance(e, ev.Enqueue | ev.Job):
        raise _Moved
    return first, e.created


def _ratio(part: int, whole: int) -> float:
    return round(max(0, part) / whole, 4) if whole > 0 else 0.0
