"""What the dashboard reads: a queue's numbers, its jobs by state (paged), one job's history.

A directory is read without its lock, as `walq stats` and `walq dump` read it
(beside a running owner or none); a server's queue through its read-only
calls. The Sampler reads the numbers in one thread at a pace set by what a
read costs, so the page's refreshes, however many, never add reads.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol

import attrs

from walq import backends
from walq.core import events as ev
from walq.core.state import DEAD, PENDING, SCHEDULED
from walq.errors import StateError, UnknownJobError, WalqError
from walq.ops import stats as ops_stats
from walq.ops.dead import dead_jobs, payload_kind
from walq.ops.dump import Dumper, Position, payload_fields
from walq.ops.owner import owner
from walq.ops.replay import STATES, Replayed, now_clock
from walq.ops.scan import iter_scans, read_record, segment_seqs
from walq.ops.stats import QueueStats
from walq.ui.series import Series

log = logging.getLogger("walq.ui")

PAGE = 50  # rows per page of a list
HISTORY_PAGE = 100  # records per page of a job's history
RATES = ("enqueued", "completed", "failed")


@attrs.frozen
class Page:
    """One page of a list: its rows, where it starts, how many there are in all."""

    rows: list[dict[str, Any]]
    offset: int
    total: int
    note: str | None = None  # why the list is empty or partial

    def as_dict(self) -> dict[str, Any]:
        return attrs.asdict(self)


class Source(Protocol):
    """A queue as the dashboard reads it (a directory or a server)."""

    target: str  # the directory's path or the server's URL (no password)
    backend: str  # "directory" or "redis"

    def read(self) -> QueueStats:
        """The queue's numbers now (one read; the Sampler calls it)."""
        ...

    def jobs(self, state: str, offset: int, limit: int) -> Page:
        """Live jobs in `state` (pending, scheduled, running, dead), as of the last read."""
        ...

    def job(self, jid: int) -> dict[str, Any]:
        """One job: its status and fields (UnknownJobError if there is none)."""
        ...

    def find_key(self, key: str) -> int | None:
        """The unfinished job holding idempotency key `key`, if any."""
        ...

    def history(self, jid: int, after: Position | None, limit: int) -> dict[str, Any]:
        """The job's records from the log, `limit` at a time after position `after`."""
        ...


def totals(st: QueueStats) -> dict[str, int | None]:
    """The running totals the rate charts are drawn from (None: not known)."""
    if "acked" in st.data:  # a server counts its own events
        return {
            "enqueued": int(st.data.get("enqueued", 0)),
            "completed": int(st.data.get("acked", 0)),
            "failed": int(st.data.get("failed", 0)),
        }
    # A directory: ids are issued in order; its owner's worker counts its outcomes.
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


class DirectorySource:
    """A queue directory, read without its lock."""

    backend = "directory"

    def __init__(self, path: str) -> None:
        segment_seqs(path)  # NotAQueueError now, not on the first refresh
        self.target = path
        self._replayed: Replayed | None = None
        self._wall_minus_mono = 0.0
        self._sorted: dict[str, list[int]] = {}
        self._lock = threading.Lock()

    def read(self) -> QueueStats:
        now = now_clock()
        data, replayed = ops_stats.directory_snapshot(self.target, now=now)
        with self._lock:
            self._replayed = replayed
            self._wall_minus_mono = now.wall - now.mono
            self._sorted = {}
        return QueueStats.of(data)

    def _ids(self, state: str) -> tuple[Replayed | None, list[int]]:
        """The ids in `state` of the last read, in the order the list shows them."""
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
        if state == "scheduled":
            return sorted(st.ids_in(SCHEDULED), key=lambda j: (st.due_of(j) or 0.0, j))
        return sorted(st.ids_in(DEAD))

    def jobs(self, state: str, offset: int, limit: int) -> Page:
        r, ids = self._ids(state)
        if r is None:
            return Page([], offset, 0, "not read yet")
        rows = []
        for jid in ids[offset : offset + limit]:
            with contextlib.suppress(UnknownJobError):
                rows.append(self._row(r, jid, state))
        return Page(rows, offset, len(ids))

    def _row(self, r: Replayed, jid: int, state: str) -> dict[str, Any]:
        st = r.state
        info = st.info(jid)
        row: dict[str, Any] = {
            "id": jid,
            "task": info.task,
            "state": state,
            "attempts": info.attempts,  # (its limit may be the worker's task default: not shown)
        }
        row.update(_record_fields(read_record(self.target, info.loc)))
        if state == "scheduled":
            due = st.due_of(jid)
            row["due"] = None if due is None else due + self._wall_minus_mono
        if state == "running":
            lease = st.lease(jid)
            if lease is not None:
                row["attempt"] = lease[1]
                row["lease_until"] = lease[0] + self._wall_minus_mono
        if state == "dead":
            row["error"] = self._error(r, jid)
        return row

    def _error(self, r: Replayed, jid: int) -> str:
        loc = r.state.error_loc(jid)
        e = None if loc is None else read_record(self.target, loc)
        return e.error if isinstance(e, ev.Fail | ev.Job) else ""

    def job(self, jid: int) -> dict[str, Any]:
        with self._lock:
            r = self._replayed
        if r is None:
            r = ops_stats.directory_snapshot(self.target)[1]
        status = "running" if jid in r.running else r.state.status(jid)
        out: dict[str, Any] = {"id": jid, "status": status, "backend": self.backend}
        if status in STATES:
            out.update(self._row(r, jid, status))
            if status == "dead":
                out["error"] = self._error(r, jid)
            if status == "running":
                out["worker"] = owner(self.target).pid
        return out

    def find_key(self, key: str) -> int | None:
        with self._lock:
            r = self._replayed
        return None if r is None else r.state.key_holder(key)

    def history(self, jid: int, after: Position | None, limit: int) -> dict[str, Any]:
        """One pass over the log from `after`, decoding only the records that may name the job."""
        rows: list[dict[str, Any]] = []
        dumper = Dumper(full=True)
        with self._lock:
            r = self._replayed
        if after is None and r is not None and jid in r.state:
            loc = r.state.info(jid).loc  # a live job's records start at its own
            after = (loc.seg, loc.offset)
        for scan in iter_scans(self.target):
            if after is not None and scan.seq < after[0]:
                continue
            for rec in scan.records:
                if after is not None and (scan.seq, rec.offset) < after:
                    continue
                if not ev.may_name(rec.body, jid):
                    continue
                row = dumper.record_row(scan.seq, rec)
                if jid not in (row.get("jobs") or [row.get("job")]):
                    continue  # its 8 bytes were in the body by chance
                if len(rows) == limit:
                    last = rows[-1]
                    return {"rows": rows, "next": f"{last['seq']}:{last['offset'] + 1}"}
                rows.append(row)
        return {"rows": rows, "next": None}


