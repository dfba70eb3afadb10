"""What the dashboard reads: a queue's numbers, its jobs by state (paged), one job's history.

Through the interfaces every tool shares, never a backend's own code: beside a
running owner a directory is asked over the owner's control channel
(walq.Admin: its state is in memory, so nothing is replayed); a server's queue
through its QueueBackend calls; a directory with no owner through the
read-only walq.ops readers, read again only when its files changed (no owner
writes them, so a refresh usually costs a few stat calls). The Sampler reads
the numbers in one thread at a pace set by what a read costs, so the page's
refreshes, however many, never add reads.
"""

from __future__ import annotations

import bisect
import contextlib
import logging
import os
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol

import attrs

from walq import backends
from walq.backend import QueueBackend
from walq.core import events as ev
from walq.core.jobspec import state_code
from walq.core.state import DEAD, PENDING, SCHEDULED, WAITING
from walq.errors import DurabilityWarning, NoOwnerError, UnknownJobError, WalqError
from walq.ops import live
from walq.ops import stats as ops_stats
from walq.ops.dump import Position, dump_job, payload_fields
from walq.ops.replay import Replayed, now_clock
from walq.ops.scan import read_record, segment_seqs
from walq.ops.stats import QueueStats
from walq.producers.control import Admin
from walq.ui.history import attempts
from walq.ui.series import Series

log = logging.getLogger("walq.ui")

PAGE = 50  # rows per page of a list
HISTORY_PAGE = 200  # records per page of a job's history
RATES = ("enqueued", "completed", "failed")
REPORTS_KEPT = 10_000  # ended attempts the workers reported, remembered since the start


@attrs.frozen
class Page:
    """One page of a list, in id order: its rows, the id it starts after, the next page's."""

    rows: list[dict[str, Any]]
    after: int
    next: int | None  # pass as `after` for the next page (None: this is the last)
    total: int | None  # jobs in the state, as of the last count
    note: str | None = None  # why the list is empty or partial
    source: str = ""  # "owner", "server" or "files": where the rows were read

    def as_dict(self) -> dict[str, Any]:
        return attrs.asdict(self)


class Source(Protocol):
    """A queue as the dashboard reads it (a directory or a server)."""

    target: str  # the directory's path or the server's URL (no password)
    backend: str  # "directory" or "redis"

    def read(self) -> QueueStats:
        """The queue's numbers now (one read; the Sampler calls it)."""
        ...

    def jobs(self, state: str, after: int, limit: int) -> Page:
        """Live jobs in `state` with ids above `after`, in id order, at most `limit`."""
        ...

    def job(self, jid: int) -> dict[str, Any]:
        """One job: its status and fields (UnknownJobError if there is none)."""
        ...

    def find_key(self, key: str) -> int | None:
        """The unfinished job holding idempotency key `key`, if any."""
        ...

    def history(self, jid: int, after: Position | None, limit: int) -> dict[str, Any]:
        """The job's records from the log, and its attempts drawn from them."""
        ...

    def close(self) -> None:
        """Let go of what the source holds open (a server connection)."""
        ...


def totals(st: QueueStats) -> dict[str, int | None]:
    """The running totals the rate charts are drawn from (None: not known)."""
    if "acked" in st.data:  # a live queue counts its own events (since it was opened)
        return {
            "enqueued": int(st.data.get("enqueued", 0)),
            "completed": int(st.data.get("acked", 0)),
            "failed": int(st.data.get("failed", 0)),
        }
    # Files read with no owner: ids are issued in order; the worker's status counts outcomes.
    counters = [w.get("counters") or {} for w in st.workers]
    return {
        "enqueued": None if st.next_id is None else st.next_id - 1,
        "completed": sum(int(c.get("ok", 0)) for c in counters) if counters else None,
        "failed": sum(int(c.get("failed", 0)) for c in counters) if counters else None,
    }


def _record_fields(e: ev.Event | None) -> dict[str, Any]:
    """A job's creating record as list columns (empty if a compaction moved it meanwhile)."""
    if not isinstance(e, ev.Enqueue | ev.Job):
        return {}
    out = {"created": e.created, "key": e.key, "priority": e.priority}
    out.update(payload_fields(e.kind, e.payload))
    return out


