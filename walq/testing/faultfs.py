"""SimFileSystem: an in-memory `FileSystem` that models what a crash leaves on disk.

The model (DESIGN.md, "Crash model"; in the spirit of ALICE and LazyFS):

- A file's data and size are durable as of its last successful `File.sync()`.
  Writes and truncations since then are unsynced: a power cut keeps any subset
  of them (mode "any", out of order) or an in-order prefix (mode "prefix").
  A kept write may be torn at 512-byte sectors: a sector that did not persist
  keeps its old content (zeros in a hole; nothing past the old size unless a
  kept write extended it). No byte appears that was never written there.
- A directory's entries are durable as of its last `sync_dir`. Each create,
  mkdir, rename and remove since then persists or not, independently across
  names but in order for one name. A rename is atomic: the inode ends up under
  its old name or its new one, never both, never neither. A rename between two
  directories is durable once both are synced. A new directory's own entry is
  in its parent. Whatever is not reachable from the root through durable
  entries vanishes.
- A failed sync (injected EIO or ENOSPC) makes nothing durable, and the writes
  it covered stay uncertain even after a later sync succeeds: Linux drops dirty
  pages after a writeback error. A failed `sync_dir` commits nothing.
- A process crash (`crash(mode="clean")`) keeps everything that reached the
  kernel, still unsynced: a later power cut can lose it.

Reads always see the latest writes. `crash()` returns the disk as a new
`SimFileSystem`; the old one is dead: its operations raise `SimulatedCrash`.
"""

from __future__ import annotations

import errno
import os
import posixpath
import random
import threading
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Literal, NoReturn

import attrs

from walq.directory.fs import Stat
from walq.errors import LockedError

if TYPE_CHECKING:
    from hypothesis.strategies import DataObject

    from walq.directory.fs import File, FileSystem, Lock

__all__ = [
    "OP_KINDS",
    "Choices",
    "CrashMode",
    "Fault",
    "SimFile",
    "SimFileSystem",
    "SimulatedCrash",
    "draw_crash",
]

SECTOR_SIZE = 512
ROOT = 1
UNLIMITED_FREE = 1 << 40

#: Every counted operation: the FileSystem methods, then the File methods.
OP_KINDS = frozenset(
    {
        "open",
        "exists",
        "stat",
        "is_dir",
        "listdir",
        "makedirs",
        "rename",
        "remove",
        "sync_dir",
        "free_bytes",
        "lock",
        "pread",
        "pwrite",
        "sync",
        "truncate",
        "size",
        "close",
    }
)

CrashMode = Literal["any", "prefix", "durable", "clean"]
_MODES = ("any", "prefix", "durable", "clean")

#: What drives a crash's choices: a seeded `random.Random`, a function returning
#: one bool per choice (e.g. a hypothesis draw), or bools consumed in order
#: (False once exhausted). True keeps an unsynced change; False loses it.
Choices = random.Random | Callable[[], bool] | Iterable[bool] | None

_State = Literal["pending", "limbo", "synced"]


class SimulatedCrash(BaseException):
    """The simulated process died at this call (not an Exception, so nothing swallows it)."""


# --- data and directory changes ---------------------------------------------


@attrs.frozen
class _Write:
    offset: int
    data: bytes
    state: _State = "pending"


@attrs.frozen
class _Truncate:
    size: int
    state: _State = "pending"


_DataOp = _Write | _Truncate


@attrs.define
class _FileNode:
    ino: int
    data: bytearray  # what reads see
    base: bytearray  # durable content, before the ops still listed
    ops: list[_DataOp] = attrs.Factory(list)  # since base, in order; none "synced" first
    linked: bool = True  # named in the live namespace
    opens: int = 0


@attrs.define
class _DirNode:
    ino: int
    entries: dict[str, int]  # the live namespace


@attrs.define
class _MetaOp:
    """One namespace change; durable once `waiting` (directories to sync) is empty."""

    kind: Literal["link", "unlink", "rename"]
    ino: int
    dir: int
    name: str
    to_dir: int = 0
    to_name: str = ""
    is_dir: bool = False
    waiting: set[int] = attrs.Factory(set)

    def slots(self) -> tuple[tuple[int, str], ...]:
        if self.kind == "rename":
            return ((self.dir, self.name), (self.to_dir, self.to_name))
        return ((self.dir, self.name),)


