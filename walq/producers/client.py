"""Enqueue from any process on the host, whether or not an owner is running.

    with walq.connect("/var/lib/app/queue") as producer:
        job_id = producer.enqueue("send_email", {"to": "a@b"}, key="email:42")

With an owner running, a request goes over the owner's Unix socket and the
owner's Queue.enqueue_many(sync=True) makes it durable: the reply carries the
job ids. With none, the request is written durably to the spool and the call
returns None (no id exists yet); the next owner ingests it exactly once. See
docs/PRODUCERS.md.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import threading
import time
from collections.abc import Iterable
from types import TracebackType
from typing import TYPE_CHECKING, Any

from walq import errors
from walq.backends import check_not_url
from walq.core.jobspec import DEFAULT_MAX_PAYLOAD
from walq.directory.fs import FileSystem, OsFileSystem
from walq.errors import ArgumentError, ClosedError, PayloadError, ProtocolError, WalqError
from walq.producers import wire
from walq.producers.control import Admin
from walq.producers.spool import SpoolWriter
from walq.producers.wire import EnqueueOptions

if TYPE_CHECKING:
    from typing_extensions import Unpack  # typing.Unpack from Python 3.11

log = logging.getLogger("walq.producer")

DEFAULT_MAX_SPOOL_FILES = 10_000
DEFAULT_MAX_SPOOL_BYTES = 256 << 20

# Replies after which the request is spooled instead: nothing was enqueued.
_SPOOL_ON = frozenset({"ServerBusy", "ClosedError", "LogFailedError"})
# Error names a reply may carry, mapped back to their classes.
_ERRORS: dict[str, type[WalqError]] = {
    cls.__name__: cls
    for cls in (
        errors.QueueFull,
        errors.PayloadError,
        errors.ArgumentError,
        errors.ProtocolError,
        errors.StateError,
        errors.ClosedError,
        errors.LogFailedError,
        errors.LockedError,
        errors.WalqError,
    )
}
# connect() errors that mean "no owner is listening": spool instead.
_NO_OWNER = frozenset({errno.ENOENT, errno.ECONNREFUSED, errno.ENOTDIR})
# Seconds a producer waits for room in a busy owner's listen backlog before spooling.
BACKLOG_WAIT = 2.0


class Producer:
    """A producer for the queue in directory `path`, usable from any process (walq.connect).

    Nothing is opened until the first enqueue. `max_spool_files` and
    `max_spool_bytes` cap the spool (QueueFull beyond them); `timeout` bounds
    the wait for the owner's reply; `use_socket=False` always spools.
    The spool is written only into a queue directory that Queue.open would
    accept: the caller's, writable by it alone, unless `trust_dir`.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        fs: FileSystem | None = None,
        use_socket: bool = True,
        max_spool_files: int = DEFAULT_MAX_SPOOL_FILES,
        max_spool_bytes: int = DEFAULT_MAX_SPOOL_BYTES,
        max_payload: int = DEFAULT_MAX_PAYLOAD,
        timeout: float = 60.0,
        lock_timeout: float = 30.0,
        trust_dir: bool = False,
    ) -> None:
        check_not_url(os.fspath(path))
        for name, cap in (
            ("max_spool_files", max_spool_files),
            ("max_spool_bytes", max_spool_bytes),
        ):
            if isinstance(cap, bool) or not isinstance(cap, int) or cap < 1:
                raise ArgumentError(f"{name} must be a positive integer")
        if not timeout > 0 or not lock_timeout >= 0:
            raise ArgumentError("timeout must be positive and lock_timeout non-negative")
        self.path = os.fspath(path)
        self.max_payload = max_payload
        self.timeout = timeout
        self.address = wire.socket_address(self.path) if use_socket else None
        self._spool = SpoolWriter(
            fs or OsFileSystem(),
            self.path,
            max_files=max_spool_files,
            max_bytes=max_spool_bytes,
            lock_timeout=lock_timeout,
            trust_dir=trust_dir,
        )
        self._mu = threading.Lock()
        self._idle: list[socket.socket] = []
        self._pid = os.getpid()
        self._closed = False
        self.sent = {"socket": 0, "spool": 0}  # requests by the way they went

    # -- the public API ----------------------------------------------------------------

    def enqueue(
        self, task: str, payload: Any = None, **options: Unpack[EnqueueOptions]
    ) -> int | None:
        """QueueBackend.enqueue (walq/backend.py) from any process, without sync or timeout.

        Returns the owner's id, or None if the request was spooled (no id exists
        yet): a key then also matches a spooled request, and the spool's caps
        may raise QueueFull.
        """
        item = wire.make_item(task, payload, max_payload=self.max_payload, **options)
        ids = self._send([item])
        return None if ids is None else ids[0]

    def enqueue_many(
        self, items: Iterable[tuple[str, Any] | tuple[str, Any, dict[str, Any]]]
    ) -> list[int] | None:
        """QueueBackend.enqueue_many (walq/backend.py) from any process; None if spooled.

        Spooled, the unkeyed items share one file and each new key gets its own.
        """
        prepared = [wire.item_from(entry, self.max_payload) for entry in items]
        if not prepared:
            self._check_open()
            return []
        return self._send(prepared)

    def close(self) -> None:
        """Close the connections to the owner (idempotent)."""
        with self._mu:
            self._closed = True
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    def __enter__(self) -> Producer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def admin(self) -> Admin:
        """Administration of this queue: through its owner, or with its lock when none runs."""
        return Admin(self.path, timeout=self.timeout)

    # -- routing -----------------------------------------------------------------------

    def _send(self, items: list[wire.Item]) -> list[int] | None:
        self._check_open()
        if self.address is not None:
            body = wire.encode_body({"op": "enqueue"}, items)
            if len(body) > wire.MAX_MESSAGE:
                raise PayloadError(
                    f"request of {len(body)} bytes exceeds the {wire.MAX_MESSAGE}-byte"
                    " message limit: split the batch"
                )
            ids = self._via_socket(body)
            if ids is not None:
                self._count("socket")
                return ids
        self._spool.put(items)
        self._count("spool")
        self._poke()
        return None

    def _via_socket(self, body: bytes) -> list[int] | None:
        """The ids the owner gave, or None if the request must go to the spool."""
        message = wire.frame(body)
        for _ in range(2):
            conn = self._take()
            if conn is None:
                return None
            try:
                conn.sendall(message)
            except OSError:
                # The owner stopped reading: it refused the connection (its reply
                # may be waiting) or went away. Either way nothing was enqueued.
                reply = self._refusal(conn)
                conn.close()
                if reply is None:
                    continue
            else:
                reply = self._exchange(conn)
                if reply is None:
                    continue
            if not reply["ok"]:
                name, text = str(reply.get("error")), str(reply.get("message", ""))
                if name in _SPOOL_ON:
                    conn.close()
                    return None
                self._give(conn)
                raise _ERRORS.get(name, WalqError)(text or name)
            self._give(conn)
            ids = reply.get("ids")
            if not isinstance(ids, list) or not all(isinstance(i, int) for i in ids):
                raise ProtocolError(f"{self._where()}: reply has no list of ids")
            return ids
        return None

    def _exchange(self, conn: socket.socket) -> dict[str, Any] | None:
        """The reply to the request just sent; None (connection closed) if none came."""
        try:
            return self._read_reply(conn)
        except TimeoutError:
            conn.close()
            raise ProtocolError(
                f"{self._where()}: no reply within {self.timeout}s;"
                " the jobs may or may not have been enqueued"
            ) from None
        except (OSError, ProtocolError) as exc:
            # The owner died (or closed) after the request was sent: it may or
            # may not have enqueued it. Try again (a new owner, or the spool):
            # a keyed job coalesces; an unkeyed one may be added twice.
            log.warning("%s: no reply (%s); sending again", self._where(), exc)
            conn.close()
            return None

    def _refusal(self, conn: socket.socket) -> dict[str, Any] | None:
        """A reply the owner sent before it stopped reading (a refusal), if any."""
        try:
            conn.settimeout(0.5)
            reply = self._read_reply(conn)
        except (OSError, ProtocolError):
            return None
        return None if reply["ok"] else reply

    def _read_reply(self, conn: socket.socket) -> dict[str, Any]:
        reader = wire.Reader(conn)  # one reply per request: nothing follows it
        length = reader.length()
        if length is None:
            raise ProtocolError("the owner closed the connection without a reply")
        if length > wire.MAX_REPLY:
            raise ProtocolError(f"reply of {length} bytes is too large")
        return wire.decode_reply(reader.body(length))

    def _poke(self) -> None:
        """Tell an owner that appeared meanwhile to ingest the spool now (best effort)."""
        if self.address is None:
            return
        conn = self._take()
        if conn is None:
            return
        try:
            conn.sendall(wire.frame(wire.encode_body({"op": "poke"}, [])))
            reply = self._read_reply(conn)
        except (OSError, ProtocolError):
            conn.close()
            return
        if reply["ok"]:
            self._give(conn)
        else:
            conn.close()

    # -- connections -------------------------------------------------------------------

    def _take(self) -> socket.socket | None:
        """An idle connection to the owner, or a new one; None if no owner listens."""
        if self._pid != os.getpid():
            # Forked: the parent's sockets are not ours to use, and its threads may
            # have held the lock at the fork (they do not exist here to release it).
            self._mu, self._idle, self._pid = threading.Lock(), [], os.getpid()
        with self._mu:
            while self._idle:
                conn = self._idle.pop()
                if _alive(conn):
                    return conn
                conn.close()  # the owner closed it (idle timeout, stop): nothing is pending
        return self._connect()

    def _give(self, conn: socket.socket) -> None:
        with self._mu:
            if self._closed or self._pid != os.getpid() or conn.fileno() < 0:
                conn.close()
            else:
                self._idle.append(conn)

    def _connect(self) -> socket.socket | None:
        assert self.address is not None
        deadline = time.monotonic() + min(self.timeout, BACKLOG_WAIT)
        while True:
            conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            conn.settimeout(self.timeout)
            try:
                conn.connect(self.address)
                break
            except OSError as exc:
                conn.close()
                if exc.errno == errno.EAGAIN:
                    # A Unix socket's listen backlog is full: the owner is there but
                    # behind on accepting. Wait for it a little before spooling.
                    if time.monotonic() < deadline:
                        time.sleep(0.005)
                        continue
                    log.warning(
                        "%s: the owner's listen backlog stayed full for %.1fs; spooling",
                        self._where(),
                        min(self.timeout, BACKLOG_WAIT),
                    )
                    return None
                if exc.errno in _NO_OWNER or isinstance(exc, TimeoutError):
                    return None
                raise OSError(exc.errno, exc.strerror, self._where()) from exc  # name the socket
        uid = wire.peer_uid(conn)
        if uid is not None and uid != os.geteuid():
            # Not our owner: another user holds the socket name (squatting). Never
            # hand it a job; the spool is there for exactly this, and the real
            # owner, which cannot listen meanwhile, says so in its log.
            pid = wire.peer_pid(conn)
            conn.close()
            log.error(
                "%s: served by pid %d of uid %d, not by this user (%d): not sending jobs"
                " to it; spooling them",
                self._where(),
                pid,
                uid,
                os.geteuid(),
            )
            return None
        return conn

    def _count(self, route: str) -> None:
        with self._mu:
            self.sent[route] += 1

    def _where(self) -> str:
        address = self.address or ""
        return f"abstract socket @{address[1:]}" if address.startswith("\0") else address

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError(f"{self.path}: the producer is closed")


def _alive(conn: socket.socket) -> bool:
    """Whether an idle connection is still open with nothing unread (one syscall)."""
    timeout = conn.gettimeout()
    conn.settimeout(0.0)  # with a timeout, recv would first wait for data
    try:
        conn.recv(1, socket.MSG_PEEK)
    except BlockingIOError:
        return True  # nothing to read: open and quiet
    except OSError:
        return False
    finally:
        conn.settimeout(timeout)
    return False  # end of stream, or bytes nobody asked for


connect = Producer  # walq.connect(path, ...): a Producer for the queue in directory `path`