def _detail_row(d: dict[str, Any], wall: float) -> dict[str, Any]:
    """A job_detail (QueueBackend.job_detail's keys) as list and job columns, times as wall."""
    out = {k: v for k, v in d.items() if k not in ("due_in", "lease_left", "progress")}
    if d.get("due_in") is not None:
        out["due"] = wall + float(d["due_in"])
    if d.get("lease_left") is not None:
        out["lease_until"] = wall + float(d["lease_left"])
    out.setdefault("state", d.get("status"))
    return out


# Which rows need their detail read (a dead job's error, a scheduled job's due time, a lease).
_DETAILED = frozenset({"dead", "scheduled", "running"})


class _Live(Protocol):
    """The reads a live queue answers: the owner's Admin or a server's QueueBackend."""

    def detail(self, jid: int) -> dict[str, Any]: ...

    def jobs(self, state: str, after: int, limit: int) -> list[dict[str, Any]]: ...

    def find(self, key: str) -> int | None: ...


class _OwnerReads:
    """A running owner's answers over its control channel (walq.Admin; NoOwnerError if none)."""

    def __init__(self, path: str) -> None:
        self.admin = Admin(path, require_owner=True, timeout=live.OWNER_TIMEOUT)

    def detail(self, jid: int) -> dict[str, Any]:
        return self.admin.status(jid)

    def jobs(self, state: str, after: int, limit: int) -> list[dict[str, Any]]:
        return self.admin.jobs(state, limit=limit, after=after)

    def find(self, key: str) -> int | None:
        return self.admin.find(key)


class _ServerReads:
    """A server's queue through its QueueBackend calls, on one handle kept open."""

    def __init__(self, queue: QueueBackend) -> None:
        self.queue = queue
        self._lock = threading.Lock()  # one call at a time on the handle

    def detail(self, jid: int) -> dict[str, Any]:
        with self._lock:
            return self.queue.job_detail(jid)

    def jobs(self, state: str, after: int, limit: int) -> list[dict[str, Any]]:
        with self._lock:
            return self.queue.jobs(state, limit=limit, after=after)

    def find(self, key: str) -> int | None:
        with self._lock:
            return self.queue.find(key)


def _live_page(reads: _Live, state: str, after: int, limit: int, total: int | None) -> Page:
    """A page of `state` from a live queue, with each row's detail where the list shows it."""
    rows = reads.jobs(state, after, limit + 1)  # one more: is there a next page?
    more = len(rows) > limit
    rows = rows[:limit]
    wall = time.time()
    out = []
    for listed in rows:
        row = dict(listed, state=listed.get("status", state))
        if state in _DETAILED:
            with contextlib.suppress(UnknownJobError):  # finished since it was listed
                row.update(_detail_row(reads.detail(int(row["id"])), wall))
        out.append(row)
    nxt = int(rows[-1]["id"]) if more and rows else None
    return Page(out, after, nxt, total)


