"""aconnect: walq.connect for asyncio code (uvicorn/FastAPI workers).

    async with await walq.aconnect("/var/lib/app/queue") as producer:
        job_id = await producer.enqueue("send_email", {"to": "a@b"})

The same semantics as walq.connect (walq.producers.client, docs/PRODUCERS.md):
with an owner running, the request goes over its Unix socket (asyncio
streams) and the reply carries the ids once the owner made the jobs durable;
with none, the request is written durably to the spool (in a thread: files
and fsyncs) and the call returns None. The wire format, the error names a
reply may carry and when to spool instead are walq.producers.wire's and
walq.producers.client's.

Concurrent calls share requests: while up to `connections` requests are in
flight, the calls made meanwhile queue up and go as ONE request (at most
BATCH_ITEMS items, BATCH_BYTES of payload), whose ids are handed back to
each caller. If the owner refuses such a shared request (QueueFull, ...),
each caller's own items are sent again alone, so one caller's error is
never another's.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket
from collections.abc import Iterable
from datetime import datetime
from types import TracebackType
from typing import Any, cast

from walq.backends import check_not_url
from walq.core.jobspec import DEFAULT_MAX_PAYLOAD
from walq.directory.fs import FileSystem, OsFileSystem
from walq.errors import ArgumentError, ClosedError, PayloadError, ProtocolError, WalqError
from walq.producers import wire
from walq.producers.client import (
    _ERRORS,
    _NO_OWNER,
    _SPOOL_ON,
    BACKLOG_WAIT,
    DEFAULT_MAX_SPOOL_BYTES,
    DEFAULT_MAX_SPOOL_FILES,
)
from walq.producers.spool import SpoolWriter

log = logging.getLogger("walq.producer")

DEFAULT_CONNECTIONS = 16
BATCH_ITEMS = 1000  # items of one shared request
BATCH_BYTES = 4 << 20  # payload bytes of one shared request

_Stream = tuple[asyncio.StreamReader, asyncio.StreamWriter]
_Entry = tuple[list[wire.Item], "asyncio.Future[list[int] | None]"]


class AsyncProducer:
    """Adds jobs to the queue in one directory from asyncio code; see `aconnect`."""

    def __init__(
        self,
        path: str,
        *,
        fs: FileSystem | None = None,
        use_socket: bool = True,
        max_spool_files: int = DEFAULT_MAX_SPOOL_FILES,
        max_spool_bytes: int = DEFAULT_MAX_SPOOL_BYTES,
        max_payload: int = DEFAULT_MAX_PAYLOAD,
        timeout: float = 60.0,
        lock_timeout: float = 30.0,
        trust_dir: bool = False,
        connections: int = DEFAULT_CONNECTIONS,
    ) -> None:
        for name, cap in (
            ("max_spool_files", max_spool_files),
            ("max_spool_bytes", max_spool_bytes),
            ("connections", connections),
        ):
            if isinstance(cap, bool) or not isinstance(cap, int) or cap < 1:
                raise ArgumentError(f"{name} must be a positive integer")
        if not timeout > 0 or not lock_timeout >= 0:
            raise ArgumentError("timeout must be positive and lock_timeout non-negative")
        self.path = str(path)
        self.max_payload = max_payload
        self.timeout = timeout
        self.connections = connections
        self.address = wire.socket_address(self.path) if use_socket else None
        self._spool = SpoolWriter(
            fs or OsFileSystem(),
            self.path,
            max_files=max_spool_files,
            max_bytes=max_spool_bytes,
            lock_timeout=lock_timeout,
            trust_dir=trust_dir,
        )
        self._idle: list[_Stream] = []
        self._waiting: list[_Entry] = []
        self._senders = 0  # requests in flight (each holds one connection)
        self._tasks: set[asyncio.Future[None]] = set()
        self._closed = False
        self.sent = {"socket": 0, "spool": 0}  # requests by the way they went

    # -- the public API ----------------------------------------------------------------

    async def enqueue(
        self,
        task: str,
        payload: Any = None,
        *,
        key: str | None = None,
        delay: float = 0.0,
        priority: int = 0,
        max_attempts: int | None = None,
        after: Iterable[int] | None = None,
        after_policy: str = "cancel",
        run_at: datetime | None = None,
        unique_for: float | None = None,
    ) -> int | None:
        """Add a job; return once it is durable: its id from the owner, or None if spooled.

        Options as for QueueBackend.enqueue (walq/backend.py).
        """
        item = wire.make_item(
            task,
            payload,
            key=key,
            delay=delay,
            priority=priority,
            max_attempts=max_attempts,
            after=after,
            after_policy=after_policy,
            run_at=run_at,
            unique_for=unique_for,
            max_payload=self.max_payload,
        )
        ids = await self._submit([item])
        return None if ids is None else ids[0]

    async def enqueue_many(
        self, items: Iterable[tuple[str, Any] | tuple[str, Any, dict[str, Any]]]
    ) -> list[int] | None:
        """Add many jobs, items (task, payload[, options]); ids, or None if spooled."""
        prepared = [wire.item_from(entry, self.max_payload) for entry in items]
        self._check_open()
        if not prepared:
            return []
        return await self._submit(prepared)

    async def close(self) -> None:
        """Close the connections to the owner (idempotent)."""
        self._closed = True
        idle, self._idle = self._idle, []
        for _, writer in idle:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def __aenter__(self) -> AsyncProducer:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- sharing requests ----------------------------------------------------------------

    async def _submit(self, items: list[wire.Item]) -> list[int] | None:
        self._check_open()
        if self.address is not None:
            _check_size(wire.encode_body({"op": "enqueue"}, items))
        fut: asyncio.Future[list[int] | None] = asyncio.get_running_loop().create_future()
        self._waiting.append((items, fut))
        if self._senders < self.connections:
            self._senders += 1
            task = asyncio.ensure_future(self._drain())
            self._tasks.add(task)  # held: the loop keeps only weak references to tasks
            task.add_done_callback(self._tasks.discard)
        return await fut

    async def _drain(self) -> None:
        """Send what waits, one shared request at a time, until nothing does."""
        try:
            while self._waiting:
                batch = self._take_batch()
                try:
                    await self._send_shared(batch)
                except BaseException as exc:  # every caller of the batch hears of it
                    _settle(batch, error=exc)
                    if not isinstance(exc, Exception):
                        raise
        finally:
            self._senders -= 1

    def _take_batch(self) -> list[_Entry]:
        batch: list[_Entry] = []
        count = size = 0
        while self._waiting:
            items, fut = self._waiting[0]
            if fut.done():  # the caller gave up (cancelled): send nothing for it
                self._waiting.pop(0)
                continue
            if batch and (
                count + len(items) > BATCH_ITEMS
                or size + sum(len(i.data) for i in items) > BATCH_BYTES
            ):
                break
            self._waiting.pop(0)
            batch.append((items, fut))
            count += len(items)
            size += sum(len(i.data) for i in items)
        return batch

    async def _send_shared(self, batch: list[_Entry]) -> None:
        if not batch:
            return
        items = [item for entry_items, _ in batch for item in entry_items]
        try:
            ids = await self._send(items)
        except WalqError:
            if len(batch) == 1:
                raise
            for entry in batch:  # each caller's items alone: its own error, or its ids
                try:
                    _settle([entry], ids=await self._send(entry[0]))
                except WalqError as exc:
                    _settle([entry], error=exc)
            return
        if ids is None:
            _settle(batch, ids=None)
            return
        if len(ids) != len(items):
            raise ProtocolError(f"{self._where()}: {len(ids)} ids for {len(items)} items")
        at = 0
        for entry_items, fut in batch:
            if not fut.done():
                fut.set_result(ids[at : at + len(entry_items)])
            at += len(entry_items)

    # -- routing (as walq.producers.client.Producer) ------------------------------------

    async def _send(self, items: list[wire.Item]) -> list[int] | None:
        if self.address is not None:
            ids = await self._via_socket(wire.encode_body({"op": "enqueue"}, items))
            if ids is not None:
                self.sent["socket"] += 1
                return ids
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self._spool.put, items)
        self.sent["spool"] += 1
        await self._poke()
        return None

    async def _via_socket(self, body: bytes) -> list[int] | None:
        """The ids the owner gave, or None if the request must go to the spool."""
        message = wire.frame(body)
        for _ in range(2):
            stream = await self._take()
            if stream is None:
                return None
            reader, writer = stream
            try:
                writer.write(message)
                await writer.drain()
            except OSError:
                # The owner stopped reading: nothing was enqueued. A refusal it sent
                # before (ServerBusy) may be waiting.
                reply = await self._refusal(reader)
                writer.close()
                if reply is None:
                    continue
            else:
                reply = await self._exchange(stream)
                if reply is None:
                    continue
            if not reply["ok"]:
                name, text = str(reply.get("error")), str(reply.get("message", ""))
                if name in _SPOOL_ON:
                    writer.close()
                    return None
                self._give(stream)
                raise _ERRORS.get(name, WalqError)(text or name)
            self._give(stream)
            ids = reply.get("ids")
            if not isinstance(ids, list) or not all(isinstance(i, int) for i in ids):
                raise ProtocolError(f"{self._where()}: reply has no list of ids")
            return ids
        return None

    async def _exchange(self, stream: _Stream) -> dict[str, Any] | None:
        """The reply to the request just sent; None (connection closed) if none came."""
        reader, writer = stream
        try:
            return await asyncio.wait_for(_read_reply(reader), self.timeout)
        except asyncio.TimeoutError:
            writer.close()
            raise ProtocolError(
                f"{self._where()}: no reply within {self.timeout}s;"
                " the jobs may or may not have been enqueued"
            ) from None
        except (OSError, ProtocolError, asyncio.IncompleteReadError) as exc:
            # As Producer._exchange: the owner died or closed after the request was
            # sent; send again (a keyed job coalesces, an unkeyed one may repeat).
            log.warning("%s: no reply (%s); sending again", self._where(), exc)
            writer.close()
            return None

    async def _refusal(self, reader: asyncio.StreamReader) -> dict[str, Any] | None:
        try:
            reply = await asyncio.wait_for(_read_reply(reader), 0.5)
        except (OSError, ProtocolError, asyncio.IncompleteReadError, asyncio.TimeoutError):
            return None
        return None if reply["ok"] else reply

    async def _poke(self) -> None:
        """Tell an owner that appeared meanwhile to ingest the spool now (best effort)."""
        if self.address is None:
            return
        stream = await self._take()
        if stream is None:
            return
        reader, writer = stream
        try:
            writer.write(wire.frame(wire.encode_body({"op": "poke"}, [])))
            await writer.drain()
            reply = await asyncio.wait_for(_read_reply(reader), self.timeout)
        except (OSError, ProtocolError, asyncio.IncompleteReadError, asyncio.TimeoutError):
            writer.close()
            return
        if reply["ok"]:
            self._give(stream)
        else:
            writer.close()

    # -- connections -------------------------------------------------------------------

    async def _take(self) -> _Stream | None:
        while self._idle:
            reader, writer = self._idle.pop()
            if not reader.at_eof() and not writer.is_closing():
                return reader, writer
            writer.close()  # the owner closed it (idle timeout, stop): nothing pending
        return await self._connect()

    def _give(self, stream: _Stream) -> None:
        if self._closed or stream[1].is_closing():
            stream[1].close()
        else:
            self._idle.append(stream)

    async def _connect(self) -> _Stream | None:
        assert self.address is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + min(self.timeout, BACKLOG_WAIT)
        while True:
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_unix_connection(self.address, limit=wire.MAX_REPLY + 4),
                    self.timeout,
                )
                break
            except asyncio.TimeoutError:
                return None
            except OSError as exc:
                if exc.errno == errno.EAGAIN:  # the owner's listen backlog is full
                    if loop.time() < deadline:
                        await asyncio.sleep(0.005)
                        continue
                    log.warning(
                        "%s: the owner's listen backlog stayed full for %.1fs; spooling",
                        self._where(),
                        min(self.timeout, BACKLOG_WAIT),
                    )
                    return None
                if exc.errno in _NO_OWNER:
                    return None
                raise OSError(exc.errno, exc.strerror, self._where()) from exc
        sock = cast(socket.socket, writer.get_extra_info("socket"))
        try:
            uid = wire.peer_uid(sock)
        except OSError:
            # The owner went away as we connected (killed): the event loop saw the reset
            # and closed the socket under us (EBADF). No owner answers: spool, as above.
            writer.close()
            return None
        if uid is not None and uid != os.geteuid():
            # As Producer._connect: not our owner (a squatter): spool instead.
            log.error(
                "%s: served by pid %d of uid %d, not by this user (%d): not sending jobs"
                " to it; spooling them",
                self._where(),
                wire.peer_pid(sock),
                uid,
                os.geteuid(),
            )
            writer.close()
            return None
        return reader, writer

    def _where(self) -> str:
        address = self.address or ""
        return f"abstract socket @{address[1:]}" if address.startswith("\0") else address

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError(f"{self.path}: the producer is closed")


async def _read_reply(reader: asyncio.StreamReader) -> dict[str, Any]:
    head = await reader.readexactly(4)
    length = int.from_bytes(head, "little")
    if length > wire.MAX_REPLY:
        raise ProtocolError(f"reply of {length} bytes is too large")
    return wire.decode_reply(await reader.readexactly(length))


def _check_size(body: bytes) -> None:
    if len(body) > wire.MAX_MESSAGE:
        raise PayloadError(
            f"request of {len(body)} bytes exceeds the {wire.MAX_MESSAGE}-byte"
            " message limit: split the batch"
        )


def _settle(
    batch: list[_Entry], *, ids: list[int] | None = None, error: BaseException | None = None
) -> None:
    for _, fut in batch:
        if fut.done():
            continue
        if error is not None:
            fut.set_exception(error)
        else:
            fut.set_result(ids)


async def aconnect(
    path: str | os.PathLike[str],
    *,
    max_spool_files: int = DEFAULT_MAX_SPOOL_FILES,
    max_spool_bytes: int = DEFAULT_MAX_SPOOL_BYTES,
    max_payload: int = DEFAULT_MAX_PAYLOAD,
    timeout: float = 60.0,
    lock_timeout: float = 30.0,
    use_socket: bool = True,
    trust_dir: bool = False,
    fs: FileSystem | None = None,
    connections: int = DEFAULT_CONNECTIONS,
) -> AsyncProducer:
    """An async producer for the queue in directory `path` (see walq.connect's options).

    Nothing is opened until the first enqueue. `connections` caps the
    requests in flight (and so the connections to the owner) at once.
    """
    check_not_url(os.fspath(path))
    return AsyncProducer(
        os.fspath(path),
        fs=fs,
        use_socket=use_socket,
        max_spool_files=max_spool_files,
        max_spool_bytes=max_spool_bytes,
        max_payload=max_payload,
        timeout=timeout,
        lock_timeout=lock_timeout,
        trust_dir=trust_dir,
        connections=connections,
    )
