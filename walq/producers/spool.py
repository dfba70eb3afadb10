"""The spool: where producers leave jobs durably while no owner is running.

`DIR/spool/` (mode 0700) holds one file per request (docs/PRODUCERS.md):

    file = MAGIC body crc32c:u32le        body: as on the socket (walq.producers.wire)
    name = [key-<sha256 of key>-]<time_ns:020>-<pid>-<random:16 hex>-<file size>.job

A producer writes `<time_ns>-<pid>-<random>.tmp` (0600), fsyncs it, then under
the spool lock (`spool/.lock`) checks the caps and the key, renames it to its
`.job` name, and fsyncs the spool directory. A keyed job gets a file of its
own; a second request with a key whose file still waits coalesces into it. A
`.job` file is therefore always whole; a `.tmp` file is a producer at work,
or one that died (the owner removes those older than a minute). Sizes and
times are in the names, so caps and ordering need no reads.

Every file-system call goes through the `walq.directory.fs` seam.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import posixpath
import re
import struct
import time
from collections.abc import Iterator

import attrs
from crc32c import crc32c

from walq.directory.fs import FileSystem, own_dir, queue_dir_owner
from walq.errors import CorruptionError, LockedError, ProtocolError, QueueFull
from walq.producers import wire

log = logging.getLogger("walq.spool")

SPOOL_DIR = "spool"
LOCK_NAME = ".lock"
MAGIC = b"WALQSPL1"
TMP_MAX_AGE_NS = 60 * 10**9  # a .tmp file older than this belongs to a dead producer
REJECTED = ".rejected"  # suffix of a file the owner could not enqueue (bad arguments)
DAMAGED = ".bad"  # suffix of a file whose checksum failed
REASON = ".reason"  # beside a set-aside file: one line saying why it was set aside

_CRC = struct.Struct("<I")
_JOB = re.compile(
    r"(?:key-(?P<key>[0-9a-f]{64})-)?"
    r"(?P<stem>(?P<t>[0-9]{20})-[0-9]+-[0-9a-f]{16})-(?P<size>[0-9]+)\.job"
)
_TMP = re.compile(r"(?P<t>[0-9]{20})-[0-9]+-[0-9a-f]{16}\.tmp")


@attrs.frozen
class Entry:
    """A `.job` file in the spool, as its name describes it."""

    name: str
    stem: str  # <time_ns>-<pid>-<random>: unique to the file, and its items' origin
    time_ns: int
    size: int
    key_hash: str | None


@attrs.frozen
class Spooled:
    """A spool file's contents: when it was written and its items."""

    wall: float  # time.time() when the producer wrote it
    items: list[wire.Item]


def parse_name(name: str) -> Entry | None:
    """The entry a `.job` name describes, or None for any other name."""
    m = _JOB.fullmatch(name)
    if m is None:
        return None
    return Entry(name, m["stem"], int(m["t"]), int(m["size"]), m["key"])


def tmp_time_ns(name: str) -> int | None:
    """When a producer's `.tmp` file was started, or None if `name` is not one."""
    m = _TMP.fullmatch(name)
    return None if m is None else int(m["t"])


def key_hash(key: str) -> str:
    """The hex sha256 of a key, as it appears in a keyed file's name."""
    return hashlib.sha256(key.encode()).hexdigest()


def origin(stem: str, index: int) -> str:
    """The origin recorded in the ENQUEUE of item `index` of the spool file with `stem`."""
    return f"{stem}#{index}"


def encode(items: list[wire.Item], *, wall: float) -> bytes:
    """A spool file's bytes."""
    data = MAGIC + wire.encode_body({"op": "enqueue", "wall": wall}, items)
    return data + _CRC.pack(crc32c(data))


def decode(data: bytes, path: str) -> Spooled:
    """A spool file's contents; CorruptionError (naming `path`) if damaged."""
    if len(data) < len(MAGIC) + _CRC.size or not data.startswith(MAGIC):
        raise CorruptionError(path, 0, "not a walq spool file (bad magic or too short)")
    body, (crc,) = data[: -_CRC.size], _CRC.unpack(data[-_CRC.size :])
    if crc32c(body) != crc:
        raise CorruptionError(path, len(body), "checksum mismatch")
    try:
        header, items = wire.decode_body(memoryview(body)[len(MAGIC) :])
    except ProtocolError as exc:
        raise CorruptionError(path, len(MAGIC), str(exc)) from None
    wall = header.get("wall")
    if not isinstance(wall, int | float) or isinstance(wall, bool):
        raise CorruptionError(path, len(MAGIC), "header has no 'wall' time")
    return Spooled(float(wall), items)