class DirectorySource:
    """A queue directory: its running owner's answers, or its files read without the lock."""

    backend = "directory"

    def __init__(self, path: str) -> None:
        segment_seqs(path)  # NotAQueueError now, not on the first refresh
        self.target = path
        self._owner = _OwnerReads(path)
        self._replayed: Replayed | None = None  # the last read of the files (no owner)
        self._stats: QueueStats | None = None
        self._seen: tuple[Any, ...] | None = None  # the files as they were at that read
        self._wall_minus_mono = 0.0
        self._sorted: dict[str, list[int]] = {}
        self._counts: dict[str, int] = {}
        self._lock = threading.Lock()

    def _files(self) -> tuple[Any, ...]:
        """What the directory's files look like (names, sizes, times): any write changes it."""
        seen = []
        for where in (self.target, os.path.join(self.target, "spool")):
            with contextlib.suppress(OSError), os.scandir(where) as entries:
                for entry in entries:
                    with contextlib.suppress(OSError):
                        st = entry.stat(follow_symlinks=False)
                        seen.append((where, entry.name, st.st_size, st.st_mtime_ns, st.st_ino))
        return tuple(sorted(seen))

    def read(self) -> QueueStats:
        live_stats = ops_stats.owner_stats(self.target)
        if live_stats is not None:  # the owner's numbers: nothing replayed
            st = QueueStats.of(live_stats)
            with self._lock:
                self._replayed, self._stats, self._seen, self._sorted = None, None, None, {}
                self._counts = dict(st.jobs)
            return st
        seen = self._files()
        with self._lock:
            if self._stats is not None and seen == self._seen:
                return self._stats  # no write since the last read: nothing to read again
        now = now_clock()
        data, replayed = ops_stats.directory_snapshot(self.target, now=now)
        st = QueueStats.of(data)
        with self._lock:
            self._replayed, self._stats, self._seen = replayed, st, seen
            self._wall_minus_mono = now.wall - now.mono
            self._sorted = {}
            self._counts = dict(st.jobs)
        return st

    def jobs(self, state: str, after: int, limit: int) -> Page:
        state_code(state)  # ArgumentError for a state that is none
        with self._lock:
            replayed, total = self._replayed, self._counts.get(state)
        if replayed is None:
            try:
                page = _live_page(self._owner, state, after, limit, total)
            except WalqError as exc:
                if not _no_owner(exc):
                    raise
                self.read()  # the owner stopped: read the files
            else:
                return attrs.evolve(page, source="owner")
        r, ids = self._ids(state)
        if r is None:
            return Page([], after, None, None, "not read yet", "files")
        start = bisect.bisect_right(ids, after)
        chosen = ids[start : start + limit]
        rows = []
        for jid in chosen:
            with contextlib.suppress(UnknownJobError):
                rows.append(self._row(r, jid, state))
        more = start + limit < len(ids)
        return Page(rows, after, chosen[-1] if more and chosen else None, len(ids), None, "files")

    def _ids(self, state: str) -> tuple[Replayed | None, list[int]]:
        """The ids in `state` of the last read of the files, in id order."""
        with self._lock:
            r = self._replayed
            if r is None:
                return None, []
            ids = self._sorted.get(state)
            if ids is None:
                ids = self._order(r, state)
                self._sorted[state] = ids
            return r, ids

    @staticmethod
    def _order(r: Replayed, state: str) -> list[int]:
        st = r.state
        if state == "running":
            return sorted(r.running)
        if state == "pending":
            return sorted(j for j in st.ids_in(PENDING) if j not in r.running)
        code = {"scheduled": SCHEDULED, "dead": DEAD, "waiting": WAITING}[state]
        return sorted(st.ids_in(code))

    def _row(self, r: Replayed, jid: int, state: str) -> dict[str, Any]:
        st = r.state
        info = st.info(jid)
        row: dict[str, Any] = {
            "id": jid,
            "task": info.task,
            "state": state,
            "status": state,
            "attempts": info.attempts,
            "max_attempts": info.max_attempts,
        }
        row.update(_record_fields(read_record(self.target, info.loc)))
        if state == "scheduled":
            due = st.due_of(jid)
            row["due"] = None if due is None else due + self._wall_minus_mono
        if state == "dead":
            loc = st.error_loc(jid)
            e = None if loc is None else read_record(self.target, loc)
            row["error"] = e.error if isinstance(e, ev.Fail | ev.Job) else ""
        return row

    def job(self, jid: int) -> dict[str, Any]:
        """The owner's answer, or the job's own records read (walq.ops.live: no replay)."""
        detail = live.job_status(self.target, jid)
        out = _detail_row(detail, time.time())
        out["backend"] = self.backend
        return out

    def find_key(self, key: str) -> int | None:
        with self._lock:
            r = self._replayed
        if r is not None:
            return r.state.key_holder(key)
        try:
            return self._owner.find(key)
        except WalqError as exc:
            if not _no_owner(exc):
                raise
        self.read()
        with self._lock:
            r = self._replayed
        return None if r is None else r.state.key_holder(key)

    def history(self, jid: int, after: Position | None, limit: int) -> dict[str, Any]:
        """The job's records, found by seeking, not by reading the log (walq.ops.dump.dump_job)."""
        rows = list(dump_job(self.target, jid, full=True))
        shown = [r for r in rows if after is None or (r["seq"], r["offset"]) > after]
        page = shown[:limit]
        nxt = f"{page[-1]['seq']}:{page[-1]['offset']}" if len(shown) > limit else None
        return {"rows": page, "next": nxt, "attempts": attempts(jid, rows)}

    def close(self) -> None:
        return None


