"""What producers send: checked items, the socket protocol, the socket's address.

Shared by the producer (walq.producers.client), the owner's socket server
(walq.producers.server) and the spool (walq.producers.spool), which stores a request in the same
body layout the socket carries (docs/PRODUCERS.md, "Protocol"):

    frame   = length:u32le body                  (length <= MAX_MESSAGE)
    body    = header_length:u32le header payloads
    header  = JSON object: {"op": "enqueue" | "poke", "items": [item, ...], ...}
              or {"op": "result", "id": job id, "wait": seconds} (no payloads)
    item    = {"task", "kind" (0 JSON, 1 bytes), "size", "key", "delay",
               "priority", "max_attempts", "after" (job ids), "after_policy",
               "unique_for"}                     (run_at travels as its delay)
    payloads = each item's payload bytes, back to back, in item order
    reply   = length:u32le JSON: {"ok": true, "ids": [...]}
                              or, to "result": {"ok": true, "state", "value", "kind", "text"}
                              or {"ok": false, "error": class name, "message": text}

`decode_body` parses or raises ProtocolError, never any other exception.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import socket
import struct
import sys
import time
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypedDict, TypeGuard

import attrs

from walq.core.events import AFTER_CANCEL, PAYLOAD_BYTES, PAYLOAD_JSON
from walq.core.jobspec import (
    DEFAULT_MAX_PAYLOAD,
    ENQUEUE_OPTIONS,
    EXTRA_OPTIONS,
    check_extra,
    decode_payload,
    make_spec,
    split_item,
)
from walq.core.text import excerpt
from walq.errors import JobCancelled, JobFailed, ProtocolError, ResultTimeout

if TYPE_CHECKING:
    from typing_extensions import Unpack  # typing.Unpack from Python 3.11

SOCKET_NAME = "walq.sock"
MAX_RESULT_WAIT = 1.0  # seconds the owner waits on one "result" request (the producer asks again)
MAX_MESSAGE = 64 << 20  # bytes of one request body
MAX_REPLY = 16 << 20
MAX_ITEMS = 1 << 20  # items in one request
# sun_path holds 108 bytes with the NUL; room is kept for the owner's temporary
# name (16 bytes), which it binds first and then renames to SOCKET_NAME.
_SUN_PATH = 107
_TMP_NAME_ROOM = 16
# A producer's job has no origin: the owner names the spool file it came from.
OPTIONS = ENQUEUE_OPTIONS - {"origin"}
_ITEM_FIELDS = frozenset({"task", "kind", "size", "key", "delay", "priority", "max_attempts",
                          "after", "after_policy", "unique_for"})  # fmt: skip
_U32 = struct.Struct("<I")


@attrs.frozen(kw_only=True)
class Item:
    """One job as a producer sends it: the payload already encoded (kind, bytes)."""

    task: str
    kind: int
    data: bytes
    key: str | None = None
    delay: float = 0.0
    priority: int = 0
    max_attempts: int = 0  # 0: the queue's default
    after: tuple[int, ...] = ()  # the jobs it waits for (after=)
    after_policy: str = "cancel"
    unique_for: float = 0.0  # seconds its key is remembered once done (0: not)
    # The JSON payload as decode_body already parsed it (held in a 1-tuple: it may be None).
    parsed: tuple[Any] | None = attrs.field(default=None, eq=False, repr=False)

    def meta(self) -> dict[str, Any]:
        """The item's entry in a request header."""
        out: dict[str, Any] = {"task": self.task, "kind": self.kind, "size": len(self.data)}
        if self.key is not None:
            out["key"] = self.key
        if self.delay:
            out["delay"] = self.delay
        if self.priority:
            out["priority"] = self.priority
        if self.max_attempts:
            out["max_attempts"] = self.max_attempts
        if self.after:
            out["after"] = list(self.after)
            if self.after_policy != "cancel":
                out["after_policy"] = self.after_policy
        if self.unique_for:
            out["unique_for"] = self.unique_for
        return out

    def payload(self) -> Any:
        """The payload value (a JSON value or bytes)."""
        if self.parsed is not None:
            return self.parsed[0]
        return decode_payload(self.kind, self.data)

    def for_queue(
        self, *, delay: float | None = None, origin: str = ""
    ) -> tuple[str, Any, dict[str, Any]]:
        """The (task, payload, options) item Queue.enqueue_many takes."""
        opts: dict[str, Any] = {
            "key": self.key,
            "delay": self.delay if delay is None else delay,
            "priority": self.priority,
            "max_attempts": self.max_attempts or None,
        }
        if origin:
            opts["origin"] = origin
        if self.after:
            opts["after"] = self.after
            opts["after_policy"] = self.after_policy
        if self.unique_for:
            opts["unique_for"] = self.unique_for
        return self.task, self.payload(), opts


