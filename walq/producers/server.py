"""The owner's side of walq.connect: a Unix socket for producers, and spool ingestion.

`ProducerServer(queue).start()` ingests the spool, listens on the queue's
socket (walq.producers.wire.socket_address) and polls the spool in the background;
`stop()` answers the requests in flight and stops. Idle connections wait in
one selector loop (the accept thread), so an idle producer holds a descriptor,
not a thread; a connection with a request goes to a pool of at most
`max_handlers` threads, each calling `queue.enqueue_many(items, sync=True)`,
so concurrent producers share the queue's group commit. A handler keeps a busy
connection for `linger` seconds after each reply, then hands it back.

Ingestion, exactly-once across crashes, is walq.producers.ingest's; the server
needs of its queue only what `IngestTarget` names (an open Queue is one).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import queue as queue_mod
import select
import selectors
import socket
import threading
import time
from typing import Any

import attrs

from walq.backend import QueueBackend
from walq.core.text import excerpt
from walq.errors import ProtocolError, WalqError
from walq.producers import wire
from walq.producers.control import Control, args_of, result_reply
from walq.producers.ingest import IngestTarget, SpoolIngester

log = logging.getLogger("walq.server")


@attrs.define
class _Conn:
    reader: wire.Reader
    uid: int | None = None  # the peer's (SO_PEERCRED), for the admin log
    pid: int = 0
    idle: bool = True  # waiting in the selector for its next request
    since: float = 0.0  # time.monotonic() when it last went idle


class ProducerServer:
    """Serves producers for an open queue: the socket, and the spool's ingestion."""

    def __init__(
        self,
        queue: IngestTarget,
        *,
        admin: QueueBackend | None = None,
        listen: bool = True,
        poll_interval: float | None = 0.5,
        max_connections: int = 1024,
        max_handlers: int = 64,
        linger: float = 0.05,
        max_message: int = wire.MAX_MESSAGE,
        io_timeout: float = 10.0,
        idle_timeout: float = 60.0,
        batch_items: int = 1000,
        batch_bytes: int = 8 << 20,
    ) -> None:
        self.queue = queue
        # Administrative requests (walq.producers.control) act on `admin`: the same queue.
        self.control = None if admin is None else Control(admin)
        self.address = wire.socket_address(queue.path) if listen else None
        self.poll_interval = poll_interval
        self.max_connections = max_connections
        self.max_handlers = max_handlers
        self.linger = linger
        self.max_message = max_message
        self.io_timeout = io_timeout
        self.idle_timeout = idle_timeout
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
        self._sel: selectors.BaseSelector | None = None  # the accept thread's only
        self._parked: list[socket.socket] = []  # handed back by handlers (under _conns_mu)
        self._ready: queue_mod.SimpleQueue[tuple[socket.socket, _Conn] | None] = (
            queue_mod.SimpleQueue()
        )
        self._handlers: list[threading.Thread] = []
        self._queued = 0  # connections put on _ready and not yet taken (under _conns_mu)
        self._free_handlers = 0  # handlers waiting on _ready (under _conns_mu)
        self._busy_logged = 0.0
        self._idle_checked = 0.0
        self._squatter: tuple[int, int] | None = None  # (pid, uid) holding our socket name
        self._started = False
        self._uid = os.geteuid()
        self.counters = dict.fromkeys(
            (
                "connections",
                "refused",
                "busy",
                "squatted",
                "requests",
                "errors",
            ),
            0,
        )
        self.spool = SpoolIngester(
            queue, self.counters, self._stop, batch_items=batch_items, batch_bytes=batch_bytes
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
        self.spool.prepare()
        self.reconcile()
        try:
            self.ingest()
        except Exception:  # the poll retries; the owner need not stay down for it
            log.exception("%s: spool ingestion failed; trying again later", self.spool.spool_dir)
        if self.address is not None:
            self._listen(self.address)
        if self.poll_interval is not None:
            self._spawn(self._poll_loop, "walq-spool")

    def stop(self, timeout: float | None = None) -> None:
        """Stop accepting; answer requests in flight (up to `timeout`); stop polling."""
        if not self._started or self._stop.is_set():
            return
        with self._conns_mu:
            self._stop.set()  # the accept thread closes the idle connections as it ends
            for _ in self._handlers:
                self._ready.put(None)
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
            threads = self._threads + self._handlers
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
            sock.listen(min(self.max_connections, socket.SOMAXCONN))
            sock.setblocking(False)
        except OSError as exc:
            sock.close()
            if tmp is not None:
                with contextlib.suppress(OSError):
                    os.remove(tmp)
            if exc.errno == errno.EADDRINUSE and address.startswith("\0"):
                self._squatted(address)
            else:
                log.warning("%s: cannot listen (%s); producers will use the spool", address, exc)
            return
        if self._squatter is not None:
            log.warning("%s: the socket name is free again; serving producers", self._where())
            self._squatter = None
        self._listener = sock
        self._wake_r, self._wake_w = socket.socketpair()
        self._accepter = self._spawn(self._accept_loop, "walq-accept")

    def _squatted(self, address: str) -> None:
        """Another process holds our abstract socket name: say who, loudly, once per squatter."""
        who: tuple[int, int] = (0, -1)  # (pid, uid); unknown if it will not answer
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            probe.settimeout(1.0)
            with contextlib.suppress(OSError):
                probe.connect(address)
                uid = wire.peer_uid(probe)
                who = (wire.peer_pid(probe), -1 if uid is None else uid)
        self.counters["squatted"] += 1
        if who == self._squatter:
            return
        self._squatter = who
        pid, uid = who
        holder = f"pid {pid} of uid {uid}" if uid >= 0 else "a process that does not answer"
        stranger = " (another user: not walq's owner)" if uid not in (-1, self._uid) else ""
        log.error(
            "%s: the owner's socket name is taken by %s%s; producers spool instead of"
            " reaching this owner until it is free (tried again every poll)",
            self._where(),
            holder,
            stranger,
        )

    def _where(self) -> str:
        address = self.address or ""
        return f"abstract socket @{address[1:]}" if address.startswith("\0") else address

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
        """Accept, and watch every idle connection: one ready to read goes to a handler."""
        listener, wake = self._listener, self._wake_r
        assert listener is not None and wake is not None
        sel = self._sel = selectors.DefaultSelector()
        sel.register(listener, selectors.EVENT_READ)
        sel.register(wake, selectors.EVENT_READ)
        try:
            while not self._stop.is_set():
                ready = sel.select(timeout=min(1.0, self.idle_timeout))
                if self._stop.is_set():
                    return
                for key, _ in ready:
                    if key.fileobj is wake:
                        with contextlib.suppress(OSError):
                            wake.recv(4096)
                    elif key.fileobj is listener:
                        self._accept(listener)
                    else:
                        conn = key.fileobj
                        assert isinstance(conn, socket.socket)
                        sel.unregister(conn)
                        self._dispatch(conn, key.data)
                self._take_parked()
                self._close_idle()
        finally:
            self._sel = None
            with self._conns_mu:
                idle = [c for c, state in self._conns.items() if state.idle]
            for conn in idle:
                self._drop(conn)
            sel.close()

    def _accept(self, listener: socket.socket) -> None:
        try:
            conn, _ = listener.accept()
        except BlockingIOError:
            return
        except OSError as exc:  # e.g. EMFILE: back off rather than spin
            log.warning("%s: accept failed: %s", self._where(), exc)
            time.sleep(0.1)
            return
        self._admit(conn)

    def _admit(self, conn: socket.socket) -> None:
        try:
            uid = wire.peer_uid(conn)
        except OSError:
            conn.close()
            return
        if uid is not None and uid != self._uid:
            self.counters["refused"] += 1
            log.warning("%s: refused a producer of uid %d", self._where(), uid)
            self._refuse(
                conn,
                "ProtocolError",
                f"uid {uid} may not enqueue or administer (owner uid {self._uid})",
            )
            return
        state = _Conn(wire.Reader(conn), uid, wire.peer_pid(conn), since=time.monotonic())
        with self._conns_mu:
            busy = self._stop.is_set() or len(self._conns) >= self.max_connections
            if not busy:
                self._conns[conn] = state
        if busy:
            self.counters["busy"] += 1
            now = time.monotonic()
            if now - self._busy_logged > 60.0:  # once a minute: a flood must not flood the log
                self._busy_logged = now
                log.warning(
                    "%s: %d producer connections open: turning producers away (they spool);"
                    " %d turned away so far",
                    self._where(),
                    self.max_connections,
                    self.counters["busy"],
                )
            self._refuse(conn, "ServerBusy", f"{self.max_connections} producers connected")
            return
        self.counters["connections"] += 1
        assert self._sel is not None
        self._sel.register(conn, selectors.EVENT_READ, state)

    def _dispatch(self, conn: socket.socket, state: _Conn) -> None:
        """Hand a connection with bytes to read to a handler thread (one more if all are busy)."""
        with self._conns_mu:
            if self._stop.is_set():  # stop() has counted the handlers it must end
                self._conns.pop(conn, None)
                conn.close()
                return
            state.idle = False
            self._queued += 1
            spawn = self._queued > self._free_handlers and len(self._handlers) < self.max_handlers
            if spawn:
                thread = threading.Thread(
                    target=self._handle_loop, name="walq-producer", daemon=True
                )
                self._handlers.append(thread)
        self._ready.put((conn, state))
        if spawn:
            thread.start()

    def _handle_loop(self) -> None:
        while True:
            with self._conns_mu:
                self._free_handlers += 1
            item = self._ready.get()
            with self._conns_mu:
                self._free_handlers -= 1
                if item is not None:
                    self._queued -= 1
            if item is None or self._stop.is_set():
                if item is not None:
                    self._drop(item[0])
                return
            conn, state = item
            if self._serve(conn, state):
                self._park(conn, state)
            else:
                self._drop(conn)

    def _park(self, conn: socket.socket, state: _Conn) -> None:
        """Give an idle connection back to the accept thread's selector."""
        with self._conns_mu:
            if self._stop.is_set():
                stopped = True
            else:
                stopped = False
                state.idle, state.since = True, time.monotonic()
                self._parked.append(conn)
        if stopped:
            self._drop(conn)
            return
        if self._wake_w is not None:
            with contextlib.suppress(OSError):
                self._wake_w.send(b"p")

    def _take_parked(self) -> None:
        with self._conns_mu:
            parked, self._parked = self._parked, []
            states = [self._conns.get(c) for c in parked]
        assert self._sel is not None
        for conn, state in zip(parked, states, strict=True):
            if state is not None:
                self._sel.register(conn, selectors.EVENT_READ, state)

    def _close_idle(self) -> None:
        """Close connections idle for longer than idle_timeout (their producers reconnect)."""
        now = time.monotonic()
        if now - self._idle_checked < min(1.0, self.idle_timeout):
            return  # a scan of every connection, not at each request
        self._idle_checked = now
        cutoff = now - self.idle_timeout
        with self._conns_mu:
            old = [c for c, s in self._conns.items() if s.idle and s.since < cutoff]
        assert self._sel is not None
        for conn in old:
            with contextlib.suppress(KeyError, ValueError):
                self._sel.unregister(conn)
            self._drop(conn)

    def _drop(self, conn: socket.socket) -> None:
        with self._conns_mu:
            self._conns.pop(conn, None)
        conn.close()

    def _refuse(self, conn: socket.socket, error: str, message: str) -> None:
        conn.setblocking(False)
        with contextlib.suppress(OSError):
            conn.send(wire.reply_frame({"ok": False, "error": error, "message": message}))
        conn.close()

    def _serve(self, conn: socket.socket, state: _Conn) -> bool:
        """Answer a connection's requests while it sends them; whether to keep it (idle)."""
        reader = state.reader
        try:
            while True:
                conn.settimeout(self.io_timeout)
                try:
                    length = reader.length()
                except (TimeoutError, ProtocolError):
                    return False  # a stalled or closed length prefix
                if length is None:
                    return False  # the producer closed the connection
                if length > self.max_message:
                    self._reply_error(
                        conn,
                        ProtocolError(
                            f"message of {length} bytes exceeds the {self.max_message}-byte limit"
                        ),
                    )
                    return False
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
                    return False
                except ProtocolError:
                    return False  # the producer closed mid-message: nobody to answer
                conn.sendall(wire.reply_frame(self._handle(body, state)))
                if self._stop.is_set():
                    return False
                if not reader.buffered() and not _readable(conn, self.linger):
                    return True
        except OSError:
            return False  # the producer went away

    def _reply_error(self, conn: socket.socket, exc: WalqError) -> None:
        self.counters["errors"] += 1
        log.warning("%s: %s", self.address, exc)
        with contextlib.suppress(OSError):
            conn.sendall(wire.reply_frame(_error(exc)))

    def _handle(self, body: bytes | bytearray, peer: _Conn | None = None) -> dict[str, Any]:
        """The reply to one request."""
        self.counters["requests"] += 1
        try:
            header, items = wire.decode_body(body)
            op = header.get("op")
            if op == "poke":
                self.poke()
                return {"ok": True}
            if op == "admin" and self.control is not None:
                action, args = args_of(header)
                uid, pid = (None, 0) if peer is None else (peer.uid, peer.pid)
                return result_reply(self.control.handle(action, args, uid=uid, pid=pid))
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
            if self._squatter is not None and self.address is not None:
                self._listen(self.address)  # the squatter may have gone
            try:
                self.ingest()
            except Exception:
                wait = min(max(wait * 2, 1.0), 60.0)  # back off while it keeps failing
                log.exception(
                    "%s: spool ingestion failed; next try in %.0fs", self.spool.spool_dir, wait
                )
            else:
                wait = interval

    def reconcile(self) -> int:
        """Settle the spool files a crashed owner had enqueued but not removed; how many
        (SpoolIngester.reconcile)."""
        return self.spool.reconcile()

    def ingest(self) -> int:
        """Ingest every whole spool file now; return how many items were enqueued."""
        return self.spool.ingest()

    # -- helpers ---------------------------------------------------------------------------

    def _spawn(self, target: Any, name: str) -> threading.Thread:
        thread = threading.Thread(target=target, name=name, daemon=True)
        self._threads.append(thread)
        thread.start()
        return thread


def _readable(conn: socket.socket, timeout: float) -> bool:
    """Whether `conn` has bytes (or its end) to read within `timeout` seconds."""
    poller = select.poll()
    poller.register(conn, select.POLLIN)
    return bool(poller.poll(timeout * 1000))


def _error(exc: BaseException) -> dict[str, Any]:
    return {"ok": False, "error": type(exc).__name__, "message": str(exc)}