def read(fs: FileSystem, path: str) -> Spooled:
    """Read and decode one spool file."""
    f = fs.open(path)
    try:
        data = f.pread(f.size(), 0)
    finally:
        f.close()
    return decode(data, path)


def live_entries(names: list[str]) -> list[Entry]:
    """The `.job` entries among directory names, oldest first."""
    entries = [e for e in map(parse_name, names) if e is not None]
    entries.sort(key=lambda e: (e.time_ns, e.name))
    return entries


def backlog(fs: FileSystem, queue_dir: str) -> dict[str, int]:
    """What waits in a queue's spool: files, bytes, and set-aside (damaged/refused) files."""
    try:
        names = fs.listdir(posixpath.join(queue_dir, SPOOL_DIR))
    except FileNotFoundError:
        names = []
    entries = live_entries(names)
    aside = sum(1 for n in names if n.endswith((REJECTED, DAMAGED)))
    return {"files": len(entries), "bytes": sum(e.size for e in entries), "set_aside": aside}


def set_aside(fs: FileSystem, directory: str, name: str, suffix: str, reason: str) -> None:
    """Rename spool file `name` to `name + suffix`, durably, with a `.reason` file beside it.

    The rename comes first: once it is durable the file is never ingested
    again. The reason is for a human; failing to write it is only logged.
    """
    path = posixpath.join(directory, name)
    fs.rename(path, path + suffix)
    fs.sync_dir(directory)
    try:
        f = fs.open(path + suffix + REASON, create=True)
        try:
            f.pwrite((reason.replace("\n", " ") + "\n").encode(errors="backslashreplace"), 0)
            f.sync()
        finally:
            f.close()
        fs.sync_dir(directory)
    except OSError as exc:
        log.warning("%s: cannot write why it was set aside: %s", path + suffix + REASON, exc)


def set_aside_files(fs: FileSystem, queue_dir: str) -> list[dict[str, str]]:
    """The spool files set aside (refused or damaged) and why, oldest name first."""
    directory = posixpath.join(queue_dir, SPOOL_DIR)
    try:
        names = fs.listdir(directory)
    except FileNotFoundError:
        return []
    out = []
    for name in sorted(n for n in names if n.endswith((REJECTED, DAMAGED))):
        reason = ""
        with contextlib.suppress(OSError):
            f = fs.open(posixpath.join(directory, name + REASON))
            try:
                reason = f.pread(4096, 0).decode(errors="replace").strip()
            finally:
                f.close()
        out.append({"file": name, "reason": reason})
    return out