class EnqueueOptions(TypedDict, total=False):
    """The options of one enqueue, as QueueBackend.enqueue takes them (no origin)."""

    key: str | None
    delay: float
    priority: int
    max_attempts: int | None
    after: Iterable[int] | None
    after_policy: str
    run_at: datetime | None
    unique_for: float | None


def make_item(
    task: object,
    payload: object,
    *,
    max_payload: int = DEFAULT_MAX_PAYLOAD,
    **options: Unpack[EnqueueOptions],
) -> Item:
    """A checked Item, with the rules of Queue.enqueue (walq.core.jobspec: make_spec and
    check_extra); run_at becomes its delay from now (a spooled one counts from the file's time)."""
    opts: dict[str, Any] = dict(options)
    extras = {name: opts.pop(name) for name in EXTRA_OPTIONS if name in opts}
    extra = None
    if extras:
        opts["delay"], extra = check_extra(
            key=opts.get("key"), delay=opts.get("delay", 0.0), now=time.time(), **extras
        )
    fields = make_spec(task, payload, max_payload=max_payload, **opts)._asdict()
    del fields["origin"]  # a producer's job has none: the owner names its spool file
    if extra is not None:
        fields.update(after=extra.parents, unique_for=extra.unique_for)
        if extra.policy != AFTER_CANCEL:
            fields["after_policy"] = "always"
    return Item(**fields)


def item_from(entry: object, max_payload: int = DEFAULT_MAX_PAYLOAD) -> Item:
    """An Item from an enqueue_many entry: (task, payload[, options])."""
    task, payload, opts = split_item(entry, OPTIONS)
    return make_item(task, payload, max_payload=max_payload, **opts)


# -- bodies --------------------------------------------------------------------------