class ServerSource:
    """A queue on a server (Redis), through its read-only calls."""

    backend = "redis"

    def __init__(self, url: str) -> None:
        from walq.ops.admin import open_server  # noqa: PLC0415

        with open_server(url) as q:  # NotAQueueError now, not on the first refresh
            self.target = q.path
        self._url = url
        self._open = open_server

    def read(self) -> QueueStats:
        return ops_stats.read(self._url)

    def jobs(self, state: str, offset: int, limit: int) -> Page:
        if state != "dead":
            return Page([], offset, 0, f"a server's {state} jobs are counted, not listed")
        rows = dead_jobs(self._url)
        page = [
            {
                "id": d.id,
                "task": d.task,
                "state": "dead",
                "attempts": d.attempts,
                "key": d.key,
                "created": d.created,
                "error": d.error,
                **payload_fields(_kind(d.payload_kind), d.payload),
            }
            for d in rows[offset : offset + limit]
        ]
        return Page(page, offset, len(rows))

    def job(self, jid: int) -> dict[str, Any]:
        with self._open(self._url) as q:
            status = q.status(jid)
        out: dict[str, Any] = {"id": jid, "status": status, "backend": self.backend}
        if status == "dead":
            with contextlib.suppress(StateError, UnknownJobError):
                d = dead_jobs(self._url, ids=[jid])[0]
                out.update(task=d.task, attempts=d.attempts, key=d.key, created=d.created)
                out["error"] = d.error
                out.update(payload_fields(_kind(d.payload_kind), d.payload))
        return out

    def find_key(self, key: str) -> int | None:
        return None

    def history(self, jid: int, after: Position | None, limit: int) -> dict[str, Any]:
        return {"rows": [], "next": None, "note": "a server's queue keeps no log to read"}


def _kind(name: str) -> int:
    """The payload kind code of `payload_kind`'s name."""
    return ev.PAYLOAD_BYTES if name == payload_kind(ev.PAYLOAD_BYTES) else ev.PAYLOAD_JSON


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
        self._seen_running: dict[int, float] = {}  # job id -> when a read first saw it run
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
        with self._lock:
            self._latest = snap
        return snap

    def _snapshot(self, st: QueueStats, now: float, took: float) -> dict[str, Any]:
        running_page = self.source.jobs("running", 0, PAGE)
        known = running_by_workers(st.workers)
        if running_page.note is not None and known:  # a server's: its workers say what runs
            rows = [{"id": jid, "state": "running", **info} for jid, info in sorted(known.items())]
            running_page = Page(rows[:PAGE], 0, len(rows))
        seen = {}
        for row in running_page.rows:
            row.update(known.get(row["id"], {}))
            first = self._seen_running.get(row["id"], now)
            seen[row["id"]] = first
            row["elapsed_at_least"] = round(now - first, 1)
        self._seen_running = seen
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
            "running": running_page.as_dict(),
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
    offset = 0
    while True:
        page = source.jobs(state, offset, limit)
        yield from page.rows
        offset += limit
        if offset >= page.total:
            return