class SpoolWriter:
    """The producer's side: put a request in the spool durably, under its caps."""

    def __init__(
        self,
        fs: FileSystem,
        queue_dir: str,
        *,
        max_files: int,
        max_bytes: int,
        lock_timeout: float,
        trust_dir: bool = False,
    ) -> None:
        self.fs = fs
        self.trust_dir = trust_dir
        self.queue_dir = queue_dir
        self.path = posixpath.join(queue_dir, SPOOL_DIR)
        self.max_files = max_files
        self.max_bytes = max_bytes
        self.lock_timeout = lock_timeout

    def put(self, items: list[wire.Item]) -> None:
        """Spool `items` durably: one file for the unkeyed ones, one per new key.

        Returns once every file (or the file its key coalesced into) is
        durable. QueueFull if the files would pass max_files or max_bytes.
        """
        self._ensure_dir()
        written: list[tuple[str, str, str | None]] = []  # (tmp, final name, key hash)
        try:
            for group, khash in _groups(items):
                written.append(self._write_tmp(group, khash))
            with self._locked():
                self._place(written)
        finally:
            for tmp, _, _ in written:
                if tmp:
                    with contextlib.suppress(OSError):
                        self.fs.remove(tmp)
        self.fs.sync_dir(self.path)

    def _ensure_dir(self) -> None:
        """Make the spool if needed; refuse one the queue's owner would not ingest from.

        Jobs are never written through a link planted as spool/, nor into a
        queue directory of another user (walq.directory.fs.queue_dir_owner).
        """
        if not self.fs.is_dir(self.queue_dir):
            make_dir(self.fs, self.queue_dir)
        uid = queue_dir_owner(self.fs, self.queue_dir, trust=self.trust_dir)
        own_dir(self.fs, self.path, uid, create=True)

    def _write_tmp(self, group: list[wire.Item], khash: str | None) -> tuple[str, str, str | None]:
        data = encode(group, wall=time.time())
        tmp = write_tmp(self.fs, self.path, data)
        stem = posixpath.basename(tmp)[: -len(".tmp")]
        prefix = f"key-{khash}-" if khash is not None else ""
        return tmp, f"{prefix}{stem}-{len(data)}.job", khash

    def _place(self, written: list[tuple[str, str, str | None]]) -> None:
        """Rename the new files in (lock held), or coalesce keyed ones; check the caps."""
        entries = live_entries(self.fs.listdir(self.path))
        keys = {e.key_hash for e in entries if e.key_hash is not None}
        placing = [i for i, (_, _, k) in enumerate(written) if k is None or k not in keys]
        files = len(entries) + len(placing)
        size = sum(e.size for e in entries) + sum(parse_size(written[i][1]) for i in placing)
        if placing and files > self.max_files:
            raise QueueFull(f"{self.path}: max_spool_files ({self.max_files}) reached")
        if placing and size > self.max_bytes:
            raise QueueFull(f"{self.path}: max_spool_bytes ({self.max_bytes}) reached")
        for i in placing:
            tmp, name, khash = written[i]
            self.fs.rename(tmp, posixpath.join(self.path, name))
            written[i] = ("", name, khash)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Hold the spool lock; short sleeps while another producer holds it."""
        path = posixpath.join(self.path, LOCK_NAME)
        deadline = time.monotonic() + self.lock_timeout
        pause = 0.0005
        while True:
            try:
                lock = self.fs.lock(path, 0.0)
                break
            except LockedError:
                if time.monotonic() >= deadline:
                    raise LockedError(
                        f"{path}: held by another producer for over {self.lock_timeout}s"
                    ) from None
                time.sleep(pause)
                pause = min(pause * 2, 0.02)
        try:
            yield
        finally:
            lock.release()


def tmp_stem() -> str:
    """A new, unique file stem: <time_ns>-<pid>-<random>."""
    return f"{time.time_ns():020d}-{os.getpid()}-{os.urandom(8).hex()}"


def write_tmp(fs: FileSystem, directory: str, data: bytes) -> str:
    """Write `data` to a new `.tmp` file in `directory` and fsync it; its path."""
    tmp = posixpath.join(directory, tmp_stem() + ".tmp")
    f = fs.open(tmp, create=True)
    try:
        f.pwrite(data, 0)
        f.sync()
    finally:
        f.close()
    return tmp


def write_remainder(
    fs: FileSystem, directory: str, entry: Entry, wall: float, todo: list[tuple[int, wire.Item]]
) -> str:
    """Put the items `todo` of the file `entry` in a file of their own; its name.

    For an owner that crashed while enqueueing the file's items: the items
    already in the log stay out. The new name is derived from the old name and
    the items kept, so doing this twice (a crash before the old file's removal
    was durable) replaces the first copy instead of adding a second.
    """
    data = encode([item for _, item in todo], wall=wall)
    kept = ",".join(str(i) for i, _ in todo)
    digest = hashlib.sha256(f"{entry.stem}#{kept}".encode()).hexdigest()[:16]
    time_ns, pid = entry.stem.split("-")[:2]
    prefix = f"key-{entry.key_hash}-" if entry.key_hash is not None else ""
    name = f"{prefix}{time_ns}-{pid}-{digest}-{len(data)}.job"
    fs.rename(write_tmp(fs, directory, data), posixpath.join(directory, name))
    return name


def make_dir(fs: FileSystem, path: str) -> None:
    """Create directory `path` (mode 0700) and make its entry durable in its parent."""
    fs.makedirs(path, 0o700)
    fs.sync_dir(posixpath.dirname(posixpath.normpath(path)) or ".")


def parse_size(name: str) -> int:
    """The file size a `.job` name records."""
    entry = parse_name(name)
    assert entry is not None, name
    return entry.size


def _groups(items: list[wire.Item]) -> list[tuple[list[wire.Item], str | None]]:
    """One group per distinct key (the first item with it wins), one for the rest.

    Groups come in the order of their first item, so that ingestion (by the
    time in each file's name) keeps the request's order as far as it can.
    """
    seen: set[str] = set()
    groups: list[tuple[list[wire.Item], str | None]] = []
    plain: list[wire.Item] = []
    for item in items:
        if item.key is None:
            if not plain:
                groups.append((plain, None))
            plain.append(item)
        elif item.key not in seen:
            seen.add(item.key)
            groups.append(([item], key_hash(item.key)))
    return groups