def encode_body(header: Mapping[str, Any], items: list[Item]) -> bytes:
    """A request body: the header (with the items' entries added) and the payloads."""
    head = dict(header)
    head["items"] = [item.meta() for item in items]
    text = json.dumps(head, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()
    return b"".join([_U32.pack(len(text)), text, *(item.data for item in items)])


def decode_body(body: bytes | bytearray | memoryview) -> tuple[dict[str, Any], list[Item]]:
    """(header, items) of a request body; ProtocolError if it is not well formed."""
    view = memoryview(body)
    if len(view) < _U32.size:
        raise ProtocolError(f"request of {len(view)} bytes is shorter than its header length")
    (hlen,) = _U32.unpack_from(view)
    if hlen > len(view) - _U32.size:
        raise ProtocolError(f"header length {hlen} runs past the {len(view)}-byte request")
    try:
        header = json.loads(bytes(view[_U32.size : _U32.size + hlen]))
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise ProtocolError(f"request header is not JSON: {exc}") from None
    if not isinstance(header, dict):
        raise ProtocolError("request header is not a JSON object")
    entries = header.get("items", [])
    if not isinstance(entries, list) or len(entries) > MAX_ITEMS:
        raise ProtocolError(f"request 'items' must be a list of at most {MAX_ITEMS}")
    offset = _U32.size + hlen
    items = []
    for i, entry in enumerate(entries):
        item, offset = _decode_item(i, entry, view, offset)
        items.append(item)
    if offset != len(view):
        raise ProtocolError(f"request has {len(view) - offset} bytes after its payloads")
    return header, items


def _decode_item(i: int, entry: object, view: memoryview, offset: int) -> tuple[Item, int]:
    if not isinstance(entry, dict) or not set(entry) <= _ITEM_FIELDS:
        raise ProtocolError(f"item {i} is not an object of {sorted(_ITEM_FIELDS)}")
    task, kind, size = entry.get("task"), entry.get("kind"), entry.get("size")
    key, delay = entry.get("key"), entry.get("delay", 0.0)
    priority, attempts = entry.get("priority", 0), entry.get("max_attempts", 0)
    if not isinstance(task, str) or kind not in (PAYLOAD_JSON, PAYLOAD_BYTES):
        raise ProtocolError(f"item {i}: task must be a string and kind 0 or 1")
    if not _is_int(size) or size < 0 or size > len(view) - offset:
        raise ProtocolError(f"item {i}: payload size {excerpt(size)} runs past the request")
    if key is not None and not isinstance(key, str):
        raise ProtocolError(f"item {i}: key must be a string or null")
    if not (_is_int(delay) or isinstance(delay, float)) or not math.isfinite(delay):
        raise ProtocolError(f"item {i}: delay must be a number")
    if not _is_int(priority) or not _is_int(attempts):
        raise ProtocolError(f"item {i}: priority and max_attempts must be integers")
    after, policy = entry.get("after", []), entry.get("after_policy", "cancel")
    unique_for = entry.get("unique_for", 0.0)
    if not isinstance(after, list) or not all(_is_int(p) for p in after):
        raise ProtocolError(f"item {i}: after must be a list of job ids")
    if policy not in ("cancel", "always"):
        raise ProtocolError(f'item {i}: after_policy must be "cancel" or "always"')
    if not (_is_int(unique_for) or isinstance(unique_for, float)) or not math.isfinite(unique_for):
        raise ProtocolError(f"item {i}: unique_for must be a number")
    data = bytes(view[offset : offset + size])
    parsed = None
    if kind == PAYLOAD_JSON:
        try:
            parsed = (json.loads(data),)
        except (ValueError, RecursionError):
            raise ProtocolError(f"item {i}: payload of kind JSON is not JSON") from None
    item = Item(
        task=task,
        kind=kind,
        data=data,
        key=key,
        delay=float(delay),
        priority=priority,
        max_attempts=attempts,
        after=tuple(after),
        after_policy=policy,
        unique_for=float(unique_for),
        parsed=parsed,
    )
    return item, offset + size


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


# -- frames and replies on a socket -----------------------------------------------------


def frame(body: bytes) -> bytes:
    """The bytes to send for one message."""
    return _U32.pack(len(body)) + body


def reply_frame(reply: Mapping[str, Any]) -> bytes:
    """The bytes to send for one reply."""
    return frame(json.dumps(reply, separators=(",", ":")).encode())


class Reader:
    """Reads frames from a socket: the length and a small body usually in one recv."""

    CHUNK = 65536

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._buf = bytearray()

    def length(self) -> int | None:
        """The next frame's length; None at a clean end of stream."""
        buf = self._buf
        while len(buf) < _U32.size:
            chunk = self.sock.recv(self.CHUNK)
            if not chunk:
                if not buf:
                    return None
                raise ProtocolError(f"message truncated: the peer closed after {len(buf)} bytes")
            buf += chunk
        (size,) = _U32.unpack_from(buf)
        del buf[: _U32.size]
        return int(size)

    def buffered(self) -> bool:
        """Whether bytes already read wait here (the start of the next frame)."""
        return bool(self._buf)

    def body(self, size: int) -> bytes | bytearray:
        """The next `size` bytes; ProtocolError if the stream ends first."""
        buf = self._buf
        if len(buf) < size and size - len(buf) <= self.CHUNK:
            while len(buf) < size:
                chunk = self.sock.recv(self.CHUNK)
                if not chunk:
                    raise _truncated(len(buf), size)
                buf += chunk
        if len(buf) >= size:
            out = bytes(buf[:size])
            del buf[:size]
            return out
        big = bytearray(size)  # a large body: read it in place
        have = len(buf)
        big[:have] = buf
        buf.clear()
        view = memoryview(big)
        while have < size:
            n = self.sock.recv_into(view[have:])
            if n == 0:
                raise _truncated(have, size)
            have += n
        return big


def _truncated(got: int, size: int) -> ProtocolError:
    return ProtocolError(f"message truncated: the peer closed after {got} of {size} bytes")


def decode_reply(body: bytes | bytearray) -> dict[str, Any]:
    """A reply's JSON object; ProtocolError if it is not one."""
    try:
        reply = json.loads(body)
    except ValueError as exc:
        raise ProtocolError(f"reply is not JSON: {exc}") from None
    if not isinstance(reply, dict) or not isinstance(reply.get("ok"), bool):
        raise ProtocolError(f"reply is not an object with 'ok': {reply!r:.200}")
    return reply


# -- where the owner listens -------------------------------------------------------------


def socket_address(directory: str) -> str | None:
    """The owner's socket address for a queue directory (None: no socket on this platform).

    `DIR/walq.sock` when it fits in sun_path; on Linux otherwise an abstract
    socket named from a hash of the directory's realpath.
    """
    real = os.path.realpath(directory)
    path = os.path.join(real, SOCKET_NAME)
    if len(os.fsencode(real)) + 1 + _TMP_NAME_ROOM <= _SUN_PATH:
        return path
    if sys.platform.startswith("linux"):
        return "\0walq-" + hashlib.sha256(os.fsencode(real)).hexdigest()[:40]
    return None  # pragma: no cover - long paths on non-Linux: spool only


def peer_uid(sock: socket.socket) -> int | None:
    """The uid of the process at the other end (SO_PEERCRED; None where unsupported)."""
    creds = _peer_cred(sock)
    return None if creds is None else creds[1]


def peer_pid(sock: socket.socket) -> int:
    """The pid of the process at the other end (0 where unknown)."""
    creds = _peer_cred(sock)
    return 0 if creds is None else creds[0]


def _peer_cred(sock: socket.socket) -> tuple[int, int] | None:
    opt = getattr(socket, "SO_PEERCRED", None)
    if opt is None:  # pragma: no cover - not Linux
        return None
    creds = sock.getsockopt(socket.SOL_SOCKET, opt, struct.calcsize("3i"))
    pid, uid, _gid = struct.unpack("3i", creds)
    return int(pid), int(uid)


@attrs.frozen
class Outcome:
    """Where a job stands, as `result` reports it: state, and the value, error or cause."""

    state: str  # waiting | pending | scheduled | running | done | dead | cancelled
    value: Any = None  # done: the kept result (None: none kept)
    text: str = ""  # dead: the last error; cancelled: the cause

    def get(self, job_id: int, where: str, waited: float | None) -> Any:
        """The result, or the exception `result` raises for this outcome."""
        if self.state == "done":
            return self.value
        if self.state == "dead":
            raise JobFailed(job_id, self.text)
        if self.state == "cancelled":
            raise JobCancelled(job_id, self.text)
        raise ResultTimeout(f"{where}: job {job_id} is {self.state} after {waited or 0:g} s")

    def as_reply(self) -> dict[str, Any]:
        """The socket's JSON reply (bytes travel as latin-1 text, marked)."""
        value, kind = self.value, "json"
        if isinstance(value, bytes):
            value, kind = value.decode("latin-1"), "bytes"
        return {"ok": True, "state": self.state, "value": value, "kind": kind, "text": self.text}

    @classmethod
    def from_reply(cls, reply: dict[str, Any]) -> Outcome:
        value = reply.get("value")
        if reply.get("kind") == "bytes" and isinstance(value, str):
            value = value.encode("latin-1")
        return cls(str(reply.get("state")), value, str(reply.get("text") or ""))
