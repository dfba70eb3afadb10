"""The owner's side of walq.connect: a Unix socket for producers, and spool ingestion.

`ProducerServer(queue).start()` ingests the spool, listens on the queue's
socket (walq.wire.socket_address) and polls the spool in the background;
`stop()` answers the requests in flight and stops. Each connection gets a
thread (at most `max_connections`) that calls
`queue.enqueue_many(items, sync=True)`, so concurrent producers share the
queue's group commit.

Ingestion is exactly-once across crashes: each spooled item is enqueued with
origin `<time_ns>-<pid>-<random>#<index>` (the file's unique stem and the
item's place in it, recorded in its ENQUEUE record); the file is
unlinked and the spool directory fsynced only after the enqueue is durable,
and on open `queue.replayed_origins` names the items already in the log, so a
file that survived a crash is unlinked without enqueueing those items again.
A compactor that drops ENQUEUE records must hold `ingest_lock`, which
ingestion holds from the enqueue through the unlink and the directory fsync.
"""

from __future__ import annotations

import contextlib
import logging
import os
import posixpath
import selectors
import socket
import threading
import time
from typing import TYPE_CHECKING, Any

import attrs

from walq import spool, wire
from walq.errors import (
    ClosedError,
    CorruptionError,
    LogFailedError,
    ProtocolError,
    QueueFull,
    WalqError,
)
from walq.text import excerpt

if TYPE_CHECKING:
    from walq.queue import Queue

log = logging.getLogger("walq.server")


@attrs.define
class _Conn:
    thread: threading.Thread | None = None
    idle: bool = True


@attrs.define
class _File:
    """A spool file read for ingestion: the items not yet in the log, by index."""

    name: str
    stem: str
    wall: float
    todo: list[tuple[int, wire.Item]]


