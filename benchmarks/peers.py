"""One adapter per peer behind a tiny common interface, and the measurements over it.

Every peer runs in its most durable configuration; `describe()` reports the
settings actually in effect (read back from SQLite), so the table never claims
a durability the run did not have. See README.md for what each peer can and
cannot make durable.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from benchutil import PAYLOAD, Settings, dir_bytes, rate_until

SYNC_NAMES = {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}


class Peer(Protocol):
    """The whole interface the measurements need."""

    def put(self, payload: bytes) -> None: ...

    def put_many(self, payloads: list[bytes]) -> None:
        """One batch; raises NotImplementedError where the peer has no batch API."""
        ...

    def get_ack(self) -> bool:
        """Take the next job and acknowledge it; False when the queue is empty."""
        ...

    def describe(self) -> str:
        """The durability settings in effect."""
        ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class PeerSpec:
    name: str  # short id, usable with --only
    label: str  # what the table calls it
    open: Callable[[Path], Peer]
    durable: bool  # does a returned enqueue survive power loss in this configuration?
    per_thread: bool  # one instance per thread (else one shared, internally locked)
    batch: str  # how a batch is enqueued, "" if the peer cannot
    get_ack: str  # what the get+ack row does for this peer


def sqlite_mode(conn: sqlite3.Connection) -> str:
    journal = conn.execute("PRAGMA journal_mode").fetchone()[0]
    sync = conn.execute("PRAGMA synchronous").fetchone()[0]
    return f"journal={journal} synchronous={SYNC_NAMES.get(sync, sync)}"


class PersistAck:
    """persist-queue SQLiteAckQueue (WAL; synchronous forced to FULL on both connections)."""

    def __init__(self, path: Path) -> None:
        from persistqueue import SQLiteAckQueue

        self.q = SQLiteAckQueue(str(path), multithreading=True, timeout=60)
        # The library leaves synchronous at the build default; make it FULL explicitly.
        for conn in (self.q._conn, self.q._putter):
            conn.execute("PRAGMA synchronous=FULL")

    def put(self, payload: bytes) -> None:
        self.q.put(payload)

    def put_many(self, payloads: list[bytes]) -> None:
        raise NotImplementedError

    def get_ack(self) -> bool:
        from persistqueue import Empty

        try:
            item = self.q.get(block=False, raw=True)
        except Empty:
            return False
        self.q.ack(id=item["pqid"])
        return True

    def describe(self) -> str:
        return sqlite_mode(self.q._putter)

    def close(self) -> None:
        self.q.close()


class PersistFile:
    """persist-queue file Queue: pickles appended to chunk files; no fsync option exists."""

    def __init__(self, path: Path) -> None:
        from persistqueue import Queue

        self.q = Queue(str(path), tempdir=str(path), autosave=False)

    def put(self, payload: bytes) -> None:
        self.q.put(payload)

    def put_many(self, payloads: list[bytes]) -> None:
        raise NotImplementedError

    def get_ack(self) -> bool:
        from persistqueue import Empty

        try:
            self.q.get(block=False)
        except Empty:
            return False
        self.q.task_done()  # persists the new tail (info file replaced, not fsynced)
        return True

    def describe(self) -> str:
        return "flush only, fsync once per 100-put chunk, info file renamed unsynced"

    def close(self) -> None:
        self.q.headf.close()
        self.q.tailf.close()


class Lite:
    """litequeue: hard-codes synchronous=NORMAL; overridden to FULL on its connection."""

    def __init__(self, path: Path) -> None:
        from litequeue import LiteQueue

        self.q = LiteQueue(str(path / "litequeue.db"), timeout=60)
        self.q.conn.execute("PRAGMA synchronous=FULL")

    def put(self, payload: bytes) -> None:
        self.q.put(payload.decode("ascii"))  # litequeue stores text

    def put_many(self, payloads: list[bytes]) -> None:
        with self.q.transaction():
            for payload in payloads:
                self.q.put(payload.decode("ascii"))

    def get_ack(self) -> bool:
        message = self.q.pop()
        if message is None:
            return False
        self.q.done(message.message_id)
        return True

    def describe(self) -> str:
        return sqlite_mode(self.q.conn)

    def close(self) -> None:
        self.q.close()


def _noop(payload: bytes) -> None:
    """The task huey enqueues in the peer rows (never run there)."""


class Huey:
    """huey SqliteHuey(fsync=True): synchronous=FULL, WAL; tasks via its public API."""

    def __init__(self, path: Path) -> None:
        from huey import SqliteHuey

        self.huey = SqliteHuey(
            "walq-bench", filename=str(path / "huey.db"), fsync=True, results=False
        )
        self.task = self.huey.task()(_noop)

    def put(self, payload: bytes) -> None:
        self.task(payload)

    def put_many(self, payloads: list[bytes]) -> None:
        raise NotImplementedError

    def get_ack(self) -> bool:
        return self.huey.dequeue() is not None

    def describe(self) -> str:
        return sqlite_mode(self.huey.storage.conn)

    def close(self) -> None:
        self.huey.storage.close()


class DiskcacheDeque:
    """diskcache.Deque over a Cache with sqlite_synchronous=2 (FULL) instead of NORMAL."""

    def __init__(self, path: Path) -> None:
        from diskcache import Cache, Deque

        self.cache = Cache(str(path), eviction_policy="none", sqlite_synchronous=2)
        self.deque = Deque.fromcache(self.cache)

    def put(self, payload: bytes) -> None:
        self.deque.append(payload)

    def put_many(self, payloads: list[bytes]) -> None:
        with self.deque.transact():
            self.deque.extend(payloads)

    def get_ack(self) -> bool:
        try:
            self.deque.popleft()
        except IndexError:
            return False
        return True

    def describe(self) -> str:
        return sqlite_mode(self.cache._con)

    def close(self) -> None:
        self.cache.close()


class RawSqlite:
    """A hand-written queue table in sqlite3, WAL, synchronous=FULL.

    One connection shared by all threads behind a lock (SQLite has one writer
    anyway; per-thread connections measured slower, waiting in the busy handler).
    claim = SELECT + UPDATE in one BEGIN IMMEDIATE transaction; ack = DELETE.
    Each is its own durable commit, as a claim must be for a crash-safe queue.
    """

    def __init__(self, path: Path) -> None:
        self.lock = threading.Lock()
        self.conn = sqlite3.connect(
            path / "queue.db", timeout=60, isolation_level=None, check_same_thread=False
        )
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=FULL")
        self.conn.execute(
            "CREATE TABLE IF NOT EXISTS jobs (id INTEGER PRIMARY KEY, task TEXT NOT NULL,"
            " payload BLOB NOT NULL, state INTEGER NOT NULL DEFAULT 0, lease_until REAL)"
        )

    def put(self, payload: bytes) -> None:
        with self.lock:
            self.conn.execute("INSERT INTO jobs (task, payload) VALUES ('noop', ?)", (payload,))

    def put_many(self, payloads: list[bytes]) -> None:
        with self.lock, self.transaction():
            self.conn.executemany(
                "INSERT INTO jobs (task, payload) VALUES ('noop', ?)", ((p,) for p in payloads)
            )

    def get_ack(self) -> bool:
        with self.lock:
            with self.transaction("BEGIN IMMEDIATE"):
                row = self.conn.execute(
                    "SELECT id, task, payload FROM jobs WHERE state = 0 ORDER BY id LIMIT 1"
                ).fetchone()
                if row is not None:
                    self.conn.execute(
                        "UPDATE jobs SET state = 1, lease_until = ? WHERE id = ?",
                        (time.time() + 60.0, row[0]),
                    )
            if row is None:
                return False
            self.conn.execute("DELETE FROM jobs WHERE id = ?", (row[0],))
        return True

    def claim_ack_many(self, n: int) -> int:
        """Claim up to `n` jobs in one transaction (their payloads read), ack them in one more."""
        with self.lock:
            with self.transaction("BEGIN IMMEDIATE"):
                rows = self.conn.execute(
                    "SELECT id, task, payload FROM jobs WHERE state = 0 ORDER BY id LIMIT ?", (n,)
                ).fetchall()
                until = time.time() + 60.0
                self.conn.executemany(
                    "UPDATE jobs SET state = 1, lease_until = ? WHERE id = ?",
                    ((until, row[0]) for row in rows),
                )
            with self.transaction():
                self.conn.executemany("DELETE FROM jobs WHERE id = ?", ((row[0],) for row in rows))
        return len(rows)

    @contextlib.contextmanager
    def transaction(self, begin: str = "BEGIN") -> Iterator[None]:
        self.conn.execute(begin)
        try:
            yield
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    def describe(self) -> str:
        return sqlite_mode(self.conn)

    def close(self) -> None:
        self.conn.close()


PEERS = [
    PeerSpec(
        "persist-sqlite",
        "persist-queue SQLiteAckQueue",
        PersistAck,
        durable=True,
        per_thread=False,
        batch="",
        get_ack="get (mark unack) + ack: 2 commits",
    ),
    PeerSpec(
        "persist-file",
        "persist-queue file Queue",
        PersistFile,
        durable=False,
        per_thread=False,
        batch="",
        get_ack="get + task_done (info rewrite)",
    ),
    PeerSpec(
        "litequeue",
        "litequeue",
        Lite,
        durable=True,
        per_thread=False,
        batch="put x N in q.transaction()",
        get_ack="pop (lock) + done: 2 commits",
    ),
    PeerSpec(
        "huey",
        "huey SqliteStorage",
        Huey,
        durable=True,
        per_thread=False,
        batch="",
        get_ack="dequeue only: deletes on take, no ack",
    ),
    PeerSpec(
        "diskcache",
        "diskcache.Deque",
        DiskcacheDeque,
        durable=True,
        per_thread=False,
        batch="extend() in deque.transact()",
        get_ack="popleft only: deletes on take, no ack",
    ),
    PeerSpec(
        "sqlite3",
        "sqlite3 queue table",
        RawSqlite,
        durable=True,
        per_thread=False,
        batch="executemany in one transaction",
        get_ack="claim (UPDATE) + ack (DELETE): 2 commits",
    ),
]


# -- measurements over any Peer -----------------------------------------------------


def prefill(q: Peer, count: int, batch: bool) -> None:
    if batch:
        q.put_many([PAYLOAD] * count)
    else:
        for _ in range(count):
            q.put(PAYLOAD)


def enqueue_rate(spec: PeerSpec, path: Path, s: Settings) -> float:
    """Durable enqueues/s from one thread."""
    q = spec.open(path)

    def op() -> int:
        q.put(PAYLOAD)
        return 1

    try:
        return rate_until(s.duration, op)
    finally:
        q.close()


def threaded_enqueue_rate(spec: PeerSpec, path: Path, s: Settings) -> float:
    """Durable enqueues/s from `s.threads` threads, all started together."""
    shared = spec.open(path)  # also creates the schema before any thread opens its own
    counts = [0] * s.threads
    ends = [0.0] * s.threads
    errors: list[BaseException] = []
    ready = threading.Barrier(s.threads + 1)

    def producer(i: int) -> None:
        q = shared
        try:
            if spec.per_thread:
                q = spec.open(path)
            ready.wait()
            deadline = time.perf_counter() + s.duration
            n = 0
            while time.perf_counter() < deadline:
                q.put(PAYLOAD)
                n += 1
            counts[i], ends[i] = n, time.perf_counter()
        except BaseException as exc:
            errors.append(exc)
            ready.abort()
        finally:
            if q is not shared:
                q.close()

    threads = [threading.Thread(target=producer, args=(i,), daemon=True) for i in range(s.threads)]
    try:
        for t in threads:
            t.start()
        with contextlib.suppress(threading.BrokenBarrierError):
            ready.wait()  # a producer that failed to start breaks the barrier
        start = time.perf_counter()
        for t in threads:
            t.join()
    finally:
        shared.close()
    if errors:
        raise errors[0]
    return sum(counts) / (max(ends) - start)


def batch_rate(spec: PeerSpec, path: Path, s: Settings) -> float:
    """Records/s enqueued in batches of `s.batch` 1 KiB payloads."""
    q = spec.open(path)
    batch = [PAYLOAD] * s.batch

    def op() -> int:
        q.put_many(batch)
        return len(batch)

    try:
        return rate_until(s.duration, op)
    finally:
        q.close()


def get_ack_rate(spec: PeerSpec, path: Path, s: Settings) -> float:
    """get+ack round trips/s with `s.backlog` jobs queued; refills are not timed."""
    q = spec.open(path)
    try:
        prefill(q, s.backlog, bool(spec.batch))
        busy, count = 0.0, 0
        while busy < s.duration:
            q.put(PAYLOAD)  # keep the backlog steady, outside the timed part
            start = time.perf_counter()
            if not q.get_ack():
                raise RuntimeError("queue ran dry during get+ack")
            busy += time.perf_counter() - start
            count += 1
        return count / busy
    finally:
        q.close()


def sqlite_claim_many_rate(path: Path, s: Settings) -> float:
    """Jobs/s through the sqlite3 table's batched claim: `s.batch` claimed in one
    transaction, acked in one more (walq's claim_many + ack_many, like for like);
    refills are not timed."""
    q = RawSqlite(path)
    batch = [PAYLOAD] * s.batch
    try:
        busy, count = 0.0, 0
        while busy < s.duration:
            q.put_many(batch)
            start = time.perf_counter()
            got = q.claim_ack_many(s.batch)
            busy += time.perf_counter() - start
            if got != s.batch:
                raise RuntimeError(f"the batched claim returned {got} of {s.batch} jobs")
            count += got
        return count / busy
    finally:
        q.close()


def steady_disk_mb(spec: PeerSpec, path: Path, s: Settings) -> float:
    """MB on disk (allocated, queue open) after `steady_cycles` enqueue+get+ack cycles."""
    q = spec.open(path)
    try:
        prefill(q, s.backlog, bool(spec.batch))
        for _ in range(s.steady_cycles):
            q.put(PAYLOAD)
            if not q.get_ack():
                raise RuntimeError("queue ran dry during the steady loop")
        return dir_bytes(path) / 1e6
    finally:
        q.close()


def describe(spec: PeerSpec, path: Path) -> str:
    path.mkdir(exist_ok=True)
    q = spec.open(path)
    try:
        return q.describe()
    finally:
        q.close()