def _no_owner(exc: WalqError) -> bool:
    """Whether `exc` says no owner answered (its files are then read instead)."""
    return isinstance(exc, NoOwnerError)


class ServerSource:
    """A queue on a server (Redis), through its QueueBackend calls and read-only stats."""

    backend = "redis"

    def __init__(self, url: str) -> None:
        with warnings.catch_warnings():  # weak durability is for `walq stats` to report
            warnings.simplefilter("ignore", DurabilityWarning)
            queue = backends.open(url, create=False)  # NotAQueueError now, not on a refresh
        self.target = queue.path
        self._url = url
        self._reads = _ServerReads(queue)
        self._counts: dict[str, int] = {}

    def read(self) -> QueueStats:
        st = ops_stats.read(self._url)
        self._counts = dict(st.jobs)
        return st

    def jobs(self, state: str, after: int, limit: int) -> Page:
        state_code(state)
        page = _live_page(self._reads, state, after, limit, self._counts.get(state))
        return attrs.evolve(page, source="server")

    def job(self, jid: int) -> dict[str, Any]:
        out = _detail_row(self._reads.detail(jid), time.time())
        out["backend"] = self.backend
        return out

    def find_key(self, key: str) -> int | None:
        return self._reads.find(key)

    def history(self, jid: int, after: Position | None, limit: int) -> dict[str, Any]:
        return {
            "rows": [],
            "next": None,
            "attempts": [],
            "note": "a server's queue keeps no log of a job's records: its status is shown above",
        }

    def close(self) -> None:
        self._reads.queue.close()


def open_source(target: str) -> Source:
    """The Source for a directory's path or a server's URL."""
    if backends.is_url(target):
        return ServerSource(target)
    return DirectorySource(target)