class ProducerServer:
    """Serves producers for an open Queue: the socket, and the spool's ingestion."""

    def __init__(
        self,
        queue: Queue,
        *,
        listen: bool = True,
        poll_interval: float | None = 0.5,
        max_connections: int = 64,
        max_message: int = wire.MAX_MESSAGE,
        io_timeout: float = 10.0,
        idle_timeout: float = 60.0,
        batch_items: int = 1000,
        batch_bytes: int = 8 << 20,
    ) -> None:
        self.queue = queue
        self.fs = queue.fs
        self.spool_dir = posixpath.join(queue.path, spool.SPOOL_DIR)
        self.address = wire.socket_address(queue.path) if listen else None
        self.poll_interval = poll_interval
        self.max_connections = max_connections
        self.max_message = max_message
        self.io_timeout = io_timeout
        self.idle_timeout = idle_timeout
        self.batch_items = batch_items
        self.batch_bytes = batch_bytes
        # Held from an ingestion's enqueue through its unlinks and the spool-dir fsync.
        # It is the queue's: its compactor takes it too (see Compactor.compact).
        self.ingest_lock = queue.ingest_lock
        self._ingest_mu = threading.Lock()  # one ingestion at a time
        self._stop = threading.Event()
        self._poked = threading.Event()
        self._conns_mu = threading.Lock()
        self._conns: dict[socket.socket, _Conn] = {}
        self._listener: socket.socket | None = None
        self._socket_id: tuple[int, int] | None = None  # (st_dev, st_ino) of our socket file
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None
        self._threads: list[threading.Thread] = []
        self._accepter: threading.Thread | None = None
        self._unlink_pending: set[str] = set()  # ingested, but the unlink failed
        self._stuck: set[str] = set()  # damaged or refused, and could not be set aside
        self._waiting_logged = False
        self._started = False
        self._uid = os.geteuid()
        self.counters = dict.fromkeys(
            (
                "connections",
                "refused",
                "busy",
                "requests",
                "errors",
                "ingested_jobs",
                "ingested_files",
                "rejected_files",
                "damaged_files",
                "tmp_removed",
            ),
            0,
        )

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> None:
        """Settle and ingest the spool, then listen (if asked) and poll it in the background.

        An error settling the spool (see `reconcile`) is raised; one ingesting
        it is logged and ingestion is tried again at the next poll.
        """
        if self._started:
            return
        self._started = True
        if not self.fs.is_dir(self.spool_dir):
            spool.make_dir(self.fs, self.spool_dir)
        self.reconcile()
        try:
            self.ingest()
        except Exception:  # the poll retries; the owner need not stay down for it
            log.exception("%s: spool ingestion failed; trying again later", self.spool_dir)
        if self.address is not None:
            self._listen(self.address)
        if self.poll_interval is not None:
            self._spawn(self._poll_loop, "walq-spool")

    def stop(self, timeout: float | None = None) -> None:
        """Stop accepting; answer requests in flight (up to `timeout`); stop polling."""
        if not self._started or self._stop.is_set():
            return
        with self._conns_mu:
            self._stop.set()
            for conn, state in self._conns.items():
                if state.idle:  # waiting for a request: end its wait now
                    with contextlib.suppress(OSError):
                        conn.shutdown(socket.SHUT_RD)
        self._poked.set()
        deadline = time.monotonic() + (self.io_timeout + 5.0 if timeout is None else timeout)
        if self._wake_w is not None:
            with contextlib.suppress(OSError):
                self._wake_w.send(b"x")
            if self._accepter is not None:
                self._accepter.join(max(0.0, deadline - time.monotonic()))
        # Connections still in the listen backlog are reset: their producers spool.
        self._close_listener()
        with self._conns_mu:
            threads = self._threads + [s.thread for s in self._conns.values() if s.thread]
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        for sock in (self._wake_r, self._wake_w):
            if sock is not None:
                sock.close()

    def poke(self) -> None:
        """Ingest the spool soon (a producer just spooled)."""
        self._poked.set()

    # -- the socket --------------------------------------------------------------------

    def _listen(self, address: str) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        tmp = None
        try:
            if address.startswith("\0"):
                sock.bind(address)
            else:
                # Bind a temporary name, restrict it, then rename it over any stale
                # socket: the path is never reachable with looser permissions.
                # (A leftover *.tmp is removed when the log next opens.)
                tmp = os.path.join(os.path.dirname(address), f"{os.urandom(3).hex()}.sock.tmp")
                sock.bind(tmp)
                os.chmod(tmp, 0o600)
                os.replace(tmp, address)
                tmp = None
                st = os.lstat(address)
                self._socket_id = (st.st_dev, st.st_ino)
            sock.listen(128)
            sock.setblocking(False)
        except OSError as exc:
            sock.close()
            if tmp is not None:
                with contextlib.suppress(OSError):
                    os.remove(tmp)
            log.warning("%s: cannot listen (%s); producers will use the spool", address, exc)
            return
        self._listener = sock
        self._wake_r, self._wake_w = socket.socketpair()
        self._accepter = self._spawn(self._accept_loop, "walq-accept")

    def _close_listener(self) -> None:
        if self._listener is None:
            return
        self._listener.close()
        self._listener = None
        if self._socket_id is not None and self.address is not None:
            with contextlib.suppress(OSError):
                st = os.lstat(self.address)
                if (st.st_dev, st.st_ino) == self._socket_id:
                    os.remove(self.address)

    def _accept_loop(self) -> None:
        listener, wake = self._listener, self._wake_r
        assert listener is not None and wake is not None
        with selectors.DefaultSelector() as sel:
            sel.register(listener, selectors.EVENT_READ)
            sel.register(wake, selectors.EVENT_READ)
            while not self._stop.is_set():
                ready = sel.select()
                if self._stop.is_set() or any(key.fileobj is wake for key, _ in ready):
                    return
                try:
                    conn, _ = listener.accept()
                except BlockingIOError:
                    continue
                except OSError as exc:  # e.g. EMFILE: back off rather than spin
                    log.warning("%s: accept failed: %s", self.address, exc)
                    time.sleep(0.1)
                    continue
                self._admit(conn)

    def _admit(self, conn: socket.socket) -> None:
        try:
            uid = wire.peer_uid(conn)
        except OSError:
            conn.close()
            return
        if uid is not None and uid != self._uid:
            self.counters["refused"] += 1
            log.warning("%s: refused a producer of uid %d", self.address, uid)
            self._refuse(
                conn, "ProtocolError", f"uid {uid} may not enqueue (owner uid {self._uid})"
            )
            return
        state = _Conn()
        with self._conns_mu:
            busy = self._stop.is_set() or len(self._conns) >= self.max_connections
            if not busy:
                self._conns[conn] = state
        if busy:
            self.counters["busy"] += 1
            self._refuse(conn, "ServerBusy", f"{self.max_connections} producers connected")
            return
        self.counters["connections"] += 1
        thread = threading.Thread(
            target=self._serve, args=(conn, state), name="walq-producer", daemon=True
        )
        state.thread = thread
        thread.start()

    def _refuse(self, conn: socket.socket, error: str, message: str) -> None:
        conn.setblocking(False)
        with contextlib.suppress(OSError):
            conn.send(wire.reply_frame({"ok": False, "error": error, "message": message}))
        conn.close()

    def _serve(self, conn: socket.socket, state: _Conn) -> None:
        """One producer's connection: read a request, enqueue, reply; until it ends."""
        reader = wire.Reader(conn)
        try:
            while True:
                with self._conns_mu:
                    if self._stop.is_set():
                        return
                    state.idle = True
                conn.settimeout(self.idle_timeout)
                try:
                    length = reader.length()
                except (TimeoutError, ProtocolError):
                    return  # idle too long, or closed inside the length prefix
                state.idle = False
                if length is None:
                    return
                if length > self.max_message:
                    self._reply_error(
                        conn,
                        ProtocolError(
                            f"message of {length} bytes exceeds the {self.max_message}-byte limit"
                        ),
                    )
                    return
                conn.settimeout(self.io_timeout)
                try:
                    body = reader.body(length)
                except TimeoutError:
                    self._reply_error(
                        conn,
                        ProtocolError(
                            f"message truncated: no bytes for {self.io_timeout}s"
                            f" of a {length}-byte message"
                        ),
                    )
                    return
                except ProtocolError:
                    return  # the producer closed mid-message: nobody to answer
                conn.sendall(wire.reply_frame(self._handle(body)))
        except OSError:
            pass  # the producer went away
        finally:
            with self._conns_mu:
                self._conns.pop(conn, None)
            conn.close()

    def _reply_error(self, conn: socket.socket, exc: WalqError) -> None:
        self.counters["errors"] += 1
        log.warning("%s: %s", self.address, exc)
        with contextlib.suppress(OSError):
            conn.sendall(wire.reply_frame(_error(exc)))

    def _handle(self, body: bytes | bytearray) -> dict[str, Any]:
        """The reply to one request."""
        self.counters["requests"] += 1
        try:
            header, items = wire.decode_body(body)
            op = header.get("op")
            if op == "poke":
                self.poke()
                return {"ok": True}
            if op != "enqueue":
                raise ProtocolError(f"unknown op {excerpt(op)}")
            ids = self.queue.enqueue_many([item.for_queue() for item in items], sync=True)
            return {"ok": True, "ids": ids}
        except WalqError as exc:
            self.counters["errors"] += 1
            return _error(exc)
        except Exception as exc:  # a bug must not take the owner down with it
            self.counters["errors"] += 1
            log.exception("%s: request failed", self.address)
            return {"ok": False, "error": "WalqError", "message": f"internal error: {exc!r}"}

    # -- the spool ---------------------------------------------------------------------

    def _poll_loop(self) -> None:
        interval = self.poll_interval
        assert interval is not None
        wait = interval
        while True:
            self._poked.wait(wait)
            if self._stop.is_set():
                return
            self._poked.clear()
            try:
                self.ingest()
            except Exception:
                wait = min(max(wait * 2, 1.0), 60.0)  # back off while it keeps failing
                log.exception("%s: spool ingestion failed; next try in %.0fs", self.spool_dir, wait)
            else:
                wait = interval

    def reconcile(self) -> int:
        """Settle the spool files a crashed owner had enqueued but not removed; how many.

        A file whose items are all in the log (queue.replayed_origins) is
        removed; one the crash cut in the middle of has the rest of its items
        moved to a file of their own first. Done before anything else (and
        under `ingest_lock`), so that afterwards no spool file has items in the
        log, and a compaction that drops ENQUEUE records loses no origin that
        matters.
        """
        seen = self.queue.replayed_origins
        stems = {o.rpartition("#")[0] for o in seen}
        if not stems:
            return 0
        try:
            names = self.fs.listdir(self.spool_dir)
        except FileNotFoundError:
            return 0
        settled: list[str] = []
        with self._ingest_mu, self.ingest_lock:
            for entry in spool.live_entries(names):
                if entry.stem not in stems:
                    continue
                loaded = self._load(entry)
                if loaded is None:
                    continue
                if loaded.todo:
                    moved = spool.write_remainder(
                        self.fs, self.spool_dir, entry, loaded.wall, loaded.todo
                    )
                    log.info(
                        "%s/%s: partly ingested before a crash; the rest moved to %s",
                        self.spool_dir,
                        entry.name,
                        moved,
                    )
                settled.append(entry.name)
            if settled:
                self.fs.sync_dir(self.spool_dir)  # the moved items are durable first
                for name in settled:
                    with contextlib.suppress(FileNotFoundError):
                        self.fs.remove(posixpath.join(self.spool_dir, name))
                self.fs.sync_dir(self.spool_dir)
        return len(settled)

    def ingest(self) -> int:
        """Ingest every whole spool file now; return how many items were enqueued."""
        with self._ingest_mu:
            return self._ingest()

    def _ingest(self) -> int:
        try:
            names = self.fs.listdir(self.spool_dir)
        except FileNotFoundError:
            return 0
        self._sweep_tmp(names)
        added = 0
        batch: list[_File] = []
        size = count = 0
        for entry in spool.live_entries(names):
            if self._stop.is_set():
                break
            if entry.name in self._unlink_pending:
                with self.ingest_lock:
                    self._unlink([entry.name])
                continue
            if entry.name in self._stuck:
                continue
            loaded = self._load(entry)
            if loaded is None:
                continue
            batch.append(loaded)
            size += entry.size
            count += len(loaded.todo)
            if size >= self.batch_bytes or count >= self.batch_items:
                n, go_on = self._flush(batch)
                added += n
                if not go_on:
                    return added
                batch, size, count = [], 0, 0
        if batch:
            added += self._flush(batch)[0]
        return added

    def _sweep_tmp(self, names: list[str]) -> None:
        """Remove the .tmp files of producers that died mid-write (older than a minute)."""
        now = time.time_ns()
        for name in names:
            started = spool.tmp_time_ns(name)
            if started is not None and now - started > spool.TMP_MAX_AGE_NS:
                with contextlib.suppress(FileNotFoundError):
                    self.fs.remove(posixpath.join(self.spool_dir, name))
                    self.counters["tmp_removed"] += 1
                    log.info("%s/%s: removed a producer's unfinished file", self.spool_dir, name)

    def _load(self, entry: spool.Entry) -> _File | None:
        """A spool file's items not yet in the log; None if gone or damaged (set aside)."""
        name = entry.name
        path = posixpath.join(self.spool_dir, name)
        try:
            spooled = spool.read(self.fs, path)
        except FileNotFoundError:
            return None
        except (CorruptionError, OSError) as exc:
            self.counters["damaged_files"] += 1
            log.error("%s: cannot ingest (%s); set aside as %s", path, exc, name + spool.DAMAGED)
            self._set_aside(name, spool.DAMAGED)
            return None
        seen = self.queue.replayed_origins
        todo = [
            (i, item)
            for i, item in enumerate(spooled.items)
            if spool.origin(entry.stem, i) not in seen
        ]
        return _File(name, entry.stem, spooled.wall, todo)

    def _flush(self, batch: list[_File]) -> tuple[int, bool]:
        """Enqueue a batch of files durably, then unlink them; (items added, go on?)."""
        with self.ingest_lock:
            try:
                added = self._enqueue(batch)
                done, go_on = batch, True
            except (ClosedError, LogFailedError):
                return 0, False
            except WalqError:
                added, done, go_on = self._one_by_one(batch)
            self._unlink([f.name for f in done])
        self.counters["ingested_jobs"] += added
        self.counters["ingested_files"] += len(done)
        if done and self._waiting_logged:
            self._waiting_logged = False
            log.info("%s: ingesting again", self.spool_dir)
        return added, go_on

    def _one_by_one(self, batch: list[_File]) -> tuple[int, list[_File], bool]:
        """After a batch failed: each file alone; set aside those the queue refuses."""
        added = 0
        done: list[_File] = []
        for f in batch:
            try:
                added += self._enqueue([f])
            except (ClosedError, LogFailedError):
                return added, done, False
            except QueueFull as exc:
                if not self._waiting_logged:
                    self._waiting_logged = True
                    log.warning("%s: ingestion waits: %s", self.spool_dir, exc)
                return added, done, False
            except WalqError as exc:
                self.counters["rejected_files"] += 1
                log.error(
                    "%s/%s: refused by the queue (%s); set aside as %s",
                    self.spool_dir,
                    f.name,
                    exc,
                    f.name + spool.REJECTED,
                )
                self._set_aside(f.name, spool.REJECTED)
                continue
            done.append(f)
        return added, done, True

    def _enqueue(self, files: list[_File]) -> int:
        now = time.time()
        items = []
        for f in files:
            for i, item in f.todo:
                delay = max(0.0, f.wall + item.delay - now) if item.delay else 0.0
                items.append(item.for_queue(delay=delay, origin=spool.origin(f.stem, i)))
        if items:
            self.queue.enqueue_many(items, sync=True)
        return len(items)

    def _unlink(self, names: list[str]) -> None:
        """Remove ingested files and make that durable; remember the ones that resist."""
        for name in names:
            try:
                self.fs.remove(posixpath.join(self.spool_dir, name))
            except FileNotFoundError:
                pass
            except OSError as exc:
                if name not in self._unlink_pending:
                    log.error(
                        "%s/%s: ingested, but cannot remove it: %s", self.spool_dir, name, exc
                    )
                self._unlink_pending.add(name)
                continue
            self._unlink_pending.discard(name)
        if names:
            self.fs.sync_dir(self.spool_dir)

    def _set_aside(self, name: str, suffix: str) -> None:
        path = posixpath.join(self.spool_dir, name)
        try:
            self.fs.rename(path, path + suffix)
            self.fs.sync_dir(self.spool_dir)
        except OSError as exc:
            log.error("%s: cannot set it aside (%s); skipping it", path, exc)
            self._stuck.add(name)

    # -- helpers ---------------------------------------------------------------------------

    def _spawn(self, target: Any, name: str) -> threading.Thread:
        thread = threading.Thread(target=target, name=name, daemon=True)
        self._threads.append(thread)
        thread.start()
        return thread


def _error(exc: BaseException) -> dict[str, Any]:
    return {"ok": False, "error": type(exc).__name__, "message": str(exc)}