_Node = _FileNode | _DirNode
_Entries = dict[int, dict[str, int]]


def _put(buf: bytearray, offset: int, data: bytes) -> None:
    if offset > len(buf):
        buf.extend(bytes(offset - len(buf)))
    buf[offset : offset + len(data)] = data


def _apply(buf: bytearray, op: _DataOp) -> None:
    if isinstance(op, _Write):
        _put(buf, op.offset, op.data)
    elif op.size < len(buf):
        del buf[op.size :]
    else:
        buf.extend(bytes(op.size - len(buf)))


def _sectors(op: _Write, sector: int) -> list[tuple[int, int]]:
    """The write's pieces, one per sector it touches, as (start, end) in the file."""
    pieces = []
    start, end = op.offset, op.offset + len(op.data)
    while start < end:
        stop = min(end, (start // sector + 1) * sector)
        pieces.append((start, stop))
        start = stop
    return pieces


def _apply_meta(op: _MetaOp, entries: _Entries) -> int | None:
    """Apply a namespace change to `entries`; return the inode it displaced, if any."""
    here = entries.setdefault(op.dir, {})
    if op.kind == "link":
        old = here.get(op.name)
        here[op.name] = op.ino
        if op.is_dir:
            entries.setdefault(op.ino, {})
        return old
    if op.kind == "unlink":
        if here.get(op.name) == op.ino:
            del here[op.name]
            return op.ino
        return None
    if here.get(op.name) == op.ino:
        del here[op.name]
    there = entries.setdefault(op.to_dir, {})
    old = there.get(op.to_name)
    there[op.to_name] = op.ino
    return old if old != op.ino else None


def _decider(choices: Choices) -> Callable[[], bool]:
    if isinstance(choices, random.Random):
        rng = choices
        return lambda: rng.random() < 0.5
    if callable(choices):
        return choices
    if choices is None:
        raise ValueError("this crash mode needs choices: a random.Random, a callable or bools")
    bits = iter(choices)
    return lambda: bool(next(bits, False))


def _never() -> bool:
    return False


def _oserror(code: int, path: str | None, note: str = "") -> OSError:
    return OSError(code, os.strerror(code) + note, path)


def _norm(path: str) -> str:
    if not path:
        raise _oserror(errno.ENOENT, path)
    return posixpath.normpath("/" + path.lstrip("/"))


def _parts(path: str) -> list[str]:
    norm = _norm(path)
    return [] if norm == "/" else norm[1:].split("/")


# --- faults ------------------------------------------------------------------


@attrs.define(kw_only=True)
class Fault:
    """An injected failure: the `nth` matching call and the `times - 1` after it fail.

    `kind` is an operation name from OP_KINDS (None: any); `path` a substring of
    the (normalized) path the call names; `error` an errno, or None for a crash.
    """

    kind: str | None
    error: int | None
    path: str | None = None
    nth: int = 1
    times: int | None = 1
    seen: int = 0  # matching calls so far
    fired: int = 0  # failures raised so far

    def _observe(self, kind: str, paths: tuple[str, ...]) -> bool:
        """Count a call; return whether it must fail."""
        if self.kind is not None and kind != self.kind:
            return False
        if self.path is not None and not any(self.path in p for p in paths):
            return False
        self.seen += 1
        if self.seen < self.nth or (self.times is not None and self.seen >= self.nth + self.times):
            return False
        self.fired += 1
        return True


# --- files and locks ---------------------------------------------------------


class SimFile:
    """An open file of a SimFileSystem (implements `walq.directory.fs.File`)."""

    __slots__ = ("_closed", "_fs", "_node", "_norm", "_writable", "path")

    def __init__(self, fs: SimFileSystem, node: _FileNode, path: str, *, writable: bool) -> None:
        self.path = path
        self._fs = fs
        self._node = node
        self._norm = _norm(path)
        self._writable = writable
        self._closed = False

    def pread(self, size: int, offset: int) -> bytes:
        with self._fs._mutex:
            self._begin("pread")
            if size < 0 or offset < 0:
                raise _oserror(errno.EINVAL, self.path)
            return bytes(self._node.data[offset : offset + size])

    def pwrite(self, data: bytes, offset: int) -> None:
        with self._fs._mutex:
            self._begin("pwrite", write=True)
            if offset < 0:
                raise _oserror(errno.EINVAL, self.path)
            data = bytes(data)
            if not data:
                return
            node = self._node
            room = self._fs._room(node)
            end = offset + len(data)
            if room is not None and end > room:
                if offset < room:  # a short write, as the kernel does, then ENOSPC
                    self._write(data[: room - offset], offset)
                raise _oserror(errno.ENOSPC, self.path)
            self._write(data, offset)

    def _write(self, data: bytes, offset: int) -> None:
        _put(self._node.data, offset, data)
        self._node.ops.append(_Write(offset, data))

    def sync(self) -> None:
        with self._fs._mutex:
            node = self._node
            try:
                self._fs._begin("sync", self._norm)
            except OSError:
                # The writeback failed: the data's fate is unknown, and no later
                # sync will write those pages again.
                node.ops = [
                    attrs.evolve(op, state="limbo") if op.state == "pending" else op
                    for op in node.ops
                ]
                raise
            if self._closed:
                raise _oserror(errno.EBADF, self.path)
            done = 0
            for op in node.ops:
                if op.state == "limbo":
                    break
                _apply(node.base, op)
                done += 1
            node.ops = [
                attrs.evolve(op, state="synced") if op.state == "pending" else op
                for op in node.ops[done:]
            ]

    def truncate(self, size: int) -> None:
        with self._fs._mutex:
            self._begin("truncate", write=True)
            if size < 0:
                raise _oserror(errno.EINVAL, self.path)
            node = self._node
            room = self._fs._room(node)
            if room is not None and size > room:
                raise _oserror(errno.ENOSPC, self.path)
            op = _Truncate(size)
            _apply(node.data, op)
            node.ops.append(op)

    def size(self) -> int:
        with self._fs._mutex:
            self._begin("size")
            return len(self._node.data)

    def close(self) -> None:
        with self._fs._mutex:
            if self._closed:
                return
            if self._fs._dead:  # the process is gone; closing changes nothing
                self._closed = True
                return
            try:
                self._fs._begin("close", self._norm)
            finally:
                if not self._fs._dead:
                    self._closed = True
                    self._node.opens -= 1
                    self._fs._collect(self._node.ino)

    def _begin(self, kind: str, *, write: bool = False) -> None:
        self._fs._begin(kind, self._norm)
        if self._closed or (write and not self._writable):
            raise _oserror(errno.EBADF, self.path)

    def __repr__(self) -> str:
        return f"<SimFile {self.path!r} ino={self._node.ino}>"


class _SimLock:
    """A held lock of a SimFileSystem (implements `walq.directory.fs.Lock`)."""

    def __init__(self, fs: SimFileSystem, key: str) -> None:
        self._fs = fs
        self._key = key

    def release(self) -> None:
        with self._fs._mutex:
            if self._fs._locks.get(self._key) is self:
                del self._fs._locks[self._key]
                self._fs._cond.notify_all()


# --- the file system ---------------------------------------------------------


class SimFileSystem:
    """An in-memory `walq.directory.fs.FileSystem` that can crash, tear writes and fail.

    `capacity` caps the bytes all files may hold (ENOSPC beyond it);
    `reported_free` fixes what `free_bytes` returns (default: what capacity
    leaves, or 1 TiB); `trace` records every call as (index, kind, path).
    Inspection helpers (`durable_bytes`, `listdir_durable`, `files`, ...) are
    not counted as calls and work on a dead file system too.
    """

    def __init__(
        self,
        *,
        capacity: int | None = None,
        reported_free: int | None = None,
        sector_size: int = SECTOR_SIZE,
        trace: bool = False,
    ) -> None:
        self.capacity = capacity
        self.reported_free = reported_free
        self.sector_size = sector_size
        self.trace: list[tuple[int, str, str]] | None = [] if trace else None
        self._mutex = threading.RLock()
        self._cond = threading.Condition(self._mutex)
        self._inodes: dict[int, _Node] = {ROOT: _DirNode(ROOT, {})}
        self._next_ino = ROOT + 1
        self._ns_base: _Entries = {ROOT: {}}  # durable entries, before the ops in _meta
        self._meta: list[_MetaOp] = []
        self._locks: dict[str, _SimLock] = {}
        self._faults: list[Fault] = []
        self._calls = 0
        self._crash_at: int | None = None
        self._dead = False

    # -- crash at a call, inject faults

    @property
    def calls(self) -> int:
        """How many operations have run; the next call has this index."""
        return self._calls

    @property
    def dead(self) -> bool:
        """Whether the simulated process crashed (or `crash()` was taken)."""
        return self._dead

    def crash_at_call(self, index: int | None) -> None:
        """Make the call with this index (0-based) raise SimulatedCrash instead of running."""
        self._crash_at = index

    def crash_on(self, kind: str | None, *, path: str | None = None, nth: int = 1) -> Fault:
        """Raise SimulatedCrash instead of the `nth` call of `kind` naming `path`."""
        return self.inject(kind, None, path=path, nth=nth)

    def inject(
        self,
        kind: str | None,
        error: int | None = errno.EIO,
        *,
        path: str | None = None,
        nth: int = 1,
        times: int | None = 1,
    ) -> Fault:
        """Fail the `nth` matching call (and `times - 1` more; None: all) with OSError(error).

        A failed call has no effect, except that a failed `sync` leaves the
        file's unsynced writes uncertain for good and a failed `close` closes.
        """
        if kind is not None and kind not in OP_KINDS:
            raise ValueError(f"unknown operation {kind!r}; expected one of {sorted(OP_KINDS)}")
        if nth < 1 or (times is not None and times < 1):
            raise ValueError("nth and times count from 1")
        fault = Fault(kind=kind, error=error, path=path, nth=nth, times=times)
        with self._mutex:
            self._faults.append(fault)
        return fault

    def clear_faults(self) -> None:
        """Remove every injected fault (a pending crash_at_call stays)."""
        with self._mutex:
            self._faults.clear()

    def _begin(self, kind: str, *paths: str) -> None:
        """Count a call; crash or fail it if so arranged."""
        if self._dead:
            raise SimulatedCrash(f"call after the crash: {kind} {' '.join(paths)}")
        index = self._calls
        failing = [fault for fault in self._faults if fault._observe(kind, paths)]
        if index == self._crash_at or (failing and failing[0].error is None):
            self._die(f"call {index}: {kind} {' '.join(paths)}")
        self._calls += 1
        if self.trace is not None:
            self.trace.append((index, kind, " ".join(paths)))
        if failing:
            code = failing[0].error
            assert code is not None
            raise _oserror(code, paths[0] if paths else None, " (injected)")

    def _die(self, what: str) -> NoReturn:
        self._dead = True
        self._cond.notify_all()
        raise SimulatedCrash(f"simulated crash at {what}")

    # -- the FileSystem protocol

    def open(self, path: str, *, write: bool = False, create: bool = False) -> File:
        with self._mutex:
            self._begin("open", _norm(path))
            parent, name = self._parent(path)
            ino = parent.entries.get(name)
            if create:
                if ino is not None:
                    raise _oserror(errno.EEXIST, path)
                node = self._new_file(parent, name)
            else:
                if ino is None:
                    raise _oserror(errno.ENOENT, path)
                found = self._inodes[ino]
                if isinstance(found, _DirNode):
                    raise _oserror(errno.EISDIR, path)
                node = found
            node.opens += 1
            return SimFile(self, node, path, writable=write or create)

    def exists(self, path: str) -> bool:
        with self._mutex:
            self._begin("exists", _norm(path))
            return self._lookup(path) is not None

    def stat(self, path: str, *, follow: bool = False) -> Stat:
        """Everything belongs to the caller, directories 0700 and files 0600 (no links)."""
        with self._mutex:
            self._begin("stat", _norm(path))
            node = self._lookup(path)
            if node is None:
                self._parent(path)  # ENOTDIR where a parent is a file
                raise _oserror(errno.ENOENT, path)
            if isinstance(node, _DirNode):
                return Stat("dir", os.geteuid(), os.getegid(), 0o700)
            return Stat("file", os.geteuid(), os.getegid(), 0o600)

    def is_dir(self, path: str) -> bool:
        with self._mutex:
            self._begin("is_dir", _norm(path))
            return isinstance(self._lookup(path), _DirNode)

    def listdir(self, path: str) -> list[str]:
        with self._mutex:
            self._begin("listdir", _norm(path))
            return sorted(self._dir(path).entries)

    def makedirs(self, path: str, mode: int = 0o700) -> None:
        with self._mutex:
            self._begin("makedirs", _norm(path))
            node: _DirNode = self._root()
            parts = _parts(path)
            for i, part in enumerate(parts):
                ino = node.entries.get(part)
                if ino is None:
                    child = _DirNode(self._alloc(), {})
                    self._inodes[child.ino] = child
                    node.entries[part] = child.ino
                    self._log(_MetaOp("link", child.ino, node.ino, part, is_dir=True))
                    node = child
                    continue
                found = self._inodes[ino]
                if isinstance(found, _FileNode):
                    code = errno.EEXIST if i == len(parts) - 1 else errno.ENOTDIR
                    raise _oserror(code, path)
                node = found

    def rename(self, src: str, dst: str) -> None:
        with self._mutex:
            self._begin("rename", _norm(src), _norm(dst))
            # Checked in the order Linux checks them, so errors match OsFileSystem.
            sdir, sname = self._parent(src)
            ddir, dname = self._parent(dst)
            ino = sdir.entries.get(sname)
            if ino is None:
                raise _oserror(errno.ENOENT, src)
            target = ddir.entries.get(dname)
            if target == ino:
                return
            node = self._inodes[ino]
            if isinstance(node, _DirNode) and self._within(ddir.ino, node.ino):
                raise _oserror(errno.EINVAL, dst)
            if target is not None and self._within(sdir.ino, target):
                raise _oserror(errno.ENOTEMPTY, dst)
            if target is not None:
                old = self._inodes[target]
                if isinstance(node, _FileNode) and isinstance(old, _DirNode):
                    raise _oserror(errno.EISDIR, dst)
                if isinstance(node, _DirNode) and isinstance(old, _FileNode):
                    raise _oserror(errno.ENOTDIR, dst)
                if isinstance(old, _DirNode) and old.entries:
                    raise _oserror(errno.ENOTEMPTY, dst)
            del sdir.entries[sname]
            ddir.entries[dname] = ino
            self._log(
                _MetaOp("rename", ino, sdir.ino, sname, to_dir=ddir.ino, to_name=dname),
                {sdir.ino, ddir.ino},
            )
            if target is not None:
                self._unlink_node(target)

    def remove(self, path: str) -> None:
        with self._mutex:
            self._begin("remove", _norm(path))
            parent, name = self._parent(path)
            ino = parent.entries.get(name)
            if ino is None:
                raise _oserror(errno.ENOENT, path)
            if isinstance(self._inodes[ino], _DirNode):
                raise _oserror(errno.EISDIR, path)
            del parent.entries[name]
            self._log(_MetaOp("unlink", ino, parent.ino, name))
            self._unlink_node(ino)

    def sync_dir(self, path: str) -> None:
        with self._mutex:
            self._begin("sync_dir", _norm(path))
            self._commit(self._dir(path).ino)

    def free_bytes(self, path: str) -> int:
        with self._mutex:
            self._begin("free_bytes", _norm(path))
            if self._lookup(path) is None:
                raise _oserror(errno.ENOENT, path)
            if self.reported_free is not None:
                return self.reported_free
            if self.capacity is not None:
                return max(0, self.capacity - self._used())
            return UNLIMITED_FREE

    def lock(self, path: str, timeout: float) -> Lock:
        with self._mutex:
            key = _norm(path)
            self._begin("lock", key)
            parent, name = self._parent(path)
            ino = parent.entries.get(name)
            if ino is None:  # like ProcessLock, which opens the lock file with "a+b"
                self._new_file(parent, name)
            elif isinstance(self._inodes[ino], _DirNode):
                raise _oserror(errno.EISDIR, path)
            deadline = time.monotonic() + max(timeout, 0.0)
            while key in self._locks:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise LockedError(f"{path}: the queue is owned by another process or thread")
                self._cond.wait(remaining)
                if self._dead:
                    raise SimulatedCrash(f"crashed while waiting for the lock {path}")
            lock = _SimLock(self, key)
            self._locks[key] = lock
            return lock

    # -- crashing

    def crash(self, choices: Choices = None, *, mode: CrashMode = "any") -> SimFileSystem:
        """Cut the power (or kill the process): return the disk as a new SimFileSystem.

        This file system dies: its operations, and its files', raise
        SimulatedCrash. mode "any" (power loss): each unsynced change persists
        or not, writes torn at sectors, out of order; "prefix": each file's
        unsynced changes persist as an in-order prefix (the last one maybe
        torn), directory changes likewise; "durable": only what was synced;
        "clean" (kill -9): everything, still unsynced. "any" and "prefix" need
        `choices`. It may be called again on the dead file system, for another
        crash state of the same moment.
        """
        disk = self.snapshot(choices, mode=mode)
        with self._mutex:
            self._dead = True
            self._cond.notify_all()
        return disk

    def snapshot(self, choices: Choices = None, *, mode: CrashMode = "any") -> SimFileSystem:
        """The disk a crash now would leave (see `crash`), without crashing."""
        if mode not in _MODES:
            raise ValueError(f"unknown crash mode {mode!r}; expected one of {_MODES}")
        decide = _never if mode in ("durable", "clean") else _decider(choices)
        with self._mutex:
            if mode == "clean":
                return self._copy()
            return self._settle_all(decide, prefix=mode == "prefix")

    def choice_count(self, mode: CrashMode = "any") -> int:
        """An upper bound on how many choices `crash(choices, mode=mode)` takes now."""
        if mode in ("durable", "clean"):
            return 0
        with self._mutex:
            count = sum(1 for op in self._meta if op.waiting)
            for node in self._inodes.values():
                if isinstance(node, _FileNode):
                    for op in node.ops:
                        if op.state == "synced":
                            continue
                        pieces = (
                            len(_sectors(op, self.sector_size)) if isinstance(op, _Write) else 1
                        )
                        count += 1 if pieces == 1 else 2 + pieces
            return count

    def _settle_all(self, decide: Callable[[], bool], *, prefix: bool) -> SimFileSystem:
        entries = self._replay(decide, prefix=prefix)
        new = self._spawn()
        for ino in self._reachable(entries):
            node = self._inodes[ino]
            if isinstance(node, _DirNode):
                new._inodes[ino] = _DirNode(ino, dict(entries.get(ino, {})))
                new._ns_base[ino] = dict(entries.get(ino, {}))
            else:
                content = self._settle(node, decide, prefix=prefix)
                new._inodes[ino] = _FileNode(ino, bytearray(content), content)
        return new

    def _replay(self, decide: Callable[[], bool], *, prefix: bool) -> _Entries:
        """The directories after the durable changes and the chosen unsynced ones."""
        entries = {ino: dict(names) for ino, names in self._ns_base.items()}
        blocked: set[tuple[int, str]] = set()  # names whose history stopped persisting
        stopped = False
        for op in self._meta:
            if op.waiting:
                slots = op.slots()
                if stopped or not blocked.isdisjoint(slots) or not decide():
                    blocked.update(slots)
                    stopped = prefix
                    continue
            _apply_meta(op, entries)
        return entries

    def _reachable(self, entries: _Entries) -> list[int]:
        seen = {ROOT}
        todo = [ROOT]
        while todo:
            for ino in entries.get(todo.pop(), {}).values():
                if ino not in seen:
                    seen.add(ino)
                    if isinstance(self._inodes[ino], _DirNode):
                        todo.append(ino)
        return sorted(seen)

    def _settle(self, node: _FileNode, decide: Callable[[], bool], *, prefix: bool) -> bytearray:
        """The file's content after the durable ops and the chosen unsynced ones."""
        buf = bytearray(node.base)
        stopped = False
        for op in node.ops:
            if op.state == "synced":
                _apply(buf, op)
                continue
            if stopped:
                continue
            if isinstance(op, _Truncate):
                if decide():
                    _apply(buf, op)
                else:
                    stopped = prefix
                continue
            pieces = _sectors(op, self.sector_size)
            if decide():
                _apply(buf, op)
                continue
            if len(pieces) > 1 and decide():  # torn: some of its sectors persisted
                for start, end in pieces:
                    if decide():
                        _put(buf, start, op.data[start - op.offset : end - op.offset])
            stopped = prefix
        return buf

    def _spawn(self) -> SimFileSystem:
        new = SimFileSystem(
            capacity=self.capacity,
            reported_free=self.reported_free,
            sector_size=self.sector_size,
            trace=self.trace is not None,
        )
        new._next_ino = self._next_ino
        new._inodes = {}
        new._ns_base = {}
        return new

    def _copy(self) -> SimFileSystem:
        new = self._spawn()
        for ino, node in self._inodes.items():
            if isinstance(node, _DirNode):
                new._inodes[ino] = _DirNode(ino, dict(node.entries))
            else:
                new._inodes[ino] = _FileNode(
                    ino, bytearray(node.data), bytearray(node.base), list(node.ops), node.linked
                )
        new._ns_base = {ino: dict(names) for ino, names in self._ns_base.items()}
        new._meta = [attrs.evolve(op, waiting=set(op.waiting)) for op in self._meta]
        for ino in list(new._inodes):
            new._collect(ino)
        return new

    # -- inspection and setup (not counted; work on a dead file system)

    def durable_bytes(self, path: str) -> bytes:
        """What `path` holds after a power cut that keeps nothing unsynced."""
        with self._mutex:
            entries = self._replay(_never, prefix=False)
            ino = self._resolve(entries, path)
            node = self._inodes[ino] if ino is not None else None
            if not isinstance(node, _FileNode):
                raise _oserror(errno.ENOENT if node is None else errno.EISDIR, path)
            return bytes(self._settle(node, _never, prefix=False))

    def listdir_durable(self, path: str) -> list[str]:
        """The names in directory `path` after a power cut that keeps nothing unsynced."""
        with self._mutex:
            entries = self._replay(_never, prefix=False)
            ino = self._resolve(entries, path)
            if ino is None or ino not in entries:
                raise _oserror(errno.ENOENT, path)
            return sorted(entries[ino])

    def files(self, *, durable: bool = False) -> dict[str, bytes]:
        """Every file's path and content: now, or after a power cut keeping nothing unsynced."""
        with self._mutex:
            if durable:
                entries = self._replay(_never, prefix=False)
                return {
                    path: bytes(self._settle(node, _never, prefix=False))
                    for path, node in self._walk(entries)
                }
            live = {
                ino: node.entries
                for ino, node in self._inodes.items()
                if isinstance(node, _DirNode)
            }
            return {path: bytes(node.data) for path, node in self._walk(live)}

    def sync_all(self) -> None:
        """Make everything durable, as if every file and directory had been synced."""
        with self._mutex:
            for node in self._inodes.values():
                if isinstance(node, _FileNode):
                    node.base = bytearray(node.data)
                    node.ops = []
            self._ns_base = {
                ino: dict(node.entries)
                for ino, node in self._inodes.items()
                if isinstance(node, _DirNode)
            }
            self._meta = []
            for ino in list(self._inodes):
                self._collect(ino)

    def poke(self, path: str, offset: int, data: bytes) -> None:
        """Overwrite bytes on the disk and in the cache alike (bit rot, a foreign write)."""
        with self._mutex:
            node = self._lookup(path)
            if not isinstance(node, _FileNode):
                raise _oserror(errno.ENOENT, path)
            _put(node.data, offset, data)
            _put(node.base, offset, data)

    # -- namespace internals

    def _root(self) -> _DirNode:
        root = self._inodes[ROOT]
        assert isinstance(root, _DirNode)
        return root

    def _alloc(self) -> int:
        ino = self._next_ino
        self._next_ino += 1
        return ino

    def _lookup(self, path: str) -> _Node | None:
        """The live node at `path`, or None (also when a parent is a file)."""
        node: _Node = self._root()
        for part in _parts(path):
            if not isinstance(node, _DirNode):
                return None
            ino = node.entries.get(part)
            if ino is None:
                return None
            node = self._inodes[ino]
        return node

    def _dir(self, path: str) -> _DirNode:
        node = self._lookup(path)
        if node is None:
            self._parent(path)  # raises ENOTDIR where a parent is a file
            raise _oserror(errno.ENOENT, path)
        if not isinstance(node, _DirNode):
            raise _oserror(errno.ENOTDIR, path)
        return node

    def _parent(self, path: str) -> tuple[_DirNode, str]:
        parts = _parts(path)
        if not parts:
            raise _oserror(errno.EISDIR, path)
        node: _DirNode = self._root()
        for part in parts[:-1]:
            ino = node.entries.get(part)
            if ino is None:
                raise _oserror(errno.ENOENT, path)
            found = self._inodes[ino]
            if not isinstance(found, _DirNode):
                raise _oserror(errno.ENOTDIR, path)
            node = found
        return node, parts[-1]

    def _within(self, ino: int, ancestor: int) -> bool:
        """Whether directory `ino` is `ancestor` or below it, in the live namespace."""
        parents = {
            child: node.ino
            for node in self._inodes.values()
            if isinstance(node, _DirNode)
            for child in node.entries.values()
        }
        while ino != ancestor:
            if ino not in parents:
                return False
            ino = parents[ino]
        return True

    def _new_file(self, parent: _DirNode, name: str) -> _FileNode:
        node = _FileNode(self._alloc(), bytearray(), bytearray())
        self._inodes[node.ino] = node
        parent.entries[name] = node.ino
        self._log(_MetaOp("link", node.ino, parent.ino, name))
        return node

    def _log(self, op: _MetaOp, waiting: set[int] | None = None) -> None:
        op.waiting = waiting if waiting is not None else {op.dir}
        self._meta.append(op)

    def _commit(self, dir_ino: int) -> None:
        """sync_dir: changes in the directory become durable, with those they depend on."""
        for op in self._meta:
            op.waiting.discard(dir_ino)
        # One name's changes persist in order: a durable change makes the
        # earlier changes of the same names durable too.
        must: set[tuple[int, str]] = set()
        for op in reversed(self._meta):
            if not op.waiting:
                must.update(op.slots())
            elif not must.isdisjoint(op.slots()):
                op.waiting.clear()
                must.update(op.slots())
        done = 0
        displaced = []
        for op in self._meta:
            if op.waiting:
                break
            old = _apply_meta(op, self._ns_base)
            if old is not None:
                displaced.append(old)
            done += 1
        del self._meta[:done]
        for ino in displaced:
            self._collect(ino)

    def _unlink_node(self, ino: int) -> None:
        node = self._inodes[ino]
        if isinstance(node, _FileNode):
            node.linked = False
            self._collect(ino)

    def _collect(self, ino: int) -> None:
        """Forget a file nothing can reach any more: not named, open, durable or pending."""
        node = self._inodes.get(ino)
        if not isinstance(node, _FileNode) or node.linked or node.opens:
            return
        if any(op.ino == ino for op in self._meta):
            return
        if any(ino in names.values() for names in self._ns_base.values()):
            return
        del self._inodes[ino]

    def _used(self) -> int:
        return sum(
            len(node.data)
            for node in self._inodes.values()
            if isinstance(node, _FileNode) and (node.linked or node.opens)
        )

    def _room(self, node: _FileNode) -> int | None:
        """The size `node` may grow to under the capacity (None: no capacity)."""
        if self.capacity is None:
            return None
        return len(node.data) + max(0, self.capacity - self._used())

    def _resolve(self, entries: _Entries, path: str) -> int | None:
        ino = ROOT
        for part in _parts(path):
            names = entries.get(ino)
            if names is None or part not in names:
                return None
            ino = names[part]
        return ino

    def _walk(self, entries: _Entries) -> list[tuple[str, _FileNode]]:
        out: list[tuple[str, _FileNode]] = []
        todo = [("", ROOT)]
        seen = {ROOT}
        while todo:
            prefix, dir_ino = todo.pop()
            for name, ino in sorted(entries.get(dir_ino, {}).items()):
                node = self._inodes[ino]
                path = f"{prefix}/{name}"
                if isinstance(node, _FileNode):
                    out.append((path, node))
                elif ino not in seen:
                    seen.add(ino)
                    todo.append((path, ino))
        return sorted(out, key=lambda item: item[0])

    def __repr__(self) -> str:
        state = "dead" if self._dead else f"{self._calls} calls"
        return f"<SimFileSystem {len(self._inodes)} inodes, {state}>"


def draw_crash(
    data: DataObject, fs: SimFileSystem, *, mode: CrashMode = "any", kill: bool = True
) -> SimFileSystem:
    """Crash `fs` (or, with kill=False, take its snapshot) with choices drawn by hypothesis.

    The choices are one list of booleans (True keeps an unsynced change), so a
    failing crash state shrinks toward losing everything unsynced.
    """
    from hypothesis import strategies as st  # noqa: PLC0415 - a test-only dependency

    count = fs.choice_count(mode)
    bits = data.draw(st.lists(st.booleans(), min_size=count, max_size=count), label="crash")
    return fs.crash(bits, mode=mode) if kill else fs.snapshot(bits, mode=mode)


if TYPE_CHECKING:

    def _conforms(
        fs: SimFileSystem, file: SimFile, lock: _SimLock
    ) -> tuple[FileSystem, File, Lock]:
        return fs, file, lock