class Sampler:
    """Reads the queue's numbers in the background and keeps the latest, with their rates.

    The next read waits `min_interval` seconds, or four times what the last
    read took if longer: a big queue is read less often, never back to back.
    """

    def __init__(
        self,
        source: Source,
        *,
        min_interval: float = 1.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.source = source
        self.min_interval = min_interval
        self.series = Series(RATES)
        self._clock = clock
        self._latest: dict[str, Any] | None = None
        self._reports: dict[tuple[int, int, float], dict[str, Any]] = {}  # (job, attempt, ended)
        self._running: dict[int, dict[str, Any]] = {}  # what the workers report running
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="walq-ui-sampler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def poke(self) -> None:
        """Read again now (after an action), not at the next tick."""
        self._wake.set()

    def latest(self) -> dict[str, Any]:
        """The last snapshot (read once now if there is none yet)."""
        with self._lock:
            if self._latest is not None:
                return self._latest
        return self.sample()

    def _run(self) -> None:
        while not self._stop.is_set():
            began = time.monotonic()
            self.sample()
            took = time.monotonic() - began
            self._wake.wait(max(self.min_interval, 4 * took))
            self._wake.clear()

    def sample(self) -> dict[str, Any]:
        """Read once; keep and return the snapshot (an error is shown, not raised)."""
        began = time.monotonic()
        try:
            st = self.source.read()
        except (WalqError, OSError) as exc:
            snap = {"error": str(exc), "read_at": self._clock()}
            log.warning("reading %s failed: %s", self.source.target, exc)
        else:
            now = self._clock()
            self.series.add(now, totals(st))
            snap = self._snapshot(st, now, time.monotonic() - began)
            self._keep_reports(st.workers)
            running = running_by_workers(st.workers)
            with self._lock:
                self._running = running
        with self._lock:
            self._latest = snap
        return snap

    def _keep_reports(self, workers: Sequence[Any]) -> None:
        """Remember the attempts the workers report ended (each reports only its last few)."""
        with self._lock:
            for status in workers:
                for r in status.get("recent") or ():
                    if not isinstance(r, dict) or "job" not in r:
                        continue
                    key = (int(r["job"]), int(r.get("attempt") or 0), float(r.get("ended") or 0))
                    row = dict(r, worker=status.get("pid"), host=status.get("host"))
                    self._reports[key] = row
            while len(self._reports) > REPORTS_KEPT:
                del self._reports[next(iter(self._reports))]

    def running(self, jid: int) -> dict[str, Any] | None:
        """The worker and process running job `jid` and for how long, as the workers report."""
        with self._lock:
            info = self._running.get(jid)
        return None if info is None else {"id": jid, "state": "running", **info}

    def reports(self, jid: int) -> list[dict[str, Any]]:
        """The attempts of job `jid` its workers reported ended since the dashboard started."""
        with self._lock:
            return [r for (job, _, _), r in self._reports.items() if job == jid]

    def _snapshot(self, st: QueueStats, now: float, took: float) -> dict[str, Any]:
        # What runs, with its worker, process and time, as the workers report it (no list read).
        running = [
            {"id": jid, "state": "running", **info}
            for jid, info in sorted(running_by_workers(st.workers).items())
        ]
        data = st.data
        return {
            "where": st.where,
            "backend": self.source.backend,
            "read_at": now,
            "read_seconds": round(took, 4),
            "owner": None if st.owner is None else attrs.asdict(st.owner),
            "jobs": dict(st.jobs),
            "done": st.done,
            "done_since": st.done_since,
            "tasks": {t: dict(c) for t, c in st.tasks.items()},
            "task_limits": task_limits(st.workers),
            "paused": list(st.paused),
            "breakers": None if st.breakers is None else dict(st.breakers),
            "retry_budget": next(
                (w["retry_budget"] for w in st.workers if w.get("retry_budget")), None
            ),
            "workers": [_worker(w) for w in st.workers],
            "running": running[:PAGE],
            "read_from": _read_from(st, self.source.backend),
            "next_due_in": st.next_due_in,
            "log": None if st.log is None else attrs.asdict(st.log),
            "garbage_bytes": data.get("garbage_bytes"),
            "live_bytes": st.live_bytes,
            "compactor": None if st.compactor is None else dict(st.compactor),
            "server": None if st.server is None else attrs.asdict(st.server),
            "damaged": st.damaged,
            "damage": None if st.damage is None else list(st.damage[:100]),
            "spooled": st.spooled,
            "interrupted": st.interrupted,
            "series": self.series.rates(now),
        }


def _read_from(st: QueueStats, backend: str) -> str:
    """Where a read's numbers came from: "owner" (its control channel), "server" or "files"."""
    if backend != "directory":
        return "server"
    return "owner" if st.data.get("source") == "owner" else "files"


def running_by_workers(workers: Sequence[Any]) -> dict[int, dict[str, Any]]:
    """Job id -> the worker and process running it, and for how long, as the workers report."""
    out: dict[int, dict[str, Any]] = {}
    for status in workers:
        age = float(status.get("age") or 0.0)
        for child in status.get("children") or ():
            if not isinstance(child, dict):
                continue
            for running in child.get("jobs") or ():
                ran = running.get("running_for")
                out[int(running["job"])] = {
                    "worker": status.get("pid"),
                    "process": child.get("pid"),
                    "task": running.get("task"),
                    "attempt": running.get("attempt"),
                    "running_for": None if ran is None else round(float(ran) + age, 1),
                }
    return out


def _worker(status: Any) -> dict[str, Any]:
    """A worker's status as the page shows it."""
    keys = ("pid", "processes", "updated", "age", "counters", "host", "children")
    return {k: status.get(k) for k in keys if k in status}


def task_limits(workers: Sequence[Any]) -> dict[str, dict[str, Any]]:
    """Each task's concurrency and rate limits and running count, as its workers report them."""
    out: dict[str, dict[str, Any]] = {}
    for status in workers:
        tasks = status.get("tasks")
        if not isinstance(tasks, dict):
            continue
        for name, t in tasks.items():
            if not isinstance(t, dict):
                continue
            row = out.setdefault(str(name), {"running": 0})
            row["running"] += int(t.get("running", 0))
            for field in ("breaker", "concurrency", "rate"):
                if field in t:
                    row[field] = t[field]
    return dict(sorted(out.items()))


def iter_pages(source: Source, state: str, limit: int = PAGE) -> Iterator[dict[str, Any]]:
    """Every row of a list, a page at a time (for tests and tools, not the page)."""
    after = 0
    while True:
        page = source.jobs(state, after, limit)
        yield from page.rows
        if page.next is None:
            return
        after = page.next
